"""Exec and attach sessions: Kubernetes' remotecommand protocol (v1 to v4, and v5 over
WebSocket) between a client's channels and a process.

The client opens (SPDY) or is given (WebSocket) the channels ``error``, ``stdin``, ``stdout``,
``stderr`` and, with a terminal from v3 on, ``resize`` (JSON terminal sizes,
``{"Width":80,"Height":24}``, one after another). The session waits for every channel the
request asked for, starts the process, then copies: the client's stdin into the process (its
end closes the process's stdin for an exec, and for an attach with ``StdinOnce``), the
process's stdout and stderr out (each channel ended at the output's end), sizes into the
terminal. It ends when the process exits, even while stdin is still open; then the error channel
gets the outcome and ends: from v4 a ``metav1.Status`` document (``Success``; ``Failure`` with
reason ``NonZeroExitCode`` and the exit code as a cause; ``InternalError``), before v4 the
failure's message as text and nothing on success. A client that goes away ends an exec's
process (as containerd does) and detaches an attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any, Protocol

from berth import errdefs
from berth.cri.attach import Session
from berth.cri.streaming.channels import Channel

log = logging.getLogger(__name__)

STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default: how long the client has to open them
OUTPUT_DRAIN_TIMEOUT = 2.0  # after the exit, for output still in the pipes
READ_SIZE = 1 << 16
MAX_RESIZE_DOCUMENT = 4096  # bytes of one terminal size document not yet complete
EXIT_POLL = 0.2  # how often an attach session looks whether its container has ended
_SPACE = re.compile(r"\s*")


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos

# Protocol versions (X-Stream-Protocol-Version / WebSocket subprotocols), best first.
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
SPDY_PROTOCOLS = (V4, V3, V2, V1)
WEBSOCKET_PROTOCOLS = (V5, V4, "v4.base64.channel.k8s.io", V1, "base64.channel.k8s.io")
WEBSOCKET_CHANNELS = ("stdin", "stdout", "stderr", "error", "resize")


def version_of(protocol: str) -> int:
    """The remotecommand version a negotiated protocol speaks (1 for none or v1)."""
    if protocol.startswith("v") and "." in protocol:
        with contextlib.suppress(ValueError):
            return int(protocol[1:protocol.index(".")])
    return 1


class Process(Protocol):
    """An exec'd process or an attached container, as a session drives it. Every method
    blocks (a session calls them in a worker thread)."""

    stdin: str
    """The FIFO the client's stdin goes into, or "" for none."""
    outputs: dict[str, int]
    """Output FIFOs by stream name, opened (non-blocking) for reading before the process
    started, so nothing it writes is lost (exec); empty when :attr:`session` carries it. The
    process closes them at :meth:`release`."""
    session: Session | None
    """A container's live output (attach)."""
    stdin_once: bool
    """Close the process's stdin when the client's ends (always for an exec; an attach when
    the container's config says StdinOnce)."""

    def resize(self, width: int, height: int) -> None: ...

    def close_stdin(self) -> None: ...

    def wait(self) -> int:
        """Block until the process ends; its exit code (an exec's session waits so)."""
        ...

    def exited(self) -> bool:
        """Whether it has ended, without blocking (an attach's session asks, so that a
        detached attach leaves nothing waiting on the container)."""
        ...

    def kill(self) -> None: ...

    def release(self) -> None:
        """Forget the process (delete an exec'd one, remove its FIFOs; end an attach)."""
        ...


