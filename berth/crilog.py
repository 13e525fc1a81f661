"""Kubernetes CRI container logs: the line format, the ``crilog://`` stdio URI, the log file.

The format is what containerd 1.6's CRI writes (``pkg/cri/io/logger.go``) and what the kubelet
reads back. Each record is one line::

    <timestamp> <stream> <tag> <content>\\n

* ``timestamp``: the local time the record was made, as Go's ``time.RFC3339Nano`` prints it
  (``2026-11-28T18:16:00.7004593Z``, ``2026-11-28T19:16:00+01:00``): the fraction loses its
  trailing zeros (and its dot when nothing is left), the zone is ``Z`` at offset 0, ``+hh:mm``
  otherwise (:func:`timestamp`).
* ``stream``: ``stdout`` or ``stderr``.
* ``tag``: ``F`` for a full line; ``P`` for a partial one: a piece of a line longer than the
  maximum line size, or the unterminated last line at EOF.
* ``content``: the line without its ``\\n``, and without a ``\\r`` right before that ``\\n``.
  An empty line is a record with empty content (``... stdout F \\n``).

How a stream becomes records (containerd's behaviour, matched exactly):

* A line's content longer than ``max_line_size`` (default 16384) goes out as ``P`` records of
  exactly ``max_line_size`` bytes, then the rest (1 to ``max_line_size`` bytes) with the line's
  own tag: a line of exactly ``max_line_size`` is one ``F`` record. A size of 0 or less (``-1``
  in containerd's configuration) means no limit.
* ``\\r\\n`` ends a line as ``\\n`` does; any other ``\\r`` is content, including a ``\\r`` that
  ends the stream (EOF without ``\\n``).
* At EOF, an unterminated last line is written with the tag ``P`` (split as above, all ``P``);
  nothing more is written if the stream ended with ``\\n``.

:class:`Formatter` is that conversion with no I/O, one per stream: bytes in (any chunking),
records out, a line held back until it is complete or too long. :class:`LogFile` appends
records to the log file and follows a rotation (the kubelet renames the file, then asks for a
reopen): before each write it checks that its path still names the file it has open, and
reopens the path if not. Berth's shim writes a task's log itself when its stdout URI is
``crilog:///ABSOLUTE/PATH?max_line_size=N`` (:func:`parse_uri`, :func:`format_uri`; stdout's
URI decides for stderr too, as ``file://`` does); berthd writes the same format from FIFOs for
other shims (:mod:`berth.cri.logs`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass

from berth import errdefs

log = logging.getLogger("berth.crilog")

SCHEME = "crilog"
STDOUT = "stdout"
STDERR = "stderr"
FULL = "F"
PARTIAL = "P"
DEFAULT_MAX_LINE_SIZE = 16 * 1024  # containerd's max_container_log_line_size
UNLIMITED = -1
LOG_FILE_MODE = 0o640  # as containerd's CRI opens a container's log (before the umask)
LOG_DIR_MODE = 0o755  # and creates its directory if missing

_MAX_LINE_PARAM = "max_line_size"
_ATTACH_PARAM = "attach"
_USAGE = f"{SCHEME}:///ABSOLUTE/PATH[?{_MAX_LINE_PARAM}=N][&{_ATTACH_PARAM}=/ABSOLUTE/DIR]"


# -- timestamps --------------------------------------------------------------------------------

# (second, time.tzname, "YYYY-MM-DDTHH:MM:SS", zone) of the last timestamp made: records come in
# bursts within one second, and localtime() is the costly part. Replaced whole, so threads may
# share it.
_last_second: tuple[int, tuple[str, str], bytes, bytes] | None = None


def timestamp(now_ns: int) -> bytes:
    """``now_ns`` (nanoseconds since the epoch) in local time, as Go's ``time.RFC3339Nano``."""
    global _last_second
    seconds, fraction = divmod(now_ns, 1_000_000_000)
    cached = _last_second
    if cached is None or cached[0] != seconds or cached[1] != time.tzname:
        tm = time.localtime(seconds)
        head = b"%04d-%02d-%02dT%02d:%02d:%02d" % tuple(tm[:6])
        cached = _last_second = (seconds, time.tzname, head, _zone(tm.tm_gmtoff))
    if fraction:
        return cached[2] + (b".%09d" % fraction).rstrip(b"0") + cached[3]
    return cached[2] + cached[3]


