"""Containers over berthd's Containers service: a :class:`berth.containers.Store`."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from berth import wire
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc
from berth.containers import Container, Store
from berth.proxy.connection import Connection
from berth.proxy.convert import field_mask


class ContainersProxy(Store):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = containers_pb2_grpc.ContainersStub(conn.channel)

    def get(self, container_id: str) -> Container:
        resp: pb.GetContainerResponse = self._conn.call(
            self._stub.Get, pb.GetContainerRequest(id=container_id))
        return wire.from_container(resp.container)

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Container]:
        resp: pb.ListContainersResponse = self._conn.call(
            self._stub.List, pb.ListContainersRequest(filters=builtins.list(filter_strings)))
        return [wire.from_container(c) for c in resp.containers]

    def create(self, container: Container) -> Container:
        resp: pb.CreateContainerResponse = self._conn.call(
            self._stub.Create, pb.CreateContainerRequest(container=wire.container(container)))
        return wire.from_container(resp.container)

    def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        resp: pb.UpdateContainerResponse = self._conn.call(
            self._stub.Update, pb.UpdateContainerRequest(
                container=wire.container(container), update_mask=field_mask(fieldpaths)))
        return wire.from_container(resp.container)

    def delete(self, container_id: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteContainerRequest(id=container_id))
