"""The namespace of the current request.

containerd scopes every object (images, containers, leases, content visibility, snapshots) to a
namespace that travels with each request: gRPC metadata ``containerd-namespace``, ttrpc metadata
``containerd-namespace-ttrpc``. The RPC edge sets it once in a context variable; everything below
reads it with :func:`current`.

The namespaces themselves, with their labels, are kept by a :class:`Store`.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from berth import errdefs, identifiers

GRPC_HEADER = "containerd-namespace"
TTRPC_HEADER = "containerd-namespace-ttrpc"
DEFAULT = "default"

_current: ContextVar[str | None] = ContextVar("berth_namespace", default=None)


def validate(name: str) -> str:
    """Return ``name`` if it is a valid namespace, else raise InvalidArgument."""
    return identifiers.validate(name, "namespace")


def current() -> str:
    """The namespace of this request; FailedPrecondition if none was set."""
    ns = _current.get()
    if ns is None:
        raise errdefs.FailedPrecondition(
            "namespace is required: pass one with the containerd-namespace header (ctr -n NAME)"
        )
    return ns


def current_or_none() -> str | None:
    return _current.get()


@contextlib.contextmanager
def use(name: str) -> Iterator[str]:
    """Run a block with ``name`` as the current namespace."""
    token = _current.set(validate(name))
    try:
        yield name
    finally:
        _current.reset(token)


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    """The namespaces (containerd's ``namespaces.Store``); the metadata database keeps them
    (:class:`berth.metadata.namespaces.NamespaceStore`).

    Contract: ``create`` raises ``InvalidArgument`` for a name that is not an identifier and
    ``AlreadyExists`` for one in use; ``get`` and ``delete`` raise ``NotFound`` for an unknown
    one. ``update`` changes labels (``labels``, ``labels.<key>``; all with no path); setting
    single labels on a namespace that does not exist creates it. ``delete`` raises
    ``FailedPrecondition`` while the namespace holds anything (images, blobs, snapshots,
    leases, containers). Writing anything into a namespace creates it.
    """

    def create(self, name: str, lbls: dict[str, str] | None = None) -> Namespace: ...

    def get(self, name: str) -> Namespace: ...

    def list(self) -> builtins.list[Namespace]: ...

    def update(self, ns: Namespace, fieldpaths: Sequence[str] = ()) -> Namespace: ...

    def delete(self, name: str) -> None: ...
