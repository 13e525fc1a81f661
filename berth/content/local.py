"""The content store on the local filesystem.

Layout under the store's root::

    blobs/sha256/<hex>          committed blobs, mode 0444; nothing else lives here
    ingest/<sha256 of ref>/     one upload, open or resumable
        lock                    flock'ed by whichever writer holds the ref (any process)
        data                    the bytes written so far
        total, expected         what the uploader announced (empty when unknown)
        startedat, updatedat    nanoseconds since the epoch, decimal
        ref                     the ref itself, written last: a directory without it is debris

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

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from berth import errdefs
from berth.content.content import Info, ReaderAt, Status, Store, Writer
from berth.filters import Adaptor, Filter, adapt_labels
from berth.filters import parse as parse_filters

__all__ = ["LocalStore", "info_adaptor", "status_adaptor"]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
_LOCK_ATTEMPTS = 8  # a retry happens only when the holder removes the ingest as we open it


def _hex_of(digest: str) -> str:
    """The hex part of a sha256 digest; InvalidArgument for anything else."""
    m = _DIGEST.fullmatch(digest)
    if m is None:
        raise errdefs.InvalidArgument(
            f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>"
        )
    return m.group(1)


def _locked(ref: str) -> errdefs.Unavailable:
    return errdefs.Unavailable(f"ref {ref} is locked: another upload is writing it; retry later")


def info_adaptor(info: Info) -> Adaptor:
    """Filter fields of a blob: ``digest``, ``size`` (decimal) and ``labels.<key>``."""

    def adapt(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        if fieldpath[0] == "digest":
            return info.digest, True
        if fieldpath[0] == "size":
            return str(info.size), True
        if fieldpath[0] == "labels":
            return adapt_labels(info.labels, fieldpath)
        return "", False

    return adapt


def status_adaptor(status: Status) -> Adaptor:
    """Filter fields of an ingest: ``ref`` and ``expected`` (present when announced)."""

    def adapt(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if len(fieldpath) != 1:
            return "", False
        if fieldpath[0] == "ref":
            return status.ref, True
        if fieldpath[0] == "expected":
            return status.expected, status.expected != ""
        return "", False

    return adapt


class LocalStore(Store):
    """A :class:`~berth.content.content.Store` under ``root``. Safe to use from many threads.

    ``ingest_expiry`` (seconds): :meth:`cleanup` also discards ingests not written to for that
    long. ``None`` keeps every resumable ingest.
    """

    def __init__(self, root: str, *, ingest_expiry: float | None = None) -> None:
        self.root = root
        self._blobs = os.path.join(root, "blobs", "sha256")
        self._ingests = os.path.join(root, "ingest")
        os.makedirs(self._blobs, exist_ok=True)
        os.makedirs(self._ingests, exist_ok=True)
        self._ingest_expiry = ingest_expiry
        self._mutex = threading.Lock()
        # Refs this store holds; None while a ref is being opened or aborted.
        self._refs: dict[str, _LocalWriter | None] = {}

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
        _hex_of(info.digest)
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
            writer = self._open_ingest(ref, lock_fd, total, expected)
        except BaseException:
            self._unlock(ref, lock_fd)
            raise
        with self._mutex:
            self._refs[ref] = writer
        return writer

    def _open_ingest(self, ref: str, lock_fd: int, total: int, expected: str) -> _LocalWriter:
        path = self._ingest_path(ref)
        data_path = os.path.join(path, "data")
        meta = _read_meta(path)
        if meta is not None and meta.ref != ref:
            raise errdefs.Internal(f"ingest {path} holds ref {meta.ref!r}, not {ref!r}")
        fd = _open_data(data_path)
        try:
            if meta is not None and os.fstat(fd).st_nlink > 1:
                # A commit crashed after linking: this data *is* the blob now; never append to it.
                os.unlink(data_path)
                os.close(fd)
                fd = -1
                fd = _open_data(data_path)
                meta = None
            if meta is None:
                now = time.time_ns()
                os.ftruncate(fd, 0)  # debris of an ingest that never got its ref file
                meta = _Meta(ref, total, expected, now, now)
                meta.write(path)
                hasher, offset = hashlib.sha256(), 0
            else:
                hasher, offset = _hash_file(data_path)
                if total > 0 and total != meta.total:
                    meta.total = total
                    _write_file(path, "total", str(total))
                if expected and expected != meta.expected:
                    meta.expected = expected
                    _write_file(path, "expected", expected)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return _LocalWriter(self, path, lock_fd, fd, hasher, offset, meta)

    # --- IngestManager -------------------------------------------------------------------------

    def status(self, ref: str) -> Status:
        with self._mutex:
            writer = self._refs.get(ref)
        if writer is not None:
            return writer.status()
        path = self._ingest_path(ref)
        meta = _read_meta(path)
        if meta is None or meta.ref != ref:
            raise errdefs.NotFound(f"ingest {ref}: not found")
        return meta.status(_size_of(os.path.join(path, "data")))

    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Every ingest matching ``filters`` on ``ref`` or ``expected``."""
        flt = parse_filters(filters)
        with self._mutex:
            live = {ref: w for ref, w in self._refs.items() if w is not None}
        statuses = []
        with os.scandir(self._ingests) as entries:
            for entry in entries:
                meta = _read_meta(entry.path)
                if meta is None:
                    continue  # debris, or an ingest being created or removed right now
                writer = live.get(meta.ref)
                if writer is not None:
                    status = writer.status()
                else:
                    status = meta.status(_size_of(os.path.join(entry.path, "data")))
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
                    lock_fd = _flock(entry.path, ref=entry.name, create=False)
                except (errdefs.Unavailable, errdefs.NotFound):
                    continue  # being written, or removed meanwhile: not ours to clean
                try:
                    if _is_stale(entry.path, expired_before):
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
        return os.path.join(self._blobs, _hex_of(digest))

    def _ingest_path(self, ref: str) -> str:
        return os.path.join(self._ingests, hashlib.sha256(ref.encode()).hexdigest())

    def _lock(self, ref: str, *, create: bool) -> int:
        """Take ``ref``: first in this store's table (so a second writer fails fast), then with
        flock for other processes and other stores on the same root. Returns the lock's fd."""
        with self._mutex:
            if ref in self._refs:
                raise _locked(ref)
            self._refs[ref] = None
        try:
            return _flock(self._ingest_path(ref), ref=ref, create=create)
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


