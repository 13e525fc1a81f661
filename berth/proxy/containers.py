"""Containers over berthd's Containers service: a :class:`berth.containers.Store`."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from google.protobuf import any_pb2

from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc
from berth.containers import AnyValue, Container, RuntimeInfo, Store
from berth.proxy.connection import Connection
from berth.proxy.convert import field_mask, from_timestamp


def _any(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def _from_any(value: any_pb2.Any) -> AnyValue:
    return AnyValue(value.type_url, value.value)


def _container(c: Container) -> pb.Container:
    runtime = pb.Container.Runtime(name=c.runtime.name)
    if c.runtime.options is not None:
        runtime.options.CopyFrom(_any(c.runtime.options))
    msg = pb.Container(
        id=c.id, labels=c.labels, image=c.image, runtime=runtime, snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: _any(v) for k, v in c.extensions.items()})
    if c.spec is not None:
        msg.spec.CopyFrom(_any(c.spec))
    return msg


def _from_container(c: pb.Container) -> Container:
    options = _from_any(c.runtime.options) if c.runtime.HasField("options") else None
    return Container(
        id=c.id,
        runtime=RuntimeInfo(c.runtime.name, options),
        spec=_from_any(c.spec) if c.HasField("spec") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: _from_any(v) for k, v in c.extensions.items()},
        created_at=from_timestamp(c.created_at),
        updated_at=from_timestamp(c.updated_at),
    )


class ContainersProxy(Store):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = containers_pb2_grpc.ContainersStub(conn.channel)

    def get(self, container_id: str) -> Container:
        resp: pb.GetContainerResponse = self._conn.call(
            self._stub.Get, pb.GetContainerRequest(id=container_id))
        return _from_container(resp.container)

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Container]:
        resp: pb.ListContainersResponse = self._conn.call(
            self._stub.List, pb.ListContainersRequest(filters=builtins.list(filter_strings)))
        return [_from_container(c) for c in resp.containers]

    def create(self, container: Container) -> Container:
        resp: pb.CreateContainerResponse = self._conn.call(
            self._stub.Create, pb.CreateContainerRequest(container=_container(container)))
        return _from_container(resp.container)

    def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        resp: pb.UpdateContainerResponse = self._conn.call(
            self._stub.Update, pb.UpdateContainerRequest(
                container=_container(container), update_mask=field_mask(fieldpaths)))
        return _from_container(resp.container)

    def delete(self, container_id: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteContainerRequest(id=container_id))
