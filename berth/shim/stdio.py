"""A container process's stdio, as the task API asks for it.

Each of stdin, stdout and stderr in a Create or Exec request is empty (``/dev/null``), a FIFO
path the client made, or, for stdout (which then decides for stderr too) a ``file:///path``
(both streams appended to that file), a ``crilog:///path?max_line_size=N`` Kubernetes CRI
log (both streams formatted as CRI log records and appended to that file: :mod:`berth.crilog`)
or a ``binary:///path?arg=value`` logging program (as containerd's shims run it: the streams on
its fds 3 and 4, a readiness pipe on fd 5, and ``CONTAINER_ID`` / ``CONTAINER_NAMESPACE`` in its
environment).

No host file's descriptor is ever handed to a container. The process gets pipes made here, and
the shim copies between them and the client's FIFOs or the log file (:class:`Pump`, with
splice(2) where the kernel allows, so the bytes never enter the shim's memory). A host file as
the process's own fd would let the container ``chmod 4755 /proc/self/fd/1`` and leave a
setuid-root file on the host (and runc chowns its stdio to the container's user); containerd's
shim copies through pipes for the same reason.

Without a terminal (:class:`ProcessIO`):

* stdout and stderr: the client's FIFO is opened read-write, so opening never waits for the
  client's reader and the copy never meets EPIPE while the client comes and goes. The copy
  ends when the process's pipe does (the process and whatever inherited its stdout are gone);
  then the FIFO is closed, and the client sees EOF.
* ``crilog://``: the shim itself writes the container's log, so the daemon never carries the
  output and the log goes on through a daemon restart. Each pipe is read in chunks on the loop
  (:class:`LogCopy`), formatted by its stream's :class:`berth.crilog.Formatter` and appended to
  the one :class:`berth.crilog.LogFile` (created ``O_APPEND``, 0640, its directory 0755, as
  containerd's CRI does), which follows the kubelet's rotation: before each write, a path that
  no longer names the open file is opened anew. At EOF of a pipe its unterminated last line is
  flushed (a ``P`` record); the file is closed once both pipes ended.
* stdin: the shim reads the FIFO and holds a write end of it until CloseIO, so the process
  sees EOF only after CloseIO *and* once every client writer has closed (a client may come and
  go meanwhile).
* The copies start only once the runtime has started the process: runc prints its own failure
  (``exec: "x": executable file not found``) on the process's stderr, and that text never
  reaches the client (nor a CRI log), as with containerd.
* A ``binary://`` logger gets the process's pipes directly, as containerd's does.

With a terminal, the runtime sends the pty master to a console socket and :class:`Console`
copies between it and the stdin FIFO and the output (FIFO, file or logging binary), and
resizes it. For a ``crilog://`` output the console writes into a pipe whose other end a
:class:`LogCopy` formats as ``stdout`` records (a pty has one output), as containerd's CRI
logs a terminal's output.

Whatever is still on its way when the process is deleted gets a moment to arrive
(:meth:`ProcessIO.close`); a CRI log then takes what its pipes hold, flushes unterminated lines
and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from berth import crilog, errdefs
from berth.shim.reaper import Exit, Reaper
from berth.shim.runc import Stdio

LOGGER_TERM_TIMEOUT = 12.0  # a logging binary gets this long to flush after SIGTERM
LOG_FILE_MODE = 0o640  # a file:// log, as containerd's CRI makes container logs
LOG_DIR_MODE = 0o700
_CHUNK = 1 << 16  # a pipe's default capacity: one splice moves at most what a pipe holds
_DRAIN_READS = 64  # at delete, a CRI log takes at most this many chunks still in a pipe


@dataclass(frozen=True)
class StdioRequest:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr)


def _scheme(uri: str) -> str:
    """"fifo", "file", "crilog", "binary" (or something unknown) for a stdout URI; a bare path
    is a FIFO."""
    scheme, sep, _ = uri.partition("://")
    return scheme if sep else "fifo"


def _open_output(path: str) -> int:
    """Where an output is copied to: a FIFO read-write and non-blocking (see the module),
    anything else for writing at its end."""
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        raise errdefs.NotFound(f"stdio {path} does not exist") from None
    if is_fifo:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    return _at_end(_open_writer(path, 0))


def _open_writer(path: str, flags: int, mode: int = 0o777) -> int:
    """``path`` opened for writing without ever blocking the shim's loop (a FIFO that has no
    reader is refused, not waited for) and never as the shim's controlling terminal."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | flags,
                       mode)
    except OSError as err:
        if err.errno != errno.ENXIO:
            raise
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.stat(path).st_mode):
                raise errdefs.FailedPrecondition(
                    f"stdio {path} is a FIFO that nobody reads: open it for reading first "
                    "(containerd's shim would wait for a reader), or give a regular file"
                    ) from None
        raise errdefs.FailedPrecondition(
            f"stdio {path} cannot be written to: {err.strerror}") from None


