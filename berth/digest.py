"""Digests: ``sha256:<64 lowercase hex>`` is the only algorithm Berth stores."""

from __future__ import annotations

import re

from berth import errdefs

_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_ANY = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise InvalidArgument."""
    if _SHA256.fullmatch(digest):
        return digest
    if _ANY.fullmatch(digest):
        raise errdefs.InvalidArgument(
            f"digest {digest!r} uses an unsupported algorithm: only sha256 is supported"
        )
    raise errdefs.InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")


def hex_of(digest: str) -> str:
    return validate_digest(digest).split(":", 1)[1]
