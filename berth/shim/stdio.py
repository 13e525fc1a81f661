"""A container process's stdio, as the task API asks for it.

Each of stdin, stdout and stderr in a Create or Exec request is empty (``/dev/null``), a FIFO
path the client made, or, for stdout (which then decides for stderr too) a ``file:///path``
(both streams appended to that file) or a ``binary:///path?arg=value`` logging program (as
containerd's shims run it: the streams on its fds 3 and 4, a readiness pipe on fd 5, and
``CONTAINER_ID`` / ``CONTAINER_NAMESPACE`` in its environment).

Without a terminal (:class:`ProcessIO`), stdin and stdout are wired straight into the process:
the FIFO (or file, or logger pipe) is opened here and handed to the runtime as the process's
own fd, so the shim copies nothing. containerd's shim puts pipes between and copies; the direct
wiring gives the same behaviour at no CPU or memory cost, because the shim keeps the same
guards containerd's copy keeps:

* stdout FIFO: the shim holds it open read-write until the process exits, so the process can
  write before the client opens its end and never gets EPIPE while it runs; the client sees
  EOF once the process (and whatever inherited its stdout) is gone.
* stdin FIFO: the shim holds a write end until CloseIO, so the process sees EOF only after
  CloseIO *and* once every client writer has closed (a client may come and go meanwhile).

stderr (FIFO or file) alone goes through a pipe the shim relays: the runtime's stdio become the
process's, and runc prints its own failure (``exec: "x": executable file not found``) on its
stderr; relayed only once the process runs, that text never reaches the client, as with
containerd. A ``binary://`` logger gets the runtime's pipes directly, as containerd's does.

With a terminal, the runtime sends the pty master to a console socket and :class:`Console`
copies between it and the stdin FIFO and the output (FIFO, file or logging binary: that copy
cannot be avoided), and resizes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from berth import errdefs
from berth.shim.reaper import Exit, Reaper
from berth.shim.runc import Stdio

LOGGER_TERM_TIMEOUT = 12.0  # a logging binary gets this long to flush after SIGTERM
_CHUNK = 32768


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
    """"fifo", "file", "binary" (or something unknown) for a stdout URI; a bare path is a
    FIFO."""
    scheme, sep, _ = uri.partition("://")
    return scheme if sep else "fifo"


def _open_fifo_writer(path: str) -> tuple[int, int | None]:
    """(fd for the process, keeper or None) for an output path: a FIFO gets a blocking
    write-only fd and a read-write keeper (so opening never blocks and the FIFO always has
    a reader); anything else is opened for appending."""
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        raise errdefs.NotFound(f"stdio {path} does not exist") from None
    if not is_fifo:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC), None
    keeper = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(keeper)
        raise
    os.set_blocking(fd, True)
    return fd, keeper


def _open_relay_target(path: str) -> int:
    """Where relayed stderr is written: a FIFO read-write (never blocks, never EPIPE), else
    the file, appended to."""
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        raise errdefs.NotFound(f"stdio {path} does not exist") from None
    flags = os.O_RDWR if is_fifo else os.O_WRONLY | os.O_APPEND
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


def _open_stdin(path: str, *, blocking: bool) -> tuple[int, int | None]:
    """(read fd, keeper writer or None) for a stdin path. The keeper is opened first thing
    after the reader, so the FIFO has a writer from the start: the process cannot read a
    premature EOF before the client's writer arrives."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    keeper = None
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    if blocking:
        os.set_blocking(fd, True)
    return fd, keeper


