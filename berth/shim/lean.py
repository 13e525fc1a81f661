"""Keeping the long-running shim process small.

A shim runs for every container, so what it imports is paid once per container. (``grpc``,
~20 MiB, is never imported: :mod:`berth.errdefs` keeps its own status codes and imports grpc
only at the gRPC edge.) What remains to keep out:

* ``ssl`` (~4.5 MiB RSS: libssl and libcrypto): asyncio imports it when present, but the shim
  speaks only over unix sockets. :func:`block_ssl` makes asyncio see it as absent.
"""

from __future__ import annotations

import sys


def block_ssl() -> None:
    """Make ``import ssl`` fail (asyncio then runs without TLS support), unless loaded."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
