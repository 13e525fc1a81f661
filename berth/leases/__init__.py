"""Leases: client-held references that protect resources from garbage collection.

A client creates a lease, then sends its id with each request (gRPC metadata ``containerd-lease``)
while it writes content or prepares snapshots; everything created under it is added to the lease
and kept until the lease is deleted or expires (label ``containerd.io/gc.expire``, RFC 3339).
A lease labelled ``containerd.io/gc.flat`` protects only its direct resources, not what they
reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from berth import labels

GRPC_HEADER = "containerd-lease"
LABEL_EXPIRE = labels.GC_EXPIRE
LABEL_FLAT = labels.GC_FLAT


@dataclass
class Lease:
    id: str
    created_at: int = 0  # nanoseconds since the epoch
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    """``type`` is ``content``, ``ingests`` or ``snapshots/<snapshotter>``."""

    id: str
    type: str


_current: ContextVar[str | None] = ContextVar("berth_lease", default=None)


def current() -> str | None:
    """The lease of this request, if the client sent one."""
    return _current.get()


@contextlib.contextmanager
def use(lease_id: str | None) -> Iterator[None]:
    token = _current.set(lease_id or None)
    try:
        yield
    finally:
        _current.reset(token)