class CodeExit(Exception):
    """A process that ended with a non-zero code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def status_document(error: BaseException | None) -> dict[str, Any]:
    """The ``metav1.Status`` a v4 client reads on the error channel."""
    if error is None:
        return {"metadata": {}, "status": "Success"}
    if isinstance(error, CodeExit):
        return {"metadata": {}, "status": "Failure",
                "message": f"command terminated with non-zero exit code: {error}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(error.code)}]}}
    return {"metadata": {}, "status": "Failure",
            "message": f"Internal error occurred: {error}", "reason": "InternalError",
            "details": {"causes": [{"message": str(error)}]}, "code": 500}


def status_text(error: BaseException | None) -> str:
    """What a client before v4 reads on the error channel ("" for success)."""
    if error is None:
        return ""
    return str(status_document(error)["message"])


def expected_channels(stdin: bool, stdout: bool, stderr: bool, tty: bool,
                      version: int) -> set[str]:
    wanted = {"error"}
    if stdin:
        wanted.add("stdin")
    if stdout:
        wanted.add("stdout")
    if stderr and not tty:
        wanted.add("stderr")
    if tty and version >= 3:
        wanted.add("resize")
    return wanted


class RemoteCommand:
    """One exec or attach session over ``channels`` (see the module)."""

    def __init__(self, channels: dict[str, Channel], protocol: str, *, exec_: bool,
                 cmd: list[str], connection_lost: asyncio.Future[None] | None = None) -> None:
        self.channels = channels
        self.version = version_of(protocol)
        self.exec = exec_
        self.cmd = cmd
        self.connection_lost = connection_lost
        self._loop = asyncio.get_running_loop()

    def _blocking(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on a thread of its own (a process's wait lasts as long as the
        process): no session can hold a worker that another one needs, as no goroutine of
        containerd's does. The thread ends with the call; an abandoned call's result is
        dropped."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            try:
                result: Any = fn(*args)
                error: BaseException | None = None
            except BaseException as err:  # handed to the awaiting coroutine
                result, error = None, err
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                self._loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=run, name="cri-stream-call", daemon=True).start()
        return future

    async def _writable(self, fd: int) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(fd)

    async def run(self, start: Callable[[], Process]) -> None:
        """Start the process (``start`` blocks) and carry the session to its end."""
        error: BaseException | None = None
        process: Process | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            starting = self._blocking(start)
            try:
                process = await asyncio.shield(starting)
            except asyncio.CancelledError:
                starting.add_done_callback(self._abandon)
                raise
            assert process is not None
            outputs = [self._loop.create_task(self._output_fifo(fd, self.channels.get(name)))
                       for name, fd in process.outputs.items()]
            if process.session is not None:
                outputs.append(self._loop.create_task(self._output_session(process.session)))
            pumps += outputs  # ended below in every case, a cancelled session's too
            if "stdin" in self.channels and process.stdin:
                pumps.append(self._loop.create_task(self._stdin(process)))
            if "resize" in self.channels:
                pumps.append(self._loop.create_task(self._resize(process)))
            waiter: asyncio.Future[int] = (self._blocking(process.wait) if self.exec else
                                           self._loop.create_task(self._until_exited(process)))
            watch: list[asyncio.Future[Any]] = [waiter]
            if self.connection_lost is not None:
                watch.append(self.connection_lost)
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                # The client went away: an exec's process is killed (as containerd's context
                # ends it); an attach only detaches.
                if self.exec:
                    await self._blocking(process.kill)
                    await waiter
                else:
                    waiter.cancel()
                    return
            code = waiter.result()
            if outputs:
                await asyncio.wait(outputs, timeout=OUTPUT_DRAIN_TIMEOUT)
            if self.exec and code != 0:
                error = CodeExit(f"error executing command [{' '.join(self.cmd)}], "
                                 f"exit code {code}", code)
        except asyncio.CancelledError:
            # The server is closing: an exec's process ends as with a client that went away.
            if self.exec and process is not None:
                with contextlib.suppress(errdefs.BerthError, OSError):
                    await self._blocking(process.kill)
            raise
        except Exception as err:
            # The kubelet's streaming library's words around the runtime's error (any failure:
            # the client is told, not left without a status).
            if not isinstance(err, (errdefs.BerthError, OSError)):
                log.exception("cri streaming: a session of %s failed", self.cmd or "attach")
            what = "executing command in" if self.exec else "attaching to"
            error = errdefs.Unknown(f"error {what} container: {err}")
        finally:
            for pump in pumps:
                pump.cancel()
            if pumps:
                await asyncio.wait(pumps)
            if process is not None:
                with contextlib.suppress(errdefs.BerthError):
                    await self._blocking(process.release)
        await self._report(error)

    async def _until_exited(self, process: Process) -> int:
        while not process.exited():
            await asyncio.sleep(EXIT_POLL)
        return 0

    def _abandon(self, starting: asyncio.Future[Any]) -> None:
        """A start that finished after its session was cancelled: nobody drives that process,
        so it is ended (an exec) and released."""
        if starting.cancelled() or starting.exception() is not None:
            return
        process = starting.result()

        def end() -> None:
            with contextlib.suppress(errdefs.BerthError, OSError):
                if self.exec:
                    process.kill()
                process.release()

        self._blocking(end)

    async def _drain(self, name: str) -> None:
        """Read and drop what the client still sends on ``name``: a channel nobody reads
        would stop the whole connection being read (and its end being seen)."""
        while await self.channels[name].read():
            pass

    async def _report(self, error: BaseException | None) -> None:
        for name in ("stdout", "stderr"):
            channel = self.channels.get(name)
            if channel is not None:
                await channel.close()
        channel = self.channels.get("error")
        if channel is None:
            return
        if self.version >= 4:
            await channel.write(json.dumps(status_document(error),
                                           separators=(",", ":")).encode())
        elif error is not None:
            await channel.write(status_text(error).encode())
        await channel.close()

    async def _output_fifo(self, fd: int, channel: Channel | None) -> None:
        """Copy an output FIFO to its channel until the FIFO ends (every writer closed: it is
        polled readable first, so an empty read is the end)."""
        ready: asyncio.Queue[None] = asyncio.Queue()
        self._loop.add_reader(fd, ready.put_nowait, None)
        try:
            while True:
                await ready.get()
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    break
                if channel is not None:
                    await channel.write(data)
        finally:
            self._loop.remove_reader(fd)
            if channel is not None:
                await channel.close()

    async def _output_session(self, session: Session) -> None:
        """Copy an attach session's output to its channels until both streams end. The
        publishing thread wakes the loop after each chunk; no thread waits here."""
        ended: set[str] = set()
        streams = {name for name in ("stdout", "stderr") if name in self.channels}
        ready = asyncio.Event()
        loop = self._loop

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
                loop.call_soon_threadsafe(ready.set)

        session.on_chunk(wake)
        try:
            while not streams <= ended:
                item = session.get()
                if item is None:
                    ready.clear()
                    item = session.get()  # queued before the clear: its wake is gone
                    if item is None:
                        await ready.wait()
                        continue
                await self._output_item(item, ended)
        finally:
            session.on_chunk(None)

    async def _output_item(self, item: tuple[str, bytes], ended: set[str]) -> None:
        stream, data = item
        channel = self.channels.get(stream)
        if not data:
            ended.add(stream)
            if channel is not None:
                await channel.close()
        elif channel is not None:
            await channel.write(data)

    async def _stdin(self, process: Process) -> None:
        """The client's stdin into the process's stdin FIFO. Nothing here waits in a thread:
        the FIFO is opened without blocking (no reader, as after a StdinOnce attach ended: the
        session's stdin is closed) and written when it has room, so a process that never reads
        holds nothing but this session."""
        fd = -1
        try:
            fd = os.open(process.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            while True:
                data = await self.channels["stdin"].read()
                if not data:
                    break
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        await self._writable(fd)
        except OSError as err:
            log.info("cri streaming: stdin of %s: %s", self.cmd or "attach", err)
            await self._drain("stdin")
        finally:
            if fd >= 0:
                os.close(fd)
        if self.exec or process.stdin_once:
            with contextlib.suppress(errdefs.BerthError):
                await self._blocking(process.close_stdin)

    async def _resize(self, process: Process) -> None:
        """Terminal sizes, one JSON document after another; of the documents one read brings,
        the last is applied. A document is a few dozen bytes: one still incomplete after
        :data:`MAX_RESIZE_DOCUMENT` bytes ends the resizing (the session goes on), so a client
        cannot make the daemon hold, or parse again and again, an endless one."""
        decoder = json.JSONDecoder()
        pending = ""
        while True:
            data = await self.channels["resize"].read()
            if not data:
                return
            pending += data.decode(errors="replace")
            start, size = 0, None
            while (start := _skip_space(pending, start)) < len(pending):
                try:
                    document, start = decoder.raw_decode(pending, start)
                except (ValueError, RecursionError):
                    break  # an incomplete document: wait for the rest
                if isinstance(document, dict):
                    size = document
            pending = pending[start:]
            if len(pending) > MAX_RESIZE_DOCUMENT:
                log.info("cri streaming: a terminal size of %s is over %d bytes; resizing ends",
                         self.cmd or "attach", MAX_RESIZE_DOCUMENT)
                await self._drain("resize")
                return
            if size is not None:
                with contextlib.suppress(errdefs.BerthError, TypeError, ValueError):
                    await self._blocking(process.resize, int(size.get("Width", 0)),
                                         int(size.get("Height", 0)))
