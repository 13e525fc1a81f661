"""Berth's records as containerd's API messages, and back: the conversions both ends of the
gRPC edge share, the servicers (:mod:`berth.services`) and the proxies (:mod:`berth.proxy`).

An ``Any`` field left unset (a container's runtime options, its spec) stays None, so a store
can tell it from an empty one. Timestamps are the clock's (:mod:`berth.clock`); a store sets a
record's own times and ignores those a client sends.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import any_pb2

from berth.api.services.containers.v1 import containers_pb2
from berth.api.types import descriptor_pb2, mount_pb2
from berth.clock import from_timestamp, timestamp
from berth.containers import AnyValue, Container, RuntimeInfo
from berth.mount import Mount
from berth.oci.image import Descriptor


def descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=d.annotations)


def from_descriptor(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def mounts(ms: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)
            for m in ms]


def from_mounts(ms: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in ms]


def any_message(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def from_any(value: any_pb2.Any) -> AnyValue:
    return AnyValue(value.type_url, value.value)


def container(c: Container) -> containers_pb2.Container:
    runtime = containers_pb2.Container.Runtime(name=c.runtime.name)
    if c.runtime.options is not None:
        runtime.options.CopyFrom(any_message(c.runtime.options))
    msg = containers_pb2.Container(
        id=c.id, labels=c.labels, image=c.image, runtime=runtime, snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key, created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
        extensions={k: any_message(v) for k, v in c.extensions.items()})
    if c.spec is not None:
        msg.spec.CopyFrom(any_message(c.spec))
    return msg


def from_container(c: containers_pb2.Container) -> Container:
    options = from_any(c.runtime.options) if c.runtime.HasField("options") else None
    return Container(
        id=c.id,
        runtime=RuntimeInfo(c.runtime.name, options),
        spec=from_any(c.spec) if c.HasField("spec") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: from_any(v) for k, v in c.extensions.items()},
        created_at=from_timestamp(c.created_at),
        updated_at=from_timestamp(c.updated_at),
    )
