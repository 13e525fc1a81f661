"""Leases: client-held references that protect resources from garbage collection.

A client creates a lease, then sends its id with each request (gRPC metadata ``containerd-lease``)
while it writes content or prepares snapshots; everything created under it is added to the lease
and kept until the lease is deleted or expires (label ``containerd.io/gc.expire``, RFC 3339).
A lease labelled ``containerd.io/gc.flat`` protects only its direct resources, not what they
reference.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

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


class Manager(Protocol):
    """Leases of the current namespace (containerd's ``leases.Manager``); the metadata database
    keeps them (:class:`berth.metadata.leases.LeaseManager`).

    Contract: ``create`` with no id makes one up, and raises ``AlreadyExists`` for an id in use;
    the other methods raise ``NotFound`` for an unknown lease. Deleting a lease releases what it
    held to the garbage collector. Resources are ``content`` (digest), ``ingests`` (ref) or
    ``snapshots/<snapshotter>`` (key); another type is ``InvalidArgument``.
    """

    def create(self, lease_id: str = "", labels: dict[str, str] | None = None) -> Lease: ...

    def delete(self, lease_id: str) -> None: ...

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Lease]:
        """Leases matching any of the filters (``id``, ``labels.<key>``); all with none."""
        ...

    def add_resource(self, lease_id: str, resource: Resource) -> None: ...

    def delete_resource(self, lease_id: str, resource: Resource) -> None: ...

    def list_resources(self, lease_id: str) -> builtins.list[Resource]: ...


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
