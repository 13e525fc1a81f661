"""One upload on disk: the ingest directory, its lock, and the :class:`Writer` that fills it.

Layout of ``ingest/<sha256 of ref>/``::

    lock                    flock'ed by whichever writer holds the ref (any process)
    data                    the bytes written so far
    total, expected         what the uploader announced (empty when unknown)
    startedat, updatedat    nanoseconds since the epoch, decimal
    ref                     the ref itself, written last: a directory without it is debris

The store that owns the directory decides where blobs go: a writer hands its fsync'ed ``data`` to
the store's ``install`` callback on commit, and gives the ref back through ``release``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from berth import errdefs, fsmode
from berth.content.content import Status, Writer

__all__ = [
    "IngestMeta",
    "IngestWriter",
    "Install",
    "hex_of",
    "is_stale",
    "lock_ingest",
    "locked",
    "open_ingest",
    "read_meta",
    "size_of",
]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_LOCK_ATTEMPTS = 8  # a retry happens only when the holder removes the ingest as we open it

Install = Callable[[str, int, str], None]
"""``install(data_path, data_fd, digest)``: make the fsync'ed data file the blob ``digest``;
AlreadyExists if that blob exists."""


def hex_of(digest: str) -> str:
    """The hex part of a sha256 digest; InvalidArgument for anything else."""
    m = _DIGEST.fullmatch(digest)
    if m is None:
        raise errdefs.InvalidArgument(
            f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>"
        )
    return m.group(1)


def locked(ref: str) -> errdefs.Unavailable:
    return errdefs.Unavailable(f"ref {ref} is locked: another upload is writing it; retry later")


def open_ingest(
    path: str,
    ref: str,
    total: int,
    expected: str,
    *,
    install: Install,
    release: Callable[[], None],
) -> IngestWriter:
    """Open the ingest directory ``path`` for ``ref``, whose lock the caller holds: resume what
    it holds, or start it empty when it is new, debris, or already committed. ``release`` is
    called when the writer is done; on an error here the caller releases the lock itself."""
    data_path = os.path.join(path, "data")
    meta = read_meta(path)
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
            meta = IngestMeta(ref, total, expected, now, now)
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
    return IngestWriter(path, fd, hasher, offset, meta, install=install, release=release)


class IngestWriter(Writer):
    def __init__(
        self,
        path: str,
        data_fd: int,
        hasher: hashlib._Hash,
        offset: int,
        meta: IngestMeta,
        *,
        install: Install,
        release: Callable[[], None],
    ) -> None:
        self._path = path
        self._data_path = os.path.join(path, "data")
        self._fd = data_fd
        self._hasher = hasher
        self._offset = offset
        self._meta = meta
        self._install = install
        self._release = release

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

    def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> str:
        fd = self._open_fd()
        try:
            if expected:
                hex_of(expected)
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
            self._install(self._data_path, fd, digest)
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
            self._release()

    def _open_fd(self) -> int:
        if self._fd < 0:
            raise errdefs.FailedPrecondition(f"writer for ref {self._meta.ref} is closed")
        return self._fd


# --- the ingest directory's files ---------------------------------------------------------------


@dataclass
class IngestMeta:
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


def read_meta(path: str) -> IngestMeta | None:
    """The ingest's description, or None when it has no ``ref`` (debris, or not there)."""
    ref = _read_file(path, "ref")
    if ref is None:
        return None
    return IngestMeta(
        ref,
        _read_int(path, "total"),
        _read_file(path, "expected") or "",
        _read_int(path, "startedat"),
        _read_int(path, "updatedat"),
    )


def size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def is_stale(path: str, expired_before: int | None) -> bool:
    """Whether the ingest ``path`` is debris, already committed, or (if ``expired_before`` is
    given) last written before that time, in nanoseconds since the epoch."""
    meta = read_meta(path)
    if meta is None:
        return True
    # No data file (none written yet, or an interrupted commit removed it) is judged by age alone.
    with contextlib.suppress(FileNotFoundError):
        if os.stat(os.path.join(path, "data")).st_nlink > 1:
            return True
    return expired_before is not None and meta.updated_at < expired_before


def lock_ingest(path: str, *, ref: str, create: bool) -> int:
    """Lock the ingest directory ``path`` (creating it if ``create``) and return the lock fd.

    Unavailable if someone else holds it; NotFound if it does not exist and ``create`` is false.
    The lock file is checked to still be the one in the directory after locking: its previous
    holder may have removed the directory, and a lock on a removed file protects nothing.
    """
    lock_path = os.path.join(path, "lock")
    for _ in range(_LOCK_ATTEMPTS):
        if create:
            # Root's alone, as all of the store (see berth.fsmode): an upload in progress may be
            # an image config, environment and all.
            os.makedirs(path, mode=fsmode.PRIVATE, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, fsmode.PRIVATE_FILE)
        except FileNotFoundError:
            if create:
                continue  # the directory was removed between makedirs and open
            raise errdefs.NotFound(f"ingest {ref}: not found") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked_st = os.fstat(fd)
            current = os.stat(lock_path)
            if (locked_st.st_dev, locked_st.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except BlockingIOError:
            os.close(fd)
            raise locked(ref) from None
        except FileNotFoundError:
            pass  # the directory went away while we locked: retry (or report NotFound)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise locked(ref)


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, fsmode.PRIVATE_FILE)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(path, name))


def _open_data(path: str) -> int:
    # 0600 while written; the commit makes the finished blob 0444.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                   fsmode.PRIVATE_FILE)


def _hash_file(path: str) -> tuple[hashlib._Hash, int]:
    """The sha256 state and length of a file, to resume appending to it."""
    with open(path, "rb") as f:
        hasher = hashlib.file_digest(f, "sha256")
        return hasher, f.tell()
