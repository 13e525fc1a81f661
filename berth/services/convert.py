"""Conversions between API messages and Berth's own types."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

from berth.api.types import descriptor_pb2, mount_pb2
from berth.clock import from_timestamp as from_timestamp
from berth.clock import timestamp as timestamp
from berth.mount import Mount
from berth.oci.image import Descriptor

T = TypeVar("T")


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


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items, the last one shorter if need be, none for no items (as
    Python 3.12's ``itertools.batched``): a listing streamed as messages of bounded size. Items
    are drawn only as each batch is needed."""
    if n < 1:
        raise ValueError(f"batch size must be at least 1, got {n}")
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
