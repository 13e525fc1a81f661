"""A ttrpc server on asyncio: unary calls, as ttrpc 1.1 serves them.

Lifecycle::

    server = Server()
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], TaskService())
    await server.serve("/run/berth/s/abc")   # or a listening socket; returns once listening
    ...                                       # requests are served in the background
    await server.shutdown()                   # stop listening, let calls finish, close

Contract for handlers: ``impl`` has one ``async def Method(self, ctx, request) -> response`` per
RPC of the service, named as in the .proto. A method the object lacks answers UNIMPLEMENTED.
Each request runs in its own task, so calls on one connection run concurrently and may answer
out of order; each answer goes back on its request's stream. The task sees the request's
namespace through :func:`berth.namespaces.current` when the caller sent one. A handler is
cancelled (as a Go handler's context is) when its deadline passes, when its connection is lost,
or when :meth:`Server.shutdown` gives up waiting; use ``asyncio.shield`` for work that must not
stop halfway. Raising a :class:`~berth.errdefs.BerthError` answers its status; any other
exception answers UNKNOWN (or what errdefs maps it to) with its message, and is logged.

Streaming methods (ttrpc 1.2) are not served: their requests, and data frames, answer
UNIMPLEMENTED. Frames of unknown types are ignored, as Go's ttrpc does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from berth import errdefs, namespaces
from berth.api.ttrpc import ttrpc_pb2
from berth.ttrpc import codec
from berth.ttrpc.codec import Frame, FrameType, OversizedFrame

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
_BACKLOG = 128
_CLOSE_TIMEOUT = 1.0  # for a closing connection's last bytes to reach a peer that may not read


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about its call besides the request message."""

    service: str
    method: str
    metadata: dict[str, list[str]]
    """Every key/value the caller sent, keys as sent, values in order."""
    timeout_nano: int
    """As sent: 0 means no deadline."""
    deadline: float | None
    """On the :func:`time.monotonic` clock; None without a timeout."""
    namespace: str | None
    """The ``containerd-namespace-ttrpc`` value, if sent (also bound for namespaces.current())."""

    def get(self, key: str) -> str | None:
        """The first value sent for ``key`` (looked up in lower case, as Go's ttrpc.MD.Get)."""
        values = self.metadata.get(key.lower())
        return values[0] if values else None