def _open_log_file(uri: str) -> int:
    """A ``file://`` URI's file, created with its directory, opened for appending."""
    from urllib.parse import urlsplit

    path = urlsplit(uri).path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class ProcessIO:
    """Non-terminal stdio, wired into the process (stderr through a relay, see the module).

    Lifecycle: :meth:`open` -> hand :attr:`fds` to the runtime -> :meth:`started` once it ran
    (our copies of the process's fds go, the stderr relay starts) or :meth:`close` if it did
    not -> :meth:`exited` when the process is reaped (stdout keepers go: readers get EOF; the
    relay ends by itself at its pipe's EOF) -> :meth:`close` at delete (stdin keeper, relay,
    logging binary).
    """

    def __init__(self) -> None:
        self.fds: Stdio = (None, None, None)
        self._handed: list[int] = []
        self._keepers: list[int] = []
        self._stdin_keeper: int | None = None
        self._logger: tuple[int, asyncio.Future[Exit]] | None = None
        # stderr relay: the pipe's read end, where it goes, the copy once started
        self._err_pipe: int | None = None
        self._err_target: int | None = None
        self._err_pump: Pump | None = None

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
        write to and close, or None to discard). The FIFO, file or logging binary is chosen by
        stdout's scheme as without a terminal; stderr is not used (a pty has one output)."""
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
            elif scheme == "fifo":
                if req.stdout:
                    out = os.open(req.stdout, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
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
            stdin, self._stdin_keeper = _open_stdin(req.stdin, blocking=True)
            self._handed.append(stdin)
        scheme = _scheme(req.stdout)
        if scheme == "fifo":
            if req.stdout:
                stdout = self._output(req.stdout)
            if req.stderr:
                stderr = self._relay(_open_relay_target(req.stderr))
        elif scheme == "file":
            stdout = _open_log_file(req.stdout)
            self._handed.append(stdout)
            stderr = self._relay(_open_log_file(req.stdout))
        elif scheme == "binary":
            stdout, stderr = await self._start_logger(req.stdout, process_id, namespace, reaper)
        else:
            raise errdefs.InvalidArgument(f"unknown STDIO scheme {scheme}")
        self.fds = (stdin, stdout, stderr)

    def _relay(self, target: int) -> int:
        """A pipe for the process's stderr, relayed to ``target`` once the process runs: the
        runtime prints its own failure on its stderr, which would otherwise reach the client
        as if the container had written it (containerd's copy starts after success, too)."""
        self._err_target = target
        r, w = os.pipe()
        self._err_pipe = r
        self._handed.append(w)
        os.set_blocking(r, False)
        os.set_blocking(target, False)
        return w

    def _output(self, path: str) -> int:
        fd, keeper = _open_fifo_writer(path)
        self._handed.append(fd)
        if keeper is not None:
            self._keepers.append(keeper)
        return fd

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
        """The process runs with its fds: drop our copies, start relaying stderr."""
        self._drop_handed()
        if self._err_pipe is not None and self._err_pump is None:
            self._err_pump = Pump(self._err_pipe, self._err_target, on_end=self._relay_ended)

    def _drop_handed(self) -> None:
        for fd in self._handed:
            _close(fd)
        self._handed.clear()

    def _relay_ended(self) -> None:
        _close(self._err_pipe)
        _close(self._err_target)  # the client's EOF, when the target is a FIFO
        self._err_pipe = self._err_target = None

    def exited(self) -> None:
        """The process exited: let readers of its output see EOF."""
        for fd in self._keepers:
            _close(fd)
        self._keepers.clear()

    def close_stdin(self) -> None:
        _close(self._stdin_keeper)
        self._stdin_keeper = None

    async def close(self, drain_timeout: float = 2.0) -> None:
        """Release everything; stderr still in the relay gets ``drain_timeout`` to arrive."""
        self._drop_handed()
        self.exited()
        self.close_stdin()
        if self._err_pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._err_pump.done), drain_timeout)
            self._err_pump.stop()
        self._relay_ended()
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
    :attr:`done` completes and ``on_end`` runs. It closes neither fd."""

    def __init__(self, src: int, dst: int | None, on_end: Callable[[], None] | None = None
                 ) -> None:
        self._loop = asyncio.get_running_loop()
        self._src = src
        self._dst = dst
        self._pending = b""
        self._on_end = on_end
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(src, self._readable)

    def _readable(self) -> None:
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
        if self._pending and not self.done.done():
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
            self._in, self._in_keeper = _open_stdin(stdin, blocking=False)
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
