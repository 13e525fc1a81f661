"""Mounting in tests: one mount for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from berth.mount import Mount, mount, unmount


@contextlib.contextmanager
def mounted(m: Mount, target: Path) -> Iterator[Path]:
    """Mount ``m`` on ``target`` (created if missing), yield ``target``, unmount it afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    mount(m, str(target))
    try:
        yield target
    finally:
        unmount(str(target))
