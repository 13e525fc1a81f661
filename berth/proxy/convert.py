"""The client side's conversions between API messages and Berth's own types (the servicers
have theirs in :mod:`berth.services.convert`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from berth.api.types import descriptor_pb2, mount_pb2
from berth.mount import Mount
from berth.oci.image import Descriptor

# Go's zero time.Time, which Go servers send for "unset".
_GO_ZERO_SECONDS = -62135596800


def from_timestamp(ts: Timestamp) -> int:
    """Nanoseconds since the epoch; 0 for unset (including Go's zero time)."""
    if ts.seconds <= _GO_ZERO_SECONDS:
        return 0
    return int(ts.ToNanoseconds())


def timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


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
