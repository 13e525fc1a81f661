"""containerd.services.leases.v1.Leases over the lease manager."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import empty_pb2

from berth.api.services.leases.v1 import leases_pb2 as pb
from berth.api.services.leases.v1 import leases_pb2_grpc
from berth.leases import Lease, Resource
from berth.metadata.leases import LeaseManager
from berth.services.convert import timestamp


def _lease(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=timestamp(lease.created_at), labels=lease.labels)


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, manager: LeaseManager, collect: Callable[[bool], None]) -> None:
        self.manager = manager
        self.collect = collect

    def Create(self, request: pb.CreateRequest,
               context: grpc.ServicerContext) -> pb.CreateResponse:
        return pb.CreateResponse(lease=_lease(self.manager.create(request.id,
                                                                  dict(request.labels))))

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.manager.delete(request.id)
        self.collect(request.sync)
        return empty_pb2.Empty()

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        return pb.ListResponse(leases=[_lease(x) for x in self.manager.list(request.filters)])

    def AddResource(self, request: pb.AddResourceRequest,
                    context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.manager.add_resource(request.id, Resource(request.resource.id,
                                                       request.resource.type))
        return empty_pb2.Empty()

    def DeleteResource(self, request: pb.DeleteResourceRequest,
                       context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.manager.delete_resource(request.id, Resource(request.resource.id,
                                                          request.resource.type))
        self.collect(False)
        return empty_pb2.Empty()

    def ListResources(self, request: pb.ListResourcesRequest,
                      context: grpc.ServicerContext) -> pb.ListResourcesResponse:
        return pb.ListResourcesResponse(resources=[
            pb.Resource(id=r.id, type=r.type) for r in self.manager.list_resources(request.id)])
