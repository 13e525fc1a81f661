"""A container process's stdio, seen from the CLI: FIFOs, log files and the terminal.

Logs never pass through berthd: the CLI names where a process's stdio goes in Tasks.Create or
Tasks.Exec and the shim wires it (see containerd's ``pkg/cio``).

* Attached (``berth run`` without ``-d``, ``berth start -a``, ``berth exec``): the CLI makes
  FIFOs in a private directory (:class:`Fifos`), passes their paths, and copies between them and
  its own stdio (:class:`OutputPump`, :class:`InputPump`). A container's own output is also
  appended to its log file, so ``berth logs`` shows it afterwards.
* Detached (``berth run -d``, ``berth start``): stdout is the URI ``file://<log file>`` and so is
  stderr; the shim appends both streams to that one file (containerd's shims do the same with a
  ``file://`` stdout), and ``berth logs`` reads it. A terminal's output cannot go to a
  ``file://`` URI in containerd 1.6's shim: then stdout is a ``binary://`` URI that runs
  :mod:`berth.cli.logdriver`, which appends it to the same file.

Log files live at ``/var/log/berth/containers/<namespace>/<id>.log`` (the directory can be
moved with ``BERTH_LOG_DIR``), a path made from the namespace and the container id only, both
checked to be identifiers (:func:`log_path`). Nothing a container record carries decides it: its
labels are anyone's to write who can reach berthd (``ctr containers label``), and a path taken
from one would let them have ``berth logs`` print, and ``berth rm`` delete, any file of the host.
The directories are made 0700 and the files 0640; they are opened without following a symbolic
link, and ``berth logs`` reads only a regular file.

Reading a FIFO: the CLI opens its read end non-blocking right away (no writer needed) and polls
it; Linux reports no hang-up on a FIFO until a writer has come, so the copy ends exactly when
the shim (and whatever else held the write end) closed it after the process exited.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import stat
import struct
import sys
import tempfile
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlencode

from berth import errdefs, namespaces
from berth.containers import validate_id

LOG_DIR_ENV = "BERTH_LOG_DIR"
DEFAULT_LOG_DIR = "/var/log/berth/containers"
LOG_FILE_MODE = 0o640  # the owner appends; its group (adm, say) may read
FIFO_DIR = "/run/berth/fifo"
_CHUNK = 32768


def log_dir() -> str:
    return os.path.abspath(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)


def log_path(namespace: str, container_id: str) -> str:
    """The log file of ``container_id`` in ``namespace`` (InvalidArgument unless both are
    identifiers, so neither can climb out of the log directory)."""
    namespaces.validate(namespace)
    validate_id(container_id)
    return os.path.join(log_dir(), namespace, f"{container_id}.log")


def file_uri(path: str) -> str:
    return f"file://{path}"


def logger_uri(path: str) -> str:
    """A ``binary://`` URI that has the shim run :mod:`berth.cli.logdriver` to append the
    output to ``path`` (for a terminal's output, which a ``file://`` URI cannot take)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logdriver.py")
    return f"binary://{sys.executable}?{urlencode({script: path})}"


def _private_directory(path: str, *, may_be_link: bool) -> None:
    """Make ``path`` (and its parents) a directory only its owner can enter, unless it exists
    as one. A symbolic link there is refused unless ``may_be_link`` (the log directory itself
    is an administrator's choice, and may be a link to a larger disk)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path) if may_be_link else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise errdefs.FailedPrecondition(f"{path} must be a directory (not a link or a file)")
    # Older berths made these 0755; tighten what is ours (a directory someone else owns is
    # left as it is).
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def _open_no_link(path: str, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise errdefs.FailedPrecondition(
                f"log file {path} is a symbolic link: not followed") from None
        raise


def open_log(path: str) -> int:
    """A descriptor that appends to the log file ``path`` (see :func:`log_path`), made 0640 in
    directories made 0700 when missing. A symbolic link or anything but a regular file at
    ``path`` is refused."""
    _private_directory(os.path.dirname(os.path.dirname(path)), may_be_link=True)
    _private_directory(os.path.dirname(path), may_be_link=False)
    # O_NONBLOCK: a FIFO planted there fails at once (ENXIO) instead of blocking the open.
    fd = _open_no_link(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK,
                       LOG_FILE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errdefs.FailedPrecondition(f"log file {path} is not a regular file")
        # made wider by an older berth (0644)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~LOG_FILE_MODE:
            os.fchmod(fd, LOG_FILE_MODE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_log(path: str) -> None:
    """Make the log file ``path`` exist with its mode (see :func:`open_log`), for a shim or the
    log driver to append to."""
    os.close(open_log(path))


def read_log(path: str) -> int | None:
    """A read-only descriptor of the log file ``path``, or None if there is none yet. A
    symbolic link or anything but a regular file is refused (a FIFO would block the reader)."""
    try:
        fd = _open_no_link(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise errdefs.FailedPrecondition(f"log file {path} is not a regular file")
    return fd


def remove_log(path: str) -> None:
    """Remove the log file ``path`` (a link there is removed itself, never what it points to),
    and its namespace's directory if that became empty."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):  # only if it became empty
        os.rmdir(os.path.dirname(path))


# -- FIFOs -------------------------------------------------------------------------------------


@dataclass
class Fifos:
    """The FIFOs of one process in a private directory; an empty path means "none" (the
    process gets /dev/null there)."""

    directory: str
    stdin: str
    stdout: str
    stderr: str

    @classmethod
    def create(cls, process_id: str, *, stdin: bool, stdout: bool = True,
               stderr: bool = True) -> Fifos:
        parent: str | None = FIFO_DIR
        try:
            os.makedirs(FIFO_DIR, mode=0o700, exist_ok=True)
        except OSError:
            parent = None  # not root: the system's temporary directory
        directory = tempfile.mkdtemp(prefix="berth-", dir=parent)
        paths = []
        try:
            for stream, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
                path = os.path.join(directory, f"{process_id}-{stream}") if wanted else ""
                if path:
                    os.mkfifo(path, 0o600)
                paths.append(path)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, *paths)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def open_reader(path: str) -> int:
    """The read end of a FIFO, opened without waiting for a writer."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def open_writer(path: str) -> int:
    """A write end of a FIFO that never waits for a reader: opened read-write, then made
    blocking, so writes wait for the process to read."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class OutputPump:
    """Copies a FIFO (or any readable fd) to ``out`` (and to ``log``, when given) until EOF,
    on a thread of its own. :meth:`stop` ends it early."""

    def __init__(self, fd: int, out: BinaryIO, log: int | None = None) -> None:
        self.fd = fd
        self.out = out
        self.log = log
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True, name="berth-output")
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._wake_r in ready:
                    break
                if self.fd not in ready:
                    continue
                try:
                    data = os.read(self.fd, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError as err:
                    if err.errno == errno.EINTR:
                        continue
                    break
                if not data:
                    break
                with contextlib.suppress(OSError, ValueError):
                    self.out.write(data)
                    self.out.flush()
                if self.log is not None:
                    with contextlib.suppress(OSError):
                        _write_all(self.log, data)
        finally:
            os.close(self.fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the copy to end; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """End the copy (what was not read yet is dropped)."""
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class InputPump:
    """Copies our stdin into the process's stdin FIFO on a thread of its own; at EOF closes
    the FIFO and calls ``on_eof`` (Tasks.CloseIO, so the process sees EOF too)."""

    def __init__(self, source: int, fifo_fd: int, on_eof: Callable[[], None] | None) -> None:
        self.source = source
        self.fifo_fd = fifo_fd
        self.on_eof = on_eof
        self._thread = threading.Thread(target=self._run, daemon=True, name="berth-input")
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    data = os.read(self.source, _CHUNK)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                try:
                    _write_all(self.fifo_fd, data)
                except OSError:
                    return
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fifo_fd)
        if self.on_eof is not None:
            with contextlib.suppress(Exception):
                self.on_eof()


# -- terminal ----------------------------------------------------------------------------------


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(columns, rows) of the terminal on ``fd``, or None."""
    try:
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0)))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode for the block (keys go to the container as
    typed, ^C included); restored afterwards."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def binary_stdout() -> BinaryIO:
    return sys.stdout.buffer


def binary_stderr() -> BinaryIO:
    return sys.stderr.buffer

