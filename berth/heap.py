"""Giving the C heap's free memory back to the system after a burst of large buffers.

A pull or a layer apply passes a gigabyte through buffers of 256 KiB to 1 MiB in several
threads. glibc keeps what they free in each thread's arena for reuse (above its mmap threshold,
which it raises as such buffers come and go), so a daemon that pulled once stays megabytes
heavier for good: an idle berthd 46 MiB, after pulling busybox through ``ctr`` 52 MiB.
:func:`release` hands the free pages of every arena back (``malloc_trim(0)``, about a
millisecond); call it when such a burst is over, not inside one.
"""

from __future__ import annotations

import ctypes
import logging
import time

log = logging.getLogger(__name__)

# glibc's; other C libraries (musl) have no such call and nothing to do.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
if _malloc_trim is not None:
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int


def release() -> None:
    """Return the C heap's free pages to the system (a no-op without glibc)."""
    if _malloc_trim is None:
        return
    started = time.monotonic()
    _malloc_trim(0)
    log.debug("returned free heap memory to the system in %.1f ms",
              (time.monotonic() - started) * 1000)
