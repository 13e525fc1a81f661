"""Leases over berthd's Leases service: a :class:`berth.leases.Manager`."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from berth.api.services.leases.v1 import leases_pb2 as pb
from berth.api.services.leases.v1 import leases_pb2_grpc
from berth.leases import Lease, Manager, Resource
from berth.proxy.connection import DEFAULT_TIMEOUT, Connection
from berth.proxy.convert import from_timestamp


def _lease(lease: pb.Lease) -> Lease:
    return Lease(lease.id, from_timestamp(lease.created_at), dict(lease.labels))


class LeasesProxy(Manager):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = leases_pb2_grpc.LeasesStub(conn.channel)

    def create(self, lease_id: str = "", labels: dict[str, str] | None = None) -> Lease:
        resp: pb.CreateResponse = self._conn.call(
            self._stub.Create, pb.CreateRequest(id=lease_id, labels=dict(labels or {})))
        return _lease(resp.lease)

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """As :meth:`berth.leases.Manager.delete`; with ``sync``, once the collector has taken
        what the lease alone kept."""
        self._conn.call(self._stub.Delete, pb.DeleteRequest(id=lease_id, sync=sync),
                        timeout=None if sync else DEFAULT_TIMEOUT)

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Lease]:
        resp: pb.ListResponse = self._conn.call(
            self._stub.List, pb.ListRequest(filters=builtins.list(filter_strings)))
        return [_lease(x) for x in resp.leases]

    def add_resource(self, lease_id: str, resource: Resource) -> None:
        self._conn.call(self._stub.AddResource, pb.AddResourceRequest(
            id=lease_id, resource=pb.Resource(id=resource.id, type=resource.type)))

    def delete_resource(self, lease_id: str, resource: Resource) -> None:
        self._conn.call(self._stub.DeleteResource, pb.DeleteResourceRequest(
            id=lease_id, resource=pb.Resource(id=resource.id, type=resource.type)))

    def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        resp: pb.ListResourcesResponse = self._conn.call(
            self._stub.ListResources, pb.ListResourcesRequest(id=lease_id))
        return [Resource(r.id, r.type) for r in resp.resources]

