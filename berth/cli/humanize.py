"""Sizes, ages and short digests the way people read them in tables."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import TextIO


def size(n: int) -> str:
    """``512 B``, ``4.1 MiB``: binary units, one decimal above bytes."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(seconds: float) -> str:
    """``just now``, ``1 minute ago``, ``3 days ago``, ``2 months ago``."""
    for unit, span in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def age_since(ns: int, now: datetime.datetime | None = None) -> str:
    """The age of a timestamp in nanoseconds since the epoch (``-`` when unset)."""
    if ns <= 0:
        return "-"
    now = now or datetime.datetime.now(datetime.UTC)
    return age(max(0.0, now.timestamp() - ns / 1e9))


def rfc3339(ns: int) -> str:
    if ns <= 0:
        return ""
    t = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return t.isoformat().replace("+00:00", "Z")


def short_digest(digest: str, n: int = 12) -> str:
    """The first ``n`` hex digits (docker's IMAGE ID)."""
    return digest.partition(":")[2][:n] or digest[:n]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns separated by at least three spaces, never wrapped or cut (unlike
    rich tables on a narrow or non-terminal output, which scripts then cannot split)."""
    rows = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    for r in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        print("   ".join(cells).rstrip(), file=out)
