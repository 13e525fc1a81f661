"""Keeping the shim small and its ``start`` fast.

A shim runs for every group of containers, so what it imports is paid in every one. (``grpc``,
~20 MiB, is never imported: :mod:`berth.errdefs` keeps its own status codes and imports grpc
only at the gRPC edge.) What remains to keep out:

* ``ssl`` (~4.5 MiB RSS: libssl and libcrypto): asyncio imports it when present, but the shim
  speaks only over unix sockets. :func:`block_ssl` makes asyncio see it as absent.

``start`` runs once per task, in a new interpreter, on the path of every container start: it
imports only C modules and a few small ones. Not ``socket`` (its enum conversions cost ~9 ms;
``_socket`` serves), not ``json`` (``re``: ~5 ms), not ``hashlib`` (OpenSSL: ~3 ms; see
:func:`sha256_hex`), not ``contextlib`` or ``signal``; and it runs as ``python -IS`` (no site),
from the launcher tools/shim_launcher.py writes. tests/test_shim.py checks a real ``start``.
"""

from __future__ import annotations

import _socket
import sys


def unix_socket() -> _socket.socket:
    """A unix stream socket, close-on-exec (``_socket``'s, not ``socket``'s: see above)."""
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)


def block_ssl() -> None:
    """Make ``import ssl`` fail (asyncio then runs without TLS support), unless loaded."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


def sha256_hex(data: bytes) -> str:
    """sha256 of ``data`` in hex, from CPython's built-in implementation where it has one
    (loading OpenSSL for one short digest costs more than the digest)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
    except ImportError:
        from hashlib import sha256
    return str(sha256(data).hexdigest())
