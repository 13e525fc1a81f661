"""Keeping the long-running shim process small.

A shim runs for every container, so what it imports is paid once per container. Two imports
dominate and neither does anything for the shim (measured on Python 3.11, one process):

* ``grpc`` (~20 MiB RSS, ~11 MiB PSS): :mod:`berth.errdefs` and :mod:`berth.ttrpc.codec` import
  it only for the ``grpc.StatusCode`` enum, the status codes' names and numbers.
  :func:`use_status_codes_without_grpc` puts a module holding just that enum (same members,
  same values) in ``sys.modules["grpc"]`` before they are imported. It is for the shim's own
  process only, never for a process that may use real gRPC, and it refuses any other grpc
  attribute loudly. (The lasting fix is in errdefs: its own code enum, with the mapping to
  ``grpc.StatusCode`` done by the gRPC edge alone.)
* ``ssl`` (~4.5 MiB RSS: libssl and libcrypto): asyncio imports it when present, but the shim
  speaks only over unix sockets. :func:`block_ssl` makes asyncio see it as absent.
"""

from __future__ import annotations

import enum
import sys
import types


class StatusCode(enum.Enum):
    """grpc.StatusCode's members and values, without grpc."""

    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")


class _StatusCodesOnly(types.ModuleType):
    StatusCode = StatusCode

    def __getattr__(self, name: str) -> object:
        raise AttributeError(
            f"grpc.{name}: the berth shim process runs without grpc (see berth.shim.lean)")


def use_status_codes_without_grpc() -> None:
    """Stand in for ``grpc`` with its status codes alone, unless grpc is already loaded."""
    if "grpc" not in sys.modules:
        sys.modules["grpc"] = _StatusCodesOnly(
            "grpc", "grpc.StatusCode only: the berth shim does not load gRPC")


def block_ssl() -> None:
    """Make ``import ssl`` fail (asyncio then runs without TLS support), unless loaded."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
