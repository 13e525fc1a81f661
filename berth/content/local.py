"""The content store on the local filesystem.

Layout under the store's root (directories 0700: root's alone, see :mod:`berth.fsmode`)::

    blobs/sha256/<hex>          committed blobs, mode 0444; nothing else lives here
    ingest/<sha256 of ref>/     one upload, open or resumable (see :mod:`berth.content.ingest`)

Commit: fsync ``data``, chmod it 0444, ``link`` it to ``blobs/sha256/<hex>`` (link never replaces
an existing name, which is how a concurrent commit of the same blob is told ``AlreadyExists``),
unlink ``data``, fsync ``blobs/sha256``, remove the ingest directory. A blob is therefore visible
only once complete. A crash right after the link leaves an ingest whose ``data`` is also the blob
(two links): :meth:`LocalStore.writer` restarts such an ingest empty instead of writing into it,
and :meth:`LocalStore.cleanup` removes it.

Labels are not kept here (``berth.metadata`` keeps them): :meth:`LocalStore.info` answers no
labels and :meth:`LocalStore.update` fails with ``FailedPrecondition``, as containerd's local
store does without a label store.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence

from berth import errdefs, fsmode
from berth.content.content import (
    Info,
    ReaderAt,
    Status,
    Store,
    Writer,
    info_adaptor,
    status_adaptor,
)
from berth.content.ingest import (
    IngestWriter,
    hex_of,
    is_stale,
    lock_ingest,
    locked,
    open_ingest,
    read_meta,
    size_of,
)
from berth.filters import Filter
from berth.filters import parse as parse_filters

__all__ = ["LocalStore"]

_HEX = re.compile(r"[0-9a-f]{64}")


class LocalStore(Store):
    """A :class:`~berth.content.content.Store` under ``root``. Safe to use from many threads.

    ``ingest_expiry`` (seconds): :meth:`cleanup` also discards ingests not written to for that
    long. ``None`` keeps every resumable ingest.
    """

    def __init__(self, root: str, *, ingest_expiry: float | None = None) -> None:
        self.root = root
        self._blobs = os.path.join(root, "blobs", "sha256")
        self._ingests = os.path.join(root, "ingest")
        # Restricted even when they exist: a store made by an older Berth was 0755 throughout.
        for directory in (root, os.path.dirname(self._blobs), self._blobs, self._ingests):
            fsmode.private_dir(directory)
        self._ingest_expiry = ingest_expiry
        self._mutex = threading.Lock()
        # Refs this store holds; None while a ref is being opened or aborted.
        self._refs: dict[str, IngestWriter | None] = {}

    # --- Provider ------------------------------------------------------------------------------

    def info(self, digest: str) -> Info:
        try:
            st = os.stat(self._blob_path(digest))
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {digest}: not found") from None
        return Info(digest, st.st_size, st.st_mtime_ns, st.st_mtime_ns, {})

    def reader(self, digest: str) -> ReaderAt:
        try:
            fd = os.open(self._blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {digest}: not found") from None
        return _FileReaderAt(fd, os.fstat(fd).st_size)

    # --- Manager -------------------------------------------------------------------------------

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        hex_of(info.digest)
        raise errdefs.FailedPrecondition(
            "update not supported on immutable content store: labels are kept by the metadata store"
        )

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Blobs matching ``filters`` on ``digest`` or ``size``; syntax errors raise here, before
        iteration starts."""
        return self._walk(parse_filters(filters))

    def _walk(self, flt: Filter) -> Iterator[Info]:
        with os.scandir(self._blobs) as entries:
            for entry in entries:
                if not _HEX.fullmatch(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we walked: it is no longer in the store
                info = Info(f"sha256:{entry.name}", st.st_size, st.st_mtime_ns, st.st_mtime_ns, {})
                if flt.match(info_adaptor(info)):
                    yield info

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self._blob_path(digest))
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {digest}: not found") from None

    # --- Ingester ------------------------------------------------------------------------------

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> Writer:
        if not ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        if total < 0:
            raise errdefs.InvalidArgument(f"total must not be negative, got {total}")
        if expected and os.path.exists(self._blob_path(expected)):
            raise errdefs.AlreadyExists(f"content {expected}: already exists")
        lock_fd = self._lock(ref, create=True)
        try:
            writer = open_ingest(
                self._ingest_path(ref),
                ref,
                total,
                expected,
                install=self._install,
                release=functools.partial(self._unlock, ref, lock_fd),
            )
        except BaseException:
            self._unlock(ref, lock_fd)
            raise
        with self._mutex:
            self._refs[ref] = writer
        return writer

    # --- IngestManager -------------------------------------------------------------------------

    def status(self, ref: str) -> Status:
        with self._mutex:
            writer = self._refs.get(ref)
        if writer is not None:
            return writer.status()
        path = self._ingest_path(ref)
        meta = read_meta(path)
        if meta is None or meta.ref != ref:
            raise errdefs.NotFound(f"ingest {ref}: not found")
        return meta.status(size_of(os.path.join(path, "data")))

    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Every ingest matching ``filters`` on ``ref`` or ``expected``."""
        flt = parse_filters(filters)
        with self._mutex:
            live = {ref: w for ref, w in self._refs.items() if w is not None}
        statuses = []
        with os.scandir(self._ingests) as entries:
            for entry in entries:
                meta = read_meta(entry.path)
                if meta is None:
                    continue  # debris, or an ingest being created or removed right now
                writer = live.get(meta.ref)
                if writer is not None:
                    status = writer.status()
                else:
                    status = meta.status(size_of(os.path.join(entry.path, "data")))
                if flt.match(status_adaptor(status)):
                    statuses.append(status)
        return statuses

    def abort(self, ref: str) -> None:
        """Discard the ingest ``ref``. Unavailable while a writer holds it (close that first)."""
        if not ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        lock_fd = self._lock(ref, create=False)
        try:
            path = self._ingest_path(ref)
            if not os.path.exists(os.path.join(path, "ref")):
                raise errdefs.NotFound(f"ingest {ref}: not found")
            shutil.rmtree(path)
        finally:
            self._unlock(ref, lock_fd)

    # --- maintenance ---------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove what a crash can leave behind: ingest directories without a ref (creation
        interrupted), ingests whose data was already committed (commit interrupted), leftover
        temporary files, and ingests idle for longer than ``ingest_expiry``. Ingests in use are
        skipped. Returns the ingest directories removed. Meant for start-up, safe at any time."""
        expired_before = (
            time.time_ns() - int(self._ingest_expiry * 1e9)
            if self._ingest_expiry is not None
            else None
        )
        removed = []
        with os.scandir(self._ingests) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    lock_fd = lock_ingest(entry.path, ref=entry.name, create=False)
                except (errdefs.Unavailable, errdefs.NotFound):
                    continue  # being written, or removed meanwhile: not ours to clean
                try:
                    if is_stale(entry.path, expired_before):
                        shutil.rmtree(entry.path)
                        removed.append(entry.path)
                    else:
                        for name in os.listdir(entry.path):
                            if name.endswith(".tmp"):
                                os.unlink(os.path.join(entry.path, name))
                finally:
                    os.close(lock_fd)
        return removed

    # --- internals -----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self._blobs, hex_of(digest))

    def _ingest_path(self, ref: str) -> str:
        return os.path.join(self._ingests, hashlib.sha256(ref.encode()).hexdigest())

    def _lock(self, ref: str, *, create: bool) -> int:
        """Take ``ref``: first in this store's table (so a second writer fails fast), then with
        flock for other processes and other stores on the same root. Returns the lock's fd."""
        with self._mutex:
            if ref in self._refs:
                raise locked(ref)
            self._refs[ref] = None
        try:
            return lock_ingest(self._ingest_path(ref), ref=ref, create=create)
        except BaseException:
            with self._mutex:
                del self._refs[ref]
            raise

    def _unlock(self, ref: str, lock_fd: int) -> None:
        try:
            os.close(lock_fd)
        finally:
            with self._mutex:
                self._refs.pop(ref, None)

    def _install(self, data_path: str, data_fd: int, digest: str) -> None:
        """Make the fsync'ed ``data`` the blob ``digest`` (see the module's commit protocol)."""
        os.fchmod(data_fd, 0o444)
        os.utime(data_fd)  # a blob's creation time is its commit, not its last write
        try:
            os.link(data_path, self._blob_path(digest))
        except FileExistsError:
            raise errdefs.AlreadyExists(f"content {digest}: already exists") from None
        os.unlink(data_path)
        _fsync_dir(self._blobs)


class _FileReaderAt(ReaderAt):
    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise errdefs.InvalidArgument(f"invalid read of {n} bytes at offset {offset}")
        if self._fd < 0:
            raise errdefs.FailedPrecondition("reader is closed")
        n = min(n, self._size - offset)
        chunks = []
        while n > 0:  # one pread, unless a very large read comes back short
            chunk = os.pread(self._fd, n, offset)
            if not chunk:
                break  # shorter than its size: only if someone truncated the blob behind us
            chunks.append(chunk)
            offset += len(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
