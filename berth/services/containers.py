"""containerd.services.containers.v1.Containers over the container store.

Each method is one call into :class:`berth.containers.Store`; this module only converts between
the API's messages and :class:`berth.containers.Container`. An ``Any`` field that the client
left unset (runtime options, the spec) stays None, so the store can tell it from an empty one.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import empty_pb2

from berth import wire
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc
from berth.containers import Store


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Get(self, request: pb.GetContainerRequest,
            context: grpc.ServicerContext) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=wire.container(self.store.get(request.id)))

    def List(self, request: pb.ListContainersRequest,
             context: grpc.ServicerContext) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=[wire.container(c) for c in self.store.list(request.filters)])

    def ListStream(self, request: pb.ListContainersRequest,
                   context: grpc.ServicerContext) -> Iterator[pb.ListContainerMessage]:
        for c in self.store.list(request.filters):
            yield pb.ListContainerMessage(container=wire.container(c))

    def Create(self, request: pb.CreateContainerRequest,
               context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        created = self.store.create(wire.from_container(request.container))
        return pb.CreateContainerResponse(container=wire.container(created))

    def Update(self, request: pb.UpdateContainerRequest,
               context: grpc.ServicerContext) -> pb.UpdateContainerResponse:
        updated = self.store.update(wire.from_container(request.container),
                                    list(request.update_mask.paths))
        return pb.UpdateContainerResponse(container=wire.container(updated))

    def Delete(self, request: pb.DeleteContainerRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.delete(request.id)
        return empty_pb2.Empty()
