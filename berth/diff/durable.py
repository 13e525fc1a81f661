"""Making an applied layer durable before its snapshot is committed.

A committed snapshot is durable (the snapshotter's database syncs its commit), so its files
must be on disk first: otherwise a power loss could leave a committed layer with empty or
missing files under a chain ID that says it is complete, and nothing would notice or repair it.
The differ therefore syncs the filesystem it applied a layer to (syncfs(2), one call per
layer) before it returns, whoever asked: the unpacker of a daemon-side pull, or a client's
Diff.Apply (``ctr images pull``) that commits next. containerd 1.6 does not sync at all;
containerd 2.0 does the same syncfs when its CRI's ``image_pull_with_sync_fs`` is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time

from berth import errdefs

log = logging.getLogger(__name__)

# syncfs(2) is in glibc since 2.14; os has no binding for it.
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
if _syncfs is not None:
    _syncfs.argtypes = [ctypes.c_int]
    _syncfs.restype = ctypes.c_int


def sync_filesystem(directory: str) -> None:
    """Write the dirty data of the filesystem holding ``directory`` to disk (syncfs(2); the
    GIL is released meanwhile). Internal if the kernel reports that writing failed."""
    started = time.monotonic()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs is None:
            os.sync()  # every filesystem: more than needed, never less
        elif _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise errdefs.Internal(f"syncing the filesystem of {directory} failed: "
                                   f"{os.strerror(err)}; the layer may not be on disk")
    finally:
        os.close(fd)
    log.debug("synced the filesystem of %s in %.3fs", directory, time.monotonic() - started)
