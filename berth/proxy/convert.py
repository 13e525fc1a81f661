"""The client side's conversions between API messages and Berth's own types (the servicers
have theirs in :mod:`berth.services.convert`; timestamps are the clock's,
:func:`berth.clock.from_timestamp`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.field_mask_pb2 import FieldMask

from berth.api.types import descriptor_pb2, mount_pb2
from berth.clock import from_timestamp as from_timestamp
from berth.clock import timestamp as timestamp
from berth.mount import Mount
from berth.oci.image import Descriptor


def descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=d.annotations)


def from_descriptor(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def to_mounts(ms: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)
            for m in ms]


def from_mounts(ms: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in ms]


def field_mask(paths: Sequence[str]) -> FieldMask:
    return FieldMask(paths=list(paths))
