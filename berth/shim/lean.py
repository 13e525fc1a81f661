"""Keeping the shim small and its ``start`` fast.

A shim runs for every group of containers, so what it imports is paid in every one. (``grpc``,
~20 MiB, is never imported: :mod:`berth.errdefs` keeps its own status codes and imports grpc
only at the gRPC edge.) What remains to keep out:

* ``ssl`` (~4.5 MiB RSS: libssl and libcrypto): asyncio imports it when present, but the shim
  speaks only over unix sockets. :func:`block_ssl` makes asyncio see it as absent.

``start`` (berth.shim.main over berth.shimlaunch) runs in a new interpreter for every task a
daemon other than berthd starts (berthd calls berth.shimlaunch itself): it imports only C
modules and a few small ones. Not ``socket`` (its enum conversions cost ~9 ms; ``_socket``
serves), not ``json`` (``re``: ~5 ms), not ``hashlib`` (OpenSSL: ~3 ms; see
:func:`berth.shimgroups.sha256_hex`), not ``contextlib`` or ``signal``; and it runs as ``python
-IS`` (no site), from the launcher tools/shim_launcher.py writes. tests/test_shim.py checks a
real ``start``.
"""

from __future__ import annotations

import sys


def block_ssl() -> None:
    """Make ``import ssl`` fail (asyncio then runs without TLS support), unless loaded."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
