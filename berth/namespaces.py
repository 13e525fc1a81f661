"""The namespace of the current request.

containerd scopes every object (images, containers, leases, content visibility, snapshots) to a
namespace that travels with each request: gRPC metadata ``containerd-namespace``, ttrpc metadata
``containerd-namespace-ttrpc``. The RPC edge sets it once in a context variable; everything below
reads it with :func:`current`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

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
