"""containerd.services.containers.v1.Containers over the container store.

Each method is one call into :class:`berth.containers.Store`; this module only converts between
the API's messages and :class:`berth.containers.Container`. An ``Any`` field that the client
left unset (runtime options, the spec) stays None, so the store can tell it from an empty one.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2, empty_pb2

from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc
from berth.containers import AnyValue, Container, RuntimeInfo, Store
from berth.services.convert import timestamp


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
        snapshot_key=c.snapshot_key, created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
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
    )


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Get(self, request: pb.GetContainerRequest,
            context: grpc.ServicerContext) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=_container(self.store.get(request.id)))

    def List(self, request: pb.ListContainersRequest,
             context: grpc.ServicerContext) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=[_container(c) for c in self.store.list(request.filters)])

    def ListStream(self, request: pb.ListContainersRequest,
                   context: grpc.ServicerContext) -> Iterator[pb.ListContainerMessage]:
        for c in self.store.list(request.filters):
            yield pb.ListContainerMessage(container=_container(c))

    def Create(self, request: pb.CreateContainerRequest,
               context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        created = self.store.create(_from_container(request.container))
        return pb.CreateContainerResponse(container=_container(created))

    def Update(self, request: pb.UpdateContainerRequest,
               context: grpc.ServicerContext) -> pb.UpdateContainerResponse:
        updated = self.store.update(_from_container(request.container),
                                    list(request.update_mask.paths))
        return pb.UpdateContainerResponse(container=_container(updated))

    def Delete(self, request: pb.DeleteContainerRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.delete(request.id)
        return empty_pb2.Empty()
