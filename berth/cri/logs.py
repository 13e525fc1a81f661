"""Container logs the daemon writes: CRI log records copied from a task's stdio FIFOs.

Berth's own shim writes a CRI container's log itself (a ``crilog://`` stdout URI, see
:mod:`berth.crilog`), so with it berthd never carries container output. A runtime handler whose
shim is not Berth's (Go's ``containerd-shim-runc-v2``, Kata, runsc) takes only FIFOs, so for it
berthd does what containerd's CRI does: it reads the task's stdout and stderr FIFOs and writes
the records (:class:`LogCopier`), in the same format, into the same kind of file
(:class:`berth.crilog.LogFile`: created 0640 in a 0755 directory, appended to, reopened when the
kubelet has rotated it away).

Lifecycle of a :class:`LogCopier`::

    make the FIFOs (os.mkfifo) -> LogCopier(...) (opens them and the log, starts reading)
      -> create and start the task with those FIFOs -> reopen() on ReopenContainerLog
      -> wait() / close() once the task is gone: each stream ends at its FIFO's EOF (every
         writer closed), its unterminated last line flushed as a ``P`` record

Each FIFO is opened read-only and non-blocking, so opening never waits for the shim; a thread
per stream then polls it: a FIFO no writer has opened yet is neither readable nor hung up, so
the thread waits for the shim's writer rather than mistaking "no writer yet" for EOF (a blocking
read would return EOF at once), and :meth:`LogCopier.close` can stop it whether or not a
writer ever came. An optional ``on_output(stream, chunk)`` hook sees each chunk of raw output as
it arrives (and ``b""`` once at the stream's end), for attach; an exception it raises is logged
and the copy goes on (the log must not stop for a failed attach client).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

from berth import crilog, errdefs

log = logging.getLogger("berth.cri.logs")

_CHUNK = 1 << 16  # a pipe's default capacity
_BURST = 16  # chunks read in a row before looking at the stop signal again
_DRAIN = 64  # chunks a stopped copy still takes from its FIFO

OutputHook = Callable[[str, bytes], None]


class LogCopier:
    """Copies a task's stdout and stderr FIFOs (either may be ``""``: not copied, as stderr
    with a terminal) into a CRI log file; see the module for the lifecycle."""

    def __init__(self, log_path: str, *, stdout: str = "", stderr: str = "",
                 max_line_size: int = crilog.DEFAULT_MAX_LINE_SIZE,
                 on_output: OutputHook | None = None) -> None:
        """Open the FIFOs and the log file (BerthError, nothing left open, if one fails) and
        start copying."""
        self.log_path = log_path
        self.max_line_size = max_line_size
        self._on_output = on_output
        self._fifos: list[tuple[str, int]] = []
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._running = 0
        try:
            for stream, path in ((crilog.STDOUT, stdout), (crilog.STDERR, stderr)):
                if path:
                    self._fifos.append((stream, _open_fifo(path)))
            self._log = crilog.LogFile(log_path)
        except BaseException:
            for _, fd in self._fifos:
                os.close(fd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._running = len(self._fifos)
        if not self._fifos:
            self._log.close()
        for stream, fd in self._fifos:
            thread = threading.Thread(target=self._copy, args=(stream, fd), daemon=True,
                                      name=f"crilog-{stream}")
            self._threads.append(thread)
            thread.start()

    def reopen(self) -> None:
        """Open the log path anew (ReopenContainerLog, after the kubelet renamed the file).
        FailedPrecondition once the copy has ended; BerthError if the path cannot be opened."""
        self._log.reopen()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds) for every stream's EOF; True once the copy has
        ended and the log is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        return True

    def close(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds; for ever if None) for the streams to end, then
        stop: what a FIFO holds by now is still copied and unterminated lines are flushed; the
        log and the FIFOs are closed. Idempotent."""
        if not self.wait(timeout):
            os.write(self._wake_w, b"x")
            for thread in self._threads:
                thread.join()
        self._log.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _copy(self, stream: str, fd: int) -> None:
        formatter = crilog.Formatter(stream, self.max_line_size)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if fd in ready and self._take(stream, fd, formatter, _BURST):
                    break  # EOF
                if self._wake_r in ready:
                    # Stopped: take what is there by now, without waiting for more.
                    if fd in dict(poller.poll(0)):
                        self._take(stream, fd, formatter, _DRAIN)
                    break
            self._log.write(formatter.close())
        except Exception:
            log.exception("copying %s of %s failed", stream, self.log_path)
        finally:
            os.close(fd)
            self._hook(stream, b"")
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._log.close()

    def _take(self, stream: str, fd: int, formatter: crilog.Formatter, chunks: int) -> bool:
        """Copy what ``fd`` holds now (it polled readable), at most ``chunks`` chunks; True at
        EOF. (A read of 0 bytes is EOF only because poll said readable: with no writer yet the
        FIFO does not poll readable.)"""
        for _ in range(chunks):
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return False
            if not data:
                return True
            self._hook(stream, data)
            self._log.write(formatter.feed(data))
        return False

    def _hook(self, stream: str, data: bytes) -> None:
        if self._on_output is None:
            return
        try:
            self._on_output(stream, data)
        except Exception:
            log.exception("the output hook of %s (%s) failed", self.log_path, stream)


def _open_fifo(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errdefs.NotFound(f"stdio FIFO {path} does not exist") from None
    except OSError as err:
        raise errdefs.BerthError(f"failed to open stdio FIFO {path}: {err.strerror}") from None