def _at_end(fd: int) -> int:
    """``fd`` positioned at its file's end. Not O_APPEND: splice(2) refuses an O_APPEND target;
    the shim is the file's one writer, and stdout and stderr share the one offset (dup)."""
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError as err:
        if err.errno != errno.ESPIPE:  # a character device or socket has no end to seek to
            os.close(fd)
            raise
    return fd


def _open_stdin(path: str) -> tuple[int, int | None]:
    """(non-blocking read fd, keeper writer or None) for a stdin path. The keeper is opened
    first thing after the reader, so the FIFO has a writer from the start: the process cannot
    read a premature EOF before the client's writer arrives."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    keeper = None
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    return fd, keeper


def _open_log_file(uri: str) -> int:
    """A ``file://`` URI's file, created (with its directory) private to root, opened for
    writing at its end."""
    from urllib.parse import urlsplit

    path = urlsplit(uri).path
    os.makedirs(os.path.dirname(path), mode=LOG_DIR_MODE, exist_ok=True)
    return _at_end(_open_writer(path, os.O_CREAT, LOG_FILE_MODE))


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Copy:
    """One copy between a pipe of the process's and the client's side; it owns both fds."""

    def __init__(self, src: int, dst: int) -> None:
        os.set_blocking(src, False)
        os.set_blocking(dst, False)
        self.src: int | None = src
        self.dst: int | None = dst
        self.pump: Pump | None = None

    def start(self) -> None:
        if self.pump is None and self.src is not None:
            self.pump = Pump(self.src, self.dst, on_end=self.close)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        _close(self.src)
        _close(self.dst)
        self.src = self.dst = None


class ProcessIO:
    """Non-terminal stdio: pipes for the process, copied to and from the request's FIFOs or
    file (see the module).

    Lifecycle: :meth:`open` -> hand :attr:`fds` to the runtime -> :meth:`started` once it ran
    (our copies of the process's ends go, the copies start) or :meth:`close` if it did not
    -> :meth:`close` at delete (the output still on its way gets a moment to arrive; stdin's
    keeper and the logging binary go).
    """

    def __init__(self) -> None:
        self.fds: Stdio = (None, None, None)
        self._handed: list[int] = []
        self._stdin: _Copy | None = None
        self._stdin_keeper: int | None = None
        self._outputs: list[_Copy] = []
        self._logger: tuple[int, asyncio.Future[Exit]] | None = None
        self._cri_log: crilog.LogFile | None = None
        self._log_copies: list[LogCopy] = []

    @classmethod
    async def open(cls, req: StdioRequest, *, process_id: str, namespace: str,
                   reaper: Reaper) -> ProcessIO:
        pio = cls()
        try:
            await pio._open(req, process_id, namespace, reaper)
        except BaseException:
            await pio.close()
            raise
        return pio

    @classmethod
    async def for_console(cls, req: StdioRequest, *, process_id: str, namespace: str,
                          reaper: Reaper) -> tuple[ProcessIO, int | None]:
        """Where a terminal's output goes: (this, a non-blocking fd for :class:`Console` to
        write to and close, or None to discard). The FIFO, file, CRI log or logging binary is
        chosen by stdout's scheme as without a terminal; stderr is not used (a pty has one
        output)."""
        pio = cls()
        out: int | None = None
        try:
            scheme = _scheme(req.stdout)
            if scheme == "binary":
                out, err = await pio._start_logger(req.stdout, process_id, namespace, reaper)
                os.close(err)  # the logger's stderr: empty, as containerd's is
                pio._handed.remove(err)
                pio._handed.remove(out)
            elif scheme == "file":
                out = _open_log_file(req.stdout)
            elif scheme == crilog.SCHEME:
                (out,) = pio._open_cri_log(req.stdout, (crilog.STDOUT,))
                pio._handed.remove(out)  # the console writes to it, not the runtime's process
            elif scheme == "fifo":
                if req.stdout:
                    out = os.open(req.stdout,
                                  os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            else:
                raise errdefs.InvalidArgument(f"unknown STDIO scheme {scheme}")
            if out is not None:
                os.set_blocking(out, False)
        except BaseException:
            _close(out)
            await pio.close()
            raise
        return pio, out

    async def _open(self, req: StdioRequest, process_id: str, namespace: str,
                    reaper: Reaper) -> None:
        stdin = stdout = stderr = None
        if req.stdin:
            source, self._stdin_keeper = _open_stdin(req.stdin)
            r, w = os.pipe()
            self._stdin = _Copy(source, w)
            self._handed.append(r)
            stdin = r
        scheme = _scheme(req.stdout)
        if scheme == "fifo":
            if req.stdout:
                stdout = self._output(_open_output(req.stdout))
            if req.stderr:
                stderr = self._output(_open_output(req.stderr))
        elif scheme == "file":
            log = _open_log_file(req.stdout)
            stdout = self._output(log)
            stderr = self._output(os.dup(log))
        elif scheme == crilog.SCHEME:
            stdout, stderr = self._open_cri_log(req.stdout, (crilog.STDOUT, crilog.STDERR))
        elif scheme == "binary":
            stdout, stderr = await self._start_logger(req.stdout, process_id, namespace, reaper)
        else:
            raise errdefs.InvalidArgument(f"unknown STDIO scheme {scheme}")
        self.fds = (stdin, stdout, stderr)

    def _output(self, target: int) -> int:
        """The write end of a pipe for one of the process's outputs, copied to ``target``
        (which this now owns) once the process runs."""
        try:
            r, w = os.pipe()
        except BaseException:
            os.close(target)
            raise
        self._outputs.append(_Copy(r, target))
        self._handed.append(w)
        return w

    def _open_cri_log(self, uri: str, streams: tuple[str, ...]) -> list[int]:
        """Open a ``crilog://`` URI's file and, per stream, a pipe whose read end a
        :class:`LogCopy` formats into it once the process runs; the write ends (handed to the
        runtime)."""
        target = crilog.parse_uri(uri)
        self._cri_log = log = crilog.LogFile(target.path)
        ends = []
        for stream in streams:
            r, w = os.pipe()
            self._handed.append(w)
            tee = crilog.AttachTee(os.path.join(target.attach_dir, stream)) \
                if target.attach_dir else None
            try:
                copy = LogCopy(r, crilog.Formatter(stream, target.max_line_size), log,
                               on_end=self._log_copy_ended, tee=tee)
            except BaseException:
                os.close(r)
                raise
            self._log_copies.append(copy)
            ends.append(w)
        return ends

    def _log_copy_ended(self) -> None:
        """Close the CRI log as soon as every stream reached its end."""
        if self._cri_log is not None and all(c.done.done() for c in self._log_copies):
            self._cri_log.close()

    async def _start_logger(self, uri: str, process_id: str, namespace: str,
                            reaper: Reaper) -> tuple[int, int]:
        from urllib.parse import parse_qsl, urlsplit

        parts = urlsplit(uri)
        path = parts.path
        args = [item for pair in parse_qsl(parts.query, keep_blank_values=True) for item in pair]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ready_r, ready_w = os.pipe()
        self._handed += [out_w, err_w]
        try:
            self._logger = reaper.spawn(
                [path, *args], fds={3: out_r, 4: err_r, 5: ready_w},
                env={"CONTAINER_ID": process_id, "CONTAINER_NAMESPACE": namespace})
        except OSError as err:
            for fd in (out_r, err_r, ready_r, ready_w):
                os.close(fd)
            raise errdefs.BerthError(f"failed to start binary process {path}: {err}") from None
        for fd in (out_r, err_r, ready_w):
            os.close(fd)
        try:
            # The logger signals readiness by writing a byte or closing fd 5.
            await _wait_readable(ready_r)
        finally:
            os.close(ready_r)
        return out_w, err_w

    def started(self) -> None:
        """The process runs with its fds: drop our copies of its ends, start copying."""
        self._drop_handed()
        for copy in self._copies():
            copy.start()
        for log_copy in self._log_copies:
            log_copy.start()

    def _copies(self) -> list[_Copy]:
        return [*self._outputs, *([self._stdin] if self._stdin is not None else [])]

    def _drop_handed(self) -> None:
        for fd in self._handed:
            _close(fd)
        self._handed.clear()

    def close_stdin(self) -> None:
        _close(self._stdin_keeper)
        self._stdin_keeper = None

    async def close(self, drain_timeout: float = 2.0) -> None:
        """Release everything; output still in the pipes gets ``drain_timeout`` to arrive."""
        self._drop_handed()
        self.close_stdin()
        running = [c.pump.done for c in self._outputs if c.pump is not None]
        running += [c.done for c in self._log_copies if c.started]
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*running)), drain_timeout)
        for copy in self._copies():
            copy.close()
        self._outputs.clear()
        self._stdin = None
        for log_copy in self._log_copies:
            log_copy.stop()
        self._log_copies.clear()
        if self._cri_log is not None:
            self._cri_log.close()
            self._cri_log = None
        if self._logger is not None:
            pid, done = self._logger
            self._logger = None
            await _terminate(pid, done, LOGGER_TERM_TIMEOUT)


async def _terminate(pid: int, done: asyncio.Future[Exit], timeout: float) -> None:
    if done.done():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await done


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


# -- terminals ---------------------------------------------------------------------------------


class ConsoleSocket:
    """Where the runtime sends a new process's pty master (``--console-socket``)."""

    def __init__(self) -> None:
        # A private directory of our own (mkdtemp's job, without importing tempfile).
        for _attempt in range(100):
            self._dir = f"/tmp/berth-pty-{os.urandom(6).hex()}"
            try:
                os.mkdir(self._dir, 0o700)
                break
            except FileExistsError:
                continue
        self.path = os.path.join(self._dir, "pty.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)
        self._sock.setblocking(False)

    async def receive(self) -> int:
        """Accept the runtime's connection and return the master fd it passes."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            while True:
                await _wait_readable(conn.fileno())
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                except BlockingIOError:
                    continue
                if not fds:
                    raise errdefs.BerthError("console socket: the runtime sent no pty master")
                os.set_inheritable(fds[0], False)
                return fds[0]

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


class Pump:
    """Copies ``src`` to ``dst`` (non-blocking fds) on the loop, with back-pressure: while
    ``dst`` is full, ``src`` is not read. Ends at EOF or error of either side; then
    :attr:`done` completes and ``on_end`` runs. It closes neither fd.

    Where one side is a pipe, the kernel moves the bytes (splice(2)) without their passing
    through the shim; a side splice cannot serve (a pty, say) falls back to read and write.
    """

    def __init__(self, src: int, dst: int | None, on_end: Callable[[], None] | None = None
                 ) -> None:
        self._loop = asyncio.get_running_loop()
        self._src = src
        self._dst = dst
        self._splice = dst is not None
        self._pending = b""
        self._on_end = on_end
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(src, self._readable)

    def _readable(self) -> None:
        if self._splice and self._spliced():
            return
        try:
            data = os.read(self._src, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's other side is closed
            data = b""
        if not data:
            self.stop()
            return
        if self._dst is None:
            return  # nowhere to go: read and drop, so the writer never blocks
        self._pending = data
        self._flush()
        if self._pending:
            self._wait_for_dst()

    def _spliced(self) -> bool:
        """Move what ``src`` holds with splice(2); False if splice cannot serve these fds
        (then read and write take over for good)."""
        assert self._dst is not None
        try:
            n = os.splice(self._src, self._dst, _CHUNK,
                          flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
        except BlockingIOError:
            # ``src`` was readable, so it is ``dst`` that is full (or the wake-up was
            # spurious, which the wait below settles: a writable ``dst`` sends us back).
            self._wait_for_dst()
            return True
        except OSError as err:
            if err.errno == errno.EINVAL:
                self._splice = False
                return False
            self.stop()  # EPIPE and the like: the other side is gone
            return True
        if n == 0:
            self.stop()
        return True

    def _wait_for_dst(self) -> None:
        if self.done.done():
            return
        assert self._dst is not None
        self._loop.remove_reader(self._src)
        self._loop.add_writer(self._dst, self._writable)

    def _flush(self) -> None:
        assert self._dst is not None
        while self._pending:
            try:
                n = os.write(self._dst, self._pending)
            except BlockingIOError:
                return
            except OSError:
                self._pending = b""
                self.stop()
                return
            self._pending = self._pending[n:]

    def _writable(self) -> None:
        self._flush()
        if not self._pending and not self.done.done():
            assert self._dst is not None
            self._loop.remove_writer(self._dst)
            self._loop.add_reader(self._src, self._readable)

    def stop(self) -> None:
        if self.done.done():
            return
        self._loop.remove_reader(self._src)
        if self._dst is not None:
            self._loop.remove_writer(self._dst)
        self.done.set_result(None)
        if self._on_end is not None:
            self._on_end()


class LogCopy:
    """Formats what one of a process's pipes carries into CRI log records, appended to a
    :class:`berth.crilog.LogFile`, on the loop. It owns the pipe's (read) end.

    Lifecycle: :meth:`start` once the process runs -> records are written as chunks arrive ->
    at EOF the unterminated last line is flushed, the pipe closed, :attr:`done` completes and
    ``on_end`` runs. :meth:`stop` ends it early: a started copy first takes what the pipe holds
    (a bounded amount) and flushes; one never started discards the pipe's content (the
    runtime's own failure text).
    """

    def __init__(self, src: int, formatter: crilog.Formatter, log: crilog.LogFile,
                 on_end: Callable[[], None] | None = None,
                 tee: crilog.AttachTee | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._tee = tee
        os.set_blocking(src, False)
        self._src: int | None = src
        self._formatter = formatter
        self._log = log
        self._on_end = on_end
        self.started = False
        self.done: asyncio.Future[None] = self._loop.create_future()

    def start(self) -> None:
        if not self.started and self._src is not None:
            self.started = True
            self._loop.add_reader(self._src, self._readable)

    def _readable(self) -> None:
        assert self._src is not None
        try:
            data = os.read(self._src, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO and the like: the writing side is gone
            data = b""
        if data:
            self._log.write(self._formatter.feed(data))
            if self._tee is not None:
                self._tee.write(data)
        else:
            self._finish()

    def stop(self) -> None:
        if self._src is None:
            return
        if self.started:
            self._loop.remove_reader(self._src)
            for _ in range(_DRAIN_READS):
                try:
                    data = os.read(self._src, _CHUNK)
                except OSError:  # EAGAIN: nothing more for now; EIO: the writer is gone
                    break
                if not data:
                    break
                self._log.write(self._formatter.feed(data))
                if self._tee is not None:
                    self._tee.write(data)
        self._finish()

    def _finish(self) -> None:
        assert self._src is not None
        if self.started:
            self._loop.remove_reader(self._src)
            self._log.write(self._formatter.close())
        os.close(self._src)
        self._src = None
        if self._tee is not None:
            self._tee.close()
        if not self.done.done():
            self.done.set_result(None)
        if self._on_end is not None:
            self._on_end()


class Console:
    """A process's pty master, copied to and from the request's FIFOs.

    Lifecycle: construct once the master arrived -> :meth:`resize` any time ->
    :meth:`close_stdin` at CloseIO -> :meth:`drain` after the process exited (the output is
    read until the pty reports its other side closed, then the stdout FIFO is closed: EOF for
    the client) -> :meth:`close`.
    """

    def __init__(self, master: int, stdin: str, output: int | None) -> None:
        """Copy ``stdin`` (a FIFO path, or "") to the pty and the pty to ``output`` (an fd
        this console now owns; None discards)."""
        self.master = master
        os.set_blocking(master, False)
        self._in: int | None = None
        self._in_keeper: int | None = None
        self._out = output
        self._in_pump: Pump | None = None
        if stdin:
            self._in, self._in_keeper = _open_stdin(stdin)
        if self._in is not None:
            self._in_pump = Pump(self._in, master)
        self._out_pump = Pump(master, self._out, on_end=self._output_ended)

    def _output_ended(self) -> None:
        _close(self._out)
        self._out = None

    def resize(self, width: int, height: int) -> None:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close_stdin(self) -> None:
        _close(self._in_keeper)
        self._in_keeper = None

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) for the output to end, then stop copying it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._out_pump.done), timeout)
        self._out_pump.stop()

    def close(self) -> None:
        self._out_pump.stop()
        if self._in_pump is not None:
            self._in_pump.stop()
        for fd in (self._in, self._in_keeper, self._out, self.master):
            _close(fd)
        self._in = self._in_keeper = self._out = None