Handler = Callable[[RequestContext, Any], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class _Method:
    service: str
    name: str
    input: type[Message]
    output: type[Message]
    handler: Handler | None
    streaming: bool


class Server:
    """Serves registered services on any number of unix listeners. See the module docstring."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, _Method]] = {}
        self._listeners: list[asyncio.AbstractServer] = []
        self._paths: list[str] = []
        self._connections: set[_Connection] = set()
        self._closing = False

    def register(self, service: ServiceDescriptor, impl: object) -> None:
        """Serve ``service`` (a protobuf ServiceDescriptor) with ``impl``'s coroutine methods.

        AlreadyExists if a service of that name is registered; TypeError if ``impl`` has a
        method of an RPC's name that is not a coroutine function.
        """
        if service.full_name in self._services:
            raise errdefs.AlreadyExists(f"ttrpc: service {service.full_name} is already registered")
        methods: dict[str, _Method] = {}
        for m in service.methods:
            handler = getattr(impl, m.name, None)
            if handler is not None and not inspect.iscoroutinefunction(handler):
                raise TypeError(f"{type(impl).__name__}.{m.name} must be an async def")
            methods[m.name] = _Method(
                service=service.full_name,
                name=m.name,
                input=GetMessageClass(m.input_type),
                output=GetMessageClass(m.output_type),
                handler=handler,
                streaming=m.client_streaming or m.server_streaming,
            )
        self._services[service.full_name] = methods

    async def serve(self, address: str | os.PathLike[str] | socket.socket) -> None:
        """Start serving on ``address`` and return once it accepts connections.

        ``address`` is a unix socket path (``unix://`` prefix allowed; a leading NUL names an
        abstract socket) or an already-listening socket. For a path, a stale socket file is
        replaced, one a live server answers on is AlreadyExists; the new socket is mode 0600 and
        is removed again by :meth:`shutdown`. A socket passed in is closed by shutdown but its
        file, if any, is left to the caller.
        """
        if self._closing:
            raise errdefs.FailedPrecondition("ttrpc: server is shut down")
        loop = asyncio.get_running_loop()
        if isinstance(address, socket.socket):
            sock, path = address, None
        else:
            path = codec.unix_path(address)
            sock = _listen_unix(path)
        try:
            listener = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(listener)
        if path is not None and not path.startswith("\0"):
            self._paths.append(path)

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop listening, wait up to ``timeout`` seconds for running calls, cancel the rest,
        and close every connection. Requests arriving meanwhile answer UNAVAILABLE.

        Do not await this from a handler: the handler's own call would never finish. Signal
        the code that owns the server instead (the shim's Shutdown RPC sets an event);
        RuntimeError if you do.
        """
        current = asyncio.current_task()
        if any(current in conn.handlers.values() for conn in self._connections):
            raise RuntimeError("ttrpc: Server.shutdown awaited from one of its own handlers")
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._paths.clear()
        for conn in list(self._connections):
            if not conn.handlers:
                conn.close()
        tasks = [t for conn in self._connections for t in conn.handlers.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                log.warning("ttrpc: cancelling %s, still running at shutdown", task.get_name())
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=_CLOSE_TIMEOUT)
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        if conns:
            waiters = [asyncio.ensure_future(c.lost.wait()) for c in conns]
            await asyncio.wait(waiters, timeout=_CLOSE_TIMEOUT)
            for waiter in waiters:
                waiter.cancel()
            for conn in conns:
                conn.abort()  # no-op for those already closed; drops what a peer never read
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # -- per request, called by connections ----------------------------------------------------

    def _lookup(self, service: str, method: str) -> _Method:
        methods = self._services.get(service)
        if methods is None:
            raise errdefs.NotImplementedByBerth(f"service {service}")
        m = methods.get(method)
        if m is None or m.handler is None:
            raise errdefs.NotImplementedByBerth(f"method {method}")
        if m.streaming:
            raise errdefs.NotImplementedByBerth(
                f"method {method}: streaming methods are not supported"
            )
        return m

    async def _call(self, method: _Method, req: ttrpc_pb2.Request) -> bytes:
        """Run one call; the serialized reply, or the error to answer."""
        assert method.handler is not None
        try:
            request = method.input.FromString(req.payload)
        except DecodeError as err:
            raise errdefs.Internal(f"ttrpc: error unmarshalling payload: {err}") from None
        metadata: dict[str, list[str]] = {}
        for kv in req.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        ns = metadata.get(namespaces.TTRPC_HEADER)
        ctx = RequestContext(
            service=method.service,
            method=method.name,
            metadata=metadata,
            timeout_nano=req.timeout_nano,
            deadline=(time.monotonic() + req.timeout_nano / 1e9) if req.timeout_nano else None,
            namespace=ns[0] if ns else None,
        )
        with contextlib.ExitStack() as stack:
            if ctx.namespace is not None:
                stack.enter_context(namespaces.use(ctx.namespace))
            if req.timeout_nano == 0:
                response = await method.handler(ctx, request)
            elif req.timeout_nano < 0:
                raise errdefs.DeadlineExceeded("ttrpc: the deadline passed before the call began")
            else:
                try:
                    async with asyncio.timeout(req.timeout_nano / 1e9) as deadline:
                        response = await method.handler(ctx, request)
                except TimeoutError:
                    if not deadline.expired():
                        raise  # the handler's own TimeoutError, not the deadline
                    raise errdefs.DeadlineExceeded(
                        f"ttrpc: {method.name}: deadline exceeded") from None
        if not isinstance(response, method.output):
            log.error("ttrpc: %s/%s returned %s, not %s", method.service, method.name,
                      type(response).__name__, method.output.__name__)
            raise errdefs.Internal(f"ttrpc: {method.name} returned the wrong message type")
        return response.SerializeToString()


class _Connection(asyncio.Protocol):
    """One client's connection: frames in, a task per request, answers out."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._decoder = codec.FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._last_stream_id = 0
        self.handlers: dict[int, asyncio.Task[None]] = {}
        self.lost = asyncio.Event()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server._closing:
            transport.close()
            return
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if isinstance(event, OversizedFrame):
                self._answer_status(
                    event.stream_id,
                    codec.RESOURCE_EXHAUSTED,
                    f"message length {event.length} exceed maximum message size of "
                    f"{codec.MAX_MESSAGE}",
                )
            elif event.type == FrameType.REQUEST:
                self._on_request(event)
            elif event.type == FrameType.DATA:
                # We never keep a stream open, so data is for a stream already answered
                # UNIMPLEMENTED (drop it) or for one never opened.
                if event.stream_id > self._last_stream_id:
                    self._answer_error(event.stream_id, errdefs.NotImplementedByBerth(
                        "ttrpc: streams are not supported"))
            else:
                log.debug("ttrpc: ignoring a frame of unknown type %d", event.type)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._decoder.idle:
            log.debug("ttrpc: connection closed in the middle of a frame")
        for task in self.handlers.values():
            task.cancel()
        self._server._connections.discard(self)
        self.lost.set()

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop taking requests until it does.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- requests ------------------------------------------------------------------------------

    def _on_request(self, frame: Frame) -> None:
        sid = frame.stream_id
        if sid % 2 != 1:
            self._answer_error(sid, errdefs.InvalidArgument(
                "StreamID must be odd for client initiated streams"))
            return
        if sid <= self._last_stream_id:
            self._answer_error(sid, errdefs.InvalidArgument(
                "StreamID cannot be re-used and must increment"))
            return
        self._last_stream_id = sid
        if self._server._closing:
            self._answer_error(sid, errdefs.Unavailable("ttrpc: server is shutting down"))
            return
        try:
            req = codec.decode_request(frame.payload)
            method = self._server._lookup(req.service, req.method)
        except codec.ProtocolError as err:
            self._answer_error(sid, errdefs.InvalidArgument(str(err)))
            return
        except errdefs.BerthError as err:
            self._answer_error(sid, err)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(sid, method, req), name=f"ttrpc {req.service}/{req.method} #{sid}"
        )
        self.handlers[sid] = task

    async def _run(self, sid: int, method: _Method, req: ttrpc_pb2.Request) -> None:
        try:
            payload = await self._server._call(method, req)
        except errdefs.BerthError as err:
            self._answer_error(sid, err)
        except Exception as err:
            log.exception("ttrpc: %s/%s failed", method.service, method.name)
            self._answer_error(sid, err)
        except asyncio.CancelledError:
            self._answer_error(sid, errdefs.Canceled("ttrpc: the call was cancelled"))
            raise
        else:
            self._send(sid, codec.encode_response(payload))
        finally:
            self.handlers.pop(sid, None)
            if self._server._closing and not self.handlers:
                self.close()

    # -- answers -------------------------------------------------------------------------------

    def _answer_error(self, sid: int, err: BaseException) -> None:
        code, message = codec.error_to_status(err)
        self._answer_status(sid, code, message)

    def _answer_status(self, sid: int, code: int, message: str) -> None:
        self._send(sid, codec.encode_response(code=code, message=message))

    def _send(self, sid: int, envelope: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            log.debug("ttrpc: dropping the answer to stream %d: connection closed", sid)
            return
        try:
            frame = codec.encode_frame(sid, FrameType.RESPONSE, envelope)
        except codec.ProtocolError as err:
            frame = codec.encode_frame(sid, FrameType.RESPONSE, codec.encode_response(
                code=codec.RESOURCE_EXHAUSTED, message=str(err)))
        transport.write(frame)

    def close(self) -> None:
        """Close once buffered answers are written."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _listen_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as err:
            if err.errno != errno.EADDRINUSE or path.startswith("\0"):
                raise
            _remove_stale_socket(path)
            sock.bind(path)
        if not path.startswith("\0"):
            # Before listen() nobody can connect, so there is no window with looser modes.
            os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise errdefs.AlreadyExists(f"ttrpc: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise errdefs.AlreadyExists(f"ttrpc: {path} is in use by a running server")