def _zone(offset: int) -> bytes:
    """Go's ``Z07:00``: ``Z`` at offset 0, else the offset in whole minutes (truncated towards
    zero, as Go divides) as ``+hh:mm`` / ``-hh:mm``."""
    if offset == 0:
        return b"Z"
    minutes = abs(offset) // 60
    sign = b"-" if offset < 0 and minutes else b"+"
    return b"%s%02d:%02d" % (sign, minutes // 60, minutes % 60)


# -- the formatter -----------------------------------------------------------------------------


class Formatter:
    """One stream's records, from its bytes in any chunking (see the module for the rules).

    Lifecycle: :meth:`feed` each chunk as it arrives; it returns the records the data so far
    completes (complete lines, and ``P`` pieces of a line that grew past the maximum); the rest
    waits for more. :meth:`close` at EOF returns the unterminated last line's records; after it
    the formatter takes nothing more. ``now_ns`` stamps the records a call returns (default: the
    wall clock now). Holding a long line costs memory linear in its length (with no limit, the
    whole line), never a copy per chunk.
    """

    def __init__(self, stream: str, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        if stream not in (STDOUT, STDERR):
            raise errdefs.InvalidArgument(f"CRI log stream must be {STDOUT} or {STDERR}, "
                                          f"not {stream!r}")
        self.stream = stream
        self.max_line_size = max_line_size if max_line_size > 0 else UNLIMITED
        self._full = f" {stream} {FULL} ".encode()
        self._partial = f" {stream} {PARTIAL} ".encode()
        self._pending: list[bytes] = []  # the current line's bytes so far, \r included
        self._pending_len = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """How many bytes of an incomplete line are held back."""
        return self._pending_len

    def feed(self, data: bytes, now_ns: int | None = None) -> bytes:
        if self._closed:
            raise errdefs.FailedPrecondition(f"CRI log formatter of {self.stream} is closed")
        if not data:
            return b""
        lines = data.split(b"\n")
        rest = lines.pop()  # what follows the last \n: the start of a line still open
        if not lines:
            self._hold(rest)
            return self._overflow(now_ns)
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
        stamp = timestamp(time.time_ns() if now_ns is None else now_ns)
        out = self._complete(lines, b"\r" in data or lines[0].endswith(b"\r"), stamp)
        if rest:
            self._hold(rest)
            more = self._overflow_stamped(stamp)
            if more:
                return out + more
        return out

    def close(self, now_ns: int | None = None) -> bytes:
        """EOF: the unterminated last line, if any, as ``P`` records (a trailing ``\\r``
        included, as content)."""
        if self._closed:
            return b""
        self._closed = True
        if not self._pending:
            return b""
        line = b"".join(self._pending)
        self._pending = []
        self._pending_len = 0
        stamp = timestamp(time.time_ns() if now_ns is None else now_ns)
        partial = stamp + self._partial
        limit = self.max_line_size
        if limit <= 0 or len(line) <= limit:
            return partial + line + b"\n"
        parts: list[bytes] = []
        for start in range(0, len(line), limit):
            parts += (partial, line[start:start + limit], b"\n")
        return b"".join(parts)

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_len += len(data)

    def _complete(self, lines: list[bytes], has_cr: bool, stamp: bytes) -> bytes:
        """Records for complete lines (their \\n already gone)."""
        if has_cr:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        full = stamp + self._full
        limit = self.max_line_size
        if limit <= 0 or max(map(len, lines)) <= limit:
            return full + (b"\n" + full).join(lines) + b"\n"
        partial = stamp + self._partial
        parts: list[bytes] = []
        for line in lines:
            if len(line) > limit:
                last = (len(line) - 1) // limit * limit  # where the final piece starts
                for start in range(0, last, limit):
                    parts += (partial, line[start:start + limit], b"\n")
                line = line[last:]
            parts += (full, line, b"\n")
        return b"".join(parts)

    def _overflow(self, now_ns: int | None) -> bytes:
        if self.max_line_size <= 0 or self._pending_len <= self.max_line_size:
            return b""  # the common case: no clock read
        return self._overflow_stamped(timestamp(time.time_ns() if now_ns is None else now_ns))

    def _overflow_stamped(self, stamp: bytes) -> bytes:
        """``P`` records for the held line's content beyond the maximum, keeping back its last
        1 to ``max_line_size`` bytes (and a trailing \\r, which a \\n may yet take away)."""
        limit = self.max_line_size
        content = self._pending_len - (1 if self._pending[-1].endswith(b"\r") else 0)
        if limit <= 0 or content <= limit:
            return b""
        line = b"".join(self._pending)
        keep = (content - 1) // limit * limit
        partial = stamp + self._partial
        parts: list[bytes] = []
        for start in range(0, keep, limit):
            parts += (partial, line[start:start + limit], b"\n")
        self._pending = [line[keep:]]
        self._pending_len = len(line) - keep
        return b"".join(parts)


# -- the stdio URI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogTarget:
    """Where a ``crilog://`` URI sends a task's output."""

    path: str
    max_line_size: int = DEFAULT_MAX_LINE_SIZE
    attach_dir: str = ""
    """A directory holding a FIFO per stream (``stdout``, ``stderr``) that also gets the raw
    output while someone reads it (:class:`AttachTee`): how attach sees a container's output
    when the shim writes the log."""


def parse_uri(uri: str) -> LogTarget:
    """The target of ``crilog:///ABSOLUTE/PATH[?max_line_size=N]`` (the path percent-encoded
    as a URI's; ``N`` an integer, 0 or less for no limit; default 16384). InvalidArgument for
    anything else: another scheme, a host, a relative or unclean path, another parameter."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    if not uri.startswith(f"{SCHEME}://"):
        raise errdefs.InvalidArgument(f"{uri!r} is not a CRI log URI ({_USAGE})")
    if any(ord(c) < 0x20 or c == "\x7f" for c in uri):
        raise errdefs.InvalidArgument(
            f"CRI log URI {uri!r} holds control characters: percent-encode them ({_USAGE})")
    try:
        parts = urlsplit(uri)
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True) \
            if parts.query else []
        path = unquote(parts.path, errors="strict")
    except (ValueError, UnicodeDecodeError) as err:
        raise errdefs.InvalidArgument(f"invalid CRI log URI {uri!r}: {err}") from None
    if parts.netloc:
        raise errdefs.InvalidArgument(
            f"CRI log URI {uri!r} names a host ({parts.netloc!r}); the path must be absolute: "
            f"{_USAGE}")
    if parts.fragment:
        raise errdefs.InvalidArgument(f"CRI log URI {uri!r} has a fragment ({_USAGE})")
    _check_path(path, uri)
    max_line_size = DEFAULT_MAX_LINE_SIZE
    attach_dir = ""
    seen: set[str] = set()
    for key, value in params:
        if key not in (_MAX_LINE_PARAM, _ATTACH_PARAM):
            raise errdefs.InvalidArgument(
                f"CRI log URI {uri!r}: unknown parameter {key!r} ({_USAGE})")
        if key in seen:
            raise errdefs.InvalidArgument(f"CRI log URI {uri!r}: {key} given twice")
        seen.add(key)
        if key == _ATTACH_PARAM:
            _check_path(value, uri)
            attach_dir = value
            continue
        try:
            max_line_size = int(value, 10)
        except ValueError:
            raise errdefs.InvalidArgument(
                f"CRI log URI {uri!r}: {key} must be an integer, not {value!r}") from None
    return LogTarget(path, max_line_size, attach_dir)


def format_uri(path: str, max_line_size: int = DEFAULT_MAX_LINE_SIZE,
               attach_dir: str = "") -> str:
    """The ``crilog://`` URI for an absolute log path (InvalidArgument otherwise), with the
    directory of attach FIFOs if given."""
    from urllib.parse import quote

    _check_path(path, path)
    uri = f"{SCHEME}://{quote(path, safe='/')}?{_MAX_LINE_PARAM}={int(max_line_size)}"
    if attach_dir:
        _check_path(attach_dir, attach_dir)
        uri += f"&{_ATTACH_PARAM}={quote(attach_dir, safe='/')}"
    return uri


def _check_path(path: str, given: str) -> None:
    if not path.startswith("/"):
        raise errdefs.InvalidArgument(
            f"CRI log path of {given!r} must be absolute ({_USAGE}), not {path!r}")
    if "\0" in path:
        raise errdefs.InvalidArgument(f"CRI log path of {given!r} holds a NUL byte")
    if path.endswith("/") or any(part in (".", "..") for part in path.split("/")):
        raise errdefs.InvalidArgument(
            f"CRI log path {path!r} must name a file, without '.' or '..' components")


# -- the file ----------------------------------------------------------------------------------


class LogFile:
    """A container's log file, appended to and followed across rotations.

    Opening creates the file (``O_APPEND|O_CREAT|O_WRONLY``, mode 0640 before the umask) and
    its directory (0755) if missing, as containerd's CRI does; failure raises BerthError.
    :meth:`write` first checks that the name still names the open file (device and inode): when
    the kubelet has renamed it away (or it was removed, or replaced), the name is opened anew in
    the same directory, created if needed (not the directory: a directory removed with its pod
    stays removed), and the records go there; if that fails, they go on to the old file and the
    failure is logged.

    The log directory is writable by more than the kubelet (log agents mount it), so what is
    found there is not trusted: the file is opened relative to the directory opened at start
    (a directory swapped for a symlink later is not followed), never through a symlink
    (``O_NOFOLLOW``), and only a regular file is written to. Whoever can write in the directory
    can only make the records go nowhere, never into another file.
    A failed write is logged and its records dropped, as containerd's CRI does, so that the
    container's output keeps draining. :meth:`reopen` opens the path anew unconditionally
    (ReopenContainerLog). Safe to share between threads; each :meth:`write` lands whole and
    in order with respect to other writes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._name = os.path.basename(path)
        self._fd = -1
        self._id = (0, 0)
        # The last failure logged, of following the path and of writing, so that a lasting
        # trouble (a full disk) is logged once, not per write.
        self._troubles = {"follow": "", "write": ""}
        self._dir_fd = _open_log_dir(path)
        try:
            self._fd, self._id = self._open()
        except BaseException:
            os.close(self._dir_fd)
            raise

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _open(self, dir_fd: int | None = None) -> tuple[int, tuple[int, int]]:
        """Open (creating) the log's name in its directory (``dir_fd``, by default the one
        opened at start): a regular file, not reached through a symlink."""
        try:
            return open_log_in(self._dir_fd if dir_fd is None else dir_fd, self._name)
        except OSError as err:
            raise errdefs.BerthError(f"failed to create and open log file {self.path}: "
                                     f"{err.strerror or err}") from None

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._fd < 0:
                raise errdefs.FailedPrecondition(f"log file {self.path} is closed")
            self._follow()
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as err:
                self._report("write", f"failed to write to log file {self.path}: "
                             f"{err.strerror}; dropping the output until a write succeeds")
                return
            self._troubles["write"] = ""

    def _follow(self) -> None:
        """Reopen the path if it no longer names the open file (see the class)."""
        try:
            st = os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._id:
                self._troubles["follow"] = ""
                return
        except FileNotFoundError:
            pass
        except OSError as err:
            self._report("follow", f"cannot check log file {self.path}: {err.strerror}")
            return
        try:
            fd, ident = self._open()
        except errdefs.BerthError as err:
            self._report("follow", f"{err}; writing on to the file it named before")
            return
        os.close(self._fd)
        self._fd, self._id = fd, ident
        self._troubles["follow"] = ""

    def _report(self, what: str, message: str) -> None:
        if message != self._troubles[what]:
            log.error("%s", message)
            self._troubles[what] = message

    def reopen(self) -> None:
        """Open the path anew (and its directory if missing), as at start; the old file is
        closed. Raises BerthError (the old file stays in use) if that fails."""
        with self._lock:
            if self._fd < 0:
                raise errdefs.FailedPrecondition(f"log file {self.path} is closed")
            dir_fd = _open_log_dir(self.path)
            try:
                fd, ident = self._open(dir_fd)
            except BaseException:
                os.close(dir_fd)
                raise
            os.close(self._fd)
            os.close(self._dir_fd)
            self._fd, self._id, self._dir_fd = fd, ident, dir_fd

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._dir_fd)
                self._fd = self._dir_fd = -1


def _open_log_dir(path: str) -> int:
    """The directory of the log ``path``, created (0755) if missing, opened: the kubelet
    makes it a real directory, so one that is a symlink (swapped in since) is refused."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=LOG_DIR_MODE, exist_ok=True)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise errdefs.BerthError(f"failed to create and open log file {path}: "
                                 f"{err.strerror or err}") from None


def open_log_in(dir_fd: int, name: str) -> tuple[int, tuple[int, int]]:
    """Open (creating, mode :data:`LOG_FILE_MODE`) the log file ``name`` in the directory
    ``dir_fd`` for appending: never through a symlink, never anything but a regular file of one
    name (a FIFO, a device or a hard link to another file planted there is not written to;
    opening does not wait for a FIFO's reader).
    Returns the descriptor and the file's (device, inode); OSError on failure."""
    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, LOG_FILE_MODE, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_nlink > 1:  # a hard link planted to another file (rotation renames)
            raise OSError(errno.EMLINK, "the file has other names (hard links)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


# -- attach ------------------------------------------------------------------------------------


class AttachTee:
    """Raw output also written to a FIFO while a reader holds it open (an attach session in
    berthd), never blocking the writer.

    Each write first opens the FIFO if it is not open (``O_WRONLY|O_NONBLOCK``: ENXIO, no
    reader, costs one failed open); a full FIFO drops the chunk for the attacher (the log keeps
    everything); a reader that went away (EPIPE) closes it until the next reader comes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # ENXIO (nobody attached), or the FIFO is gone
                return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                self.dropped += len(view)
                return
            except OSError:  # EPIPE: the attacher left
                self.close()
                return

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
