"""Keeping the C heap small: one arena for all threads, and free memory given back to the
system after a burst of large buffers.

glibc gives each thread that allocates an arena of its own (up to eight per core), to spare
threads contending for one lock. berthd's threads allocate mostly under the GIL (Python's own
objects, and the buffers of a pull), so they gain little from that, while each arena keeps what
its thread freed. :func:`use_one_arena` (glibc's ``M_ARENA_MAX`` of 1, what
``MALLOC_ARENA_MAX=1`` sets) makes them all share the main one. Measured on the 2-core test
machine (``bench/``), one arena against glibc's default: berthd with 30 running containers
48.9 against 52.9 MiB; peak during ``berth pull`` of the 1 GB image 61.7 against 66.5 MiB,
during ``ctr images pull`` 62.5 against 72 MiB; pull and start times unchanged within the
machine's noise.

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
import os
import time

log = logging.getLogger(__name__)

# glibc's; other C libraries (musl) have no such call and nothing to do.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
if _malloc_trim is not None:
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int


M_ARENA_MAX = -8  # mallopt(3)'s parameter number
_mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
if _mallopt is not None:
    _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _mallopt.restype = ctypes.c_int


def use_one_arena() -> bool:
    """Make every thread allocate from the main arena. Call it first thing, before threads
    start (an arena a thread already has stays). False where the C library cannot (not glibc)
    or the operator chose otherwise (``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` set)."""
    if _mallopt is None or "MALLOC_ARENA_MAX" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    return bool(_mallopt(M_ARENA_MAX, 1))


def release() -> None:
    """Return the C heap's free pages to the system (a no-op without glibc)."""
    if _malloc_trim is None:
        return
    started = time.monotonic()
    _malloc_trim(0)
    log.debug("returned free heap memory to the system in %.1f ms",
              (time.monotonic() - started) * 1000)