class _LocalWriter(Writer):
    def __init__(
        self,
        store: LocalStore,
        path: str,
        lock_fd: int,
        data_fd: int,
        hasher: hashlib._Hash,
        offset: int,
        meta: _Meta,
    ) -> None:
        self._store = store
        self._path = path
        self._data_path = os.path.join(path, "data")
        self._lock_fd = lock_fd
        self._fd = data_fd
        self._hasher = hasher
        self._offset = offset
        self._meta = meta

    def write(self, data: bytes) -> int:
        fd = self._open_fd()
        written = 0
        try:
            written = os.write(fd, data)  # normally the only syscall
            if written < len(data):
                view = memoryview(data)
                while written < len(data):
                    written += os.write(fd, view[written:])
        finally:
            # Account for exactly what reached the file, even when a later write(2) failed: the
            # hash must always describe the data file, or a retry could commit wrong bytes.
            self._hasher.update(data if written == len(data) else memoryview(data)[:written])
            self._offset += written
            self._meta.updated_at = time.time_ns()
        return written

    def status(self) -> Status:
        return self._meta.status(self._offset)

    def digest(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"

    def truncate(self, size: int) -> None:
        fd = self._open_fd()
        if not 0 <= size <= self._offset:
            raise errdefs.InvalidArgument(f"cannot truncate to {size}: {self._offset} written")
        os.ftruncate(fd, size)
        if size == 0:
            self._hasher, self._offset = hashlib.sha256(), 0
        else:
            self._hasher, self._offset = _hash_file(self._data_path)
        self._meta.updated_at = time.time_ns()

    def commit(self, size: int, expected: str) -> str:
        fd = self._open_fd()
        try:
            if expected:
                _hex_of(expected)
            os.fsync(fd)
            digest = self.digest()
        except BaseException:
            self.close()
            raise
        try:
            if size > 0 and size != self._offset:
                raise errdefs.FailedPrecondition(
                    f"unexpected commit size {self._offset}, expected {size}"
                )
            if expected and expected != digest:
                raise errdefs.FailedPrecondition(
                    f"unexpected commit digest {digest}, expected {expected}"
                )
            if os.fstat(fd).st_size != self._offset:
                raise errdefs.FailedPrecondition(
                    f"ingest {self._meta.ref} was changed by someone else: its data is not what "
                    "this writer wrote"
                )
            self._store._install(self._data_path, fd, digest)
        except (errdefs.FailedPrecondition, errdefs.AlreadyExists):
            self._finish(remove=True)
            raise
        except BaseException:
            self.close()
            raise
        self._finish(remove=True)
        return digest

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
            _write_file(self._path, "updatedat", str(self._meta.updated_at))
        finally:
            self._finish(remove=False)

    def _finish(self, *, remove: bool) -> None:
        """Release the ref, first removing the ingest if asked (while still holding it)."""
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
            if remove:
                shutil.rmtree(self._path)
        finally:
            self._store._unlock(self._meta.ref, self._lock_fd)

    def _open_fd(self) -> int:
        if self._fd < 0:
            raise errdefs.FailedPrecondition(f"writer for ref {self._meta.ref} is closed")
        return self._fd


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


# --- the ingest directory on disk ---------------------------------------------------------------


@dataclass
class _Meta:
    ref: str
    total: int
    expected: str
    started_at: int
    updated_at: int

    def status(self, offset: int) -> Status:
        return Status(self.ref, offset, self.total, self.expected, self.started_at, self.updated_at)

    def write(self, path: str) -> None:
        _write_file(path, "total", str(self.total))
        _write_file(path, "expected", self.expected)
        _write_file(path, "startedat", str(self.started_at))
        _write_file(path, "updatedat", str(self.updated_at))
        _write_file(path, "ref", self.ref)  # last: its presence says the ingest is complete


def _read_meta(path: str) -> _Meta | None:
    """The ingest's description, or None when it has no ``ref`` (debris, or not there)."""
    ref = _read_file(path, "ref")
    if ref is None:
        return None
    return _Meta(
        ref,
        _read_int(path, "total"),
        _read_file(path, "expected") or "",
        _read_int(path, "startedat"),
        _read_int(path, "updatedat"),
    )


def _read_file(path: str, name: str) -> str | None:
    try:
        with open(os.path.join(path, name), encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_int(path: str, name: str) -> int:
    """A decimal file; 0 when missing. Unreadable means a crash or tampering: these values only
    describe the ingest (commit checks what the caller passes), so 0 is logged and used."""
    text = _read_file(path, name)
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        log.warning("ingest file %s holds %r, not a number: reading it as 0", path, text[:32])
        return 0


def _write_file(path: str, name: str, text: str) -> None:
    """Replace a small file atomically, so a crash never leaves it half-written."""
    tmp = os.path.join(path, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(path, name))


def _open_data(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _hash_file(path: str) -> tuple[hashlib._Hash, int]:
    """The sha256 state and length of a file, to resume appending to it."""
    with open(path, "rb") as f:
        hasher = hashlib.file_digest(f, "sha256")
        return hasher, f.tell()


def _is_stale(path: str, expired_before: int | None) -> bool:
    meta = _read_meta(path)
    if meta is None:
        return True
    # No data file (none written yet, or an interrupted commit removed it) is judged by age alone.
    with contextlib.suppress(FileNotFoundError):
        if os.stat(os.path.join(path, "data")).st_nlink > 1:
            return True
    return expired_before is not None and meta.updated_at < expired_before


def _flock(path: str, *, ref: str, create: bool) -> int:
    """Lock the ingest directory ``path`` (creating it if ``create``) and return the lock fd.

    Unavailable if someone else holds it; NotFound if it does not exist and ``create`` is false.
    The lock file is checked to still be the one in the directory after locking: its previous
    holder may have removed the directory, and a lock on a removed file protects nothing.
    """
    lock_path = os.path.join(path, "lock")
    for _ in range(_LOCK_ATTEMPTS):
        if create:
            os.makedirs(path, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if create:
                continue  # the directory was removed between makedirs and open
            raise errdefs.NotFound(f"ingest {ref}: not found") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = os.fstat(fd)
            current = os.stat(lock_path)
            if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except BlockingIOError:
            os.close(fd)
            raise _locked(ref) from None
        except FileNotFoundError:
            pass  # the directory went away while we locked: retry (or report NotFound)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise _locked(ref)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
