"""A ttrpc client on asyncio, and blocking façades for threads.

:class:`Client` multiplexes unary calls over one unix connection: each call takes the next odd
stream id (1, 3, 5, ...), any number may be in flight, answers are matched by id. Contract of
:meth:`Client.call`:

* the reply message on an OK status;
* a non-OK status raises the Berth error errdefs maps its code to (NotFound, ...);
* ``timeout`` is sent to the server as the call's deadline and enforced here:
  DeadlineExceeded;
* a lost or closed connection fails every call in flight, and every later one, with
  Unavailable ("ttrpc: connection closed ...");
* a reply that does not decode raises Internal.

:class:`Stub` wraps a client and a service descriptor: ``await Stub(client, svc).State(req)``.

:class:`SyncClient` and :class:`SyncStub` give threads (berthd's gRPC pool) the same calls,
blocking; they run a :class:`Client` on a :class:`BackgroundLoop`, by default one event loop
thread shared by the whole process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from berth import errdefs
from berth.ttrpc import codec
from berth.ttrpc.codec import FrameType, OversizedFrame

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

_MAX_STREAM_ID = 0xFFFFFFFF
# A blocking caller waits this much longer than the call's own timeout, so that the
# loop-side DeadlineExceeded (which also releases the stream) is what it sees.
_SYNC_GRACE = 1.0


class _Connection(asyncio.Protocol):
    """The client's side of one connection: matches answers to waiting calls."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.FrameDecoder()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.lost = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed_by_us = False
        self.reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if not isinstance(event, OversizedFrame) and event.type not in (
                FrameType.RESPONSE, FrameType.DATA
            ):
                log.debug("ttrpc: ignoring a frame of unknown type %d", event.type)
                continue
            fut = self.pending.pop(event.stream_id, None)
            if fut is None or fut.done():
                log.debug("ttrpc: answer on inactive stream %d", event.stream_id)
                continue
            if isinstance(event, OversizedFrame):
                fut.set_exception(codec.status_to_error(
                    codec.RESOURCE_EXHAUSTED,
                    f"ttrpc: reply of {event.length} bytes exceeds the maximum of "
                    f"{codec.MAX_MESSAGE}",
                ))
            elif event.type == FrameType.DATA:
                fut.set_exception(errdefs.Internal(
                    f"ttrpc: stream data on unary call {event.stream_id} (protocol error)"))
            else:
                fut.set_result(event.payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_by_us:
            self.reason = "ttrpc: connection closed by the client"
        elif exc is not None:
            self.reason = f"ttrpc: connection closed: {exc}"
        else:
            self.reason = "ttrpc: connection closed by the server"
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(errdefs.Unavailable(self.reason))
        self.pending.clear()
        self.writable.set()
        self.lost.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


def _expire(fut: asyncio.Future[bytes], message: str) -> None:
    if not fut.done():
        fut.set_exception(errdefs.DeadlineExceeded(message))


class Client:
    """One ttrpc connection. Build with :meth:`connect` or :meth:`from_socket`; use from the
    event loop it was made on. See the module docstring for the call contract."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._next_id = 1

    @classmethod
    async def connect(cls, address: str | os.PathLike[str]) -> Client:
        """Connect to a unix socket path (``unix://`` prefix allowed); Unavailable if nobody
        answers there."""
        path = codec.unix_path(address)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(_Connection, path)
        except OSError as err:
            raise errdefs.Unavailable(
                f"ttrpc: cannot connect to {path}: {err.strerror or err}") from err
        return cls(conn)

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> Client:
        """Use a connected unix socket; the client owns it from now on."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(_Connection, sock=sock)
        return cls(conn)

    @property
    def closed(self) -> bool:
        """True once the connection is gone, for whatever reason."""
        return self._conn.lost.is_set()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_cls: type[M],
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> M:
        """Call ``service``/``method`` (e.g. ``containerd.task.v2.Task``, ``State``) and return
        its reply as a ``response_cls``. See the module docstring for errors."""
        conn = self._conn
        if timeout is not None and timeout <= 0:
            raise errdefs.DeadlineExceeded(f"ttrpc: {method}: timeout {timeout}s is not positive")
        envelope = codec.encode_request(
            service,
            method,
            request.SerializeToString(),
            timeout_nano=0 if timeout is None else int(timeout * 1e9),
            metadata=metadata.items() if metadata else (),
        )
        if len(envelope) > codec.MAX_MESSAGE:
            raise codec.status_to_error(
                codec.RESOURCE_EXHAUSTED,
                f"ttrpc: {method} request of {len(envelope)} bytes exceeds the maximum of "
                f"{codec.MAX_MESSAGE}",
            )
        if not conn.writable.is_set():
            await conn.writable.wait()
        if conn.lost.is_set() or conn.transport is None or conn.transport.is_closing():
            raise errdefs.Unavailable(conn.reason or "ttrpc: connection closed")
        # From here to the write there is no await: ids reach the wire in increasing order.
        sid = self._next_id
        if sid > _MAX_STREAM_ID:
            raise errdefs.Unavailable("ttrpc: stream ids exhausted on this connection; reconnect")
        self._next_id += 2
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        conn.pending[sid] = fut
        conn.transport.write(codec.encode_frame(sid, FrameType.REQUEST, envelope))
        # A plain timer, cheaper than asyncio.timeout; expiry fails the future.
        timer = None if timeout is None else loop.call_later(
            timeout, _expire, fut, f"ttrpc: {service}/{method}: no reply within {timeout}s")
        try:
            data = await fut
        finally:
            conn.pending.pop(sid, None)
            if timer is not None:
                timer.cancel()
        try:
            resp = codec.decode_response(data)
        except codec.ProtocolError as err:
            raise errdefs.Internal(f"ttrpc: {method}: {err}") from None
        if resp.status.code != codec.OK:
            raise codec.status_to_error(resp.status.code, resp.status.message)
        try:
            return response_cls.FromString(resp.payload)
        except DecodeError as err:
            raise errdefs.Internal(
                f"ttrpc: {method}: reply is not a {response_cls.__name__}: {err}") from None

    async def close(self) -> None:
        """Close the connection and wait until it is gone; calls in flight fail Unavailable."""
        conn = self._conn
        if conn.transport is not None and not conn.lost.is_set():
            conn.closed_by_us = True
            conn.transport.close()
        await conn.lost.wait()

    async def wait_closed(self) -> None:
        """Return when the connection is gone (the peer hung up, or :meth:`close`)."""
        await self._conn.lost.wait()

    @property
    def closed_by_peer(self) -> bool:
        """True once the connection is gone for any reason but our own :meth:`close`."""
        return self._conn.lost.is_set() and not self._conn.closed_by_us


class _UnaryMethod:
    """``await method(request, *, metadata=None, timeout=...)`` → the reply message."""

    def __init__(self, client: Client, service: str, name: str, input: type[Message],
                 output: type[Message], metadata: Mapping[str, str] | None,
                 timeout: float | None) -> None:
        self._client = client
        self._service = service
        self.name = name
        self.input = input
        self.output = output
        self._metadata = dict(metadata or {})
        self._timeout = timeout

    async def __call__(self, request: Message, *, metadata: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> Any:
        if not isinstance(request, self.input):
            raise TypeError(f"{self.name} takes a {self.input.__name__}, "
                            f"not a {type(request).__name__}")
        md = {**self._metadata, **metadata} if metadata else self._metadata
        if timeout is None:
            timeout = self._timeout
        return await self._client.call(self._service, self.name, request, self.output,
                                       metadata=md, timeout=timeout)


class Stub:
    """A service's unary methods as attributes of a client.

    ``Stub(client, shim_pb2.DESCRIPTOR.services_by_name["Task"],
    metadata={namespaces.TTRPC_HEADER: "default"})`` has ``State``, ``Create``, ... each
    ``async (request, *, metadata=None, timeout=None) -> reply``. The request must be the
    method's input message; ``metadata`` adds to (and overrides) the stub's; ``timeout``
    defaults to the stub's. Streaming methods are left out. Typed loosely (replies are Any).
    """

    def __init__(self, client: Client, service: ServiceDescriptor, *,
                 metadata: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> None:
        self._service_name = service.full_name
        for m in service.methods:
            if m.client_streaming or m.server_streaming:
                continue
            self.__dict__[m.name] = _UnaryMethod(
                client, service.full_name, m.name, GetMessageClass(m.input_type),
                GetMessageClass(m.output_type), metadata, timeout)

    def __getattr__(self, name: str) -> _UnaryMethod:
        service = self.__dict__.get("_service_name", "the service")
        raise AttributeError(f"{service} has no unary method {name!r}")


# -- blocking façade ---------------------------------------------------------------------------


class BackgroundLoop:
    """An asyncio event loop in a daemon thread, for running coroutines from other threads.

    :meth:`default` is one per process (recreated in a forked child). A loop you create,
    you :meth:`close`.
    """

    _default: BackgroundLoop | None = None
    _default_lock = threading.Lock()

    def __init__(self, name: str = "berth-ttrpc") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def default(cls) -> BackgroundLoop:
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block for its result or exception.

        After ``timeout`` seconds the coroutine is cancelled and DeadlineExceeded raised. If the
        wait is interrupted (KeyboardInterrupt), the coroutine is cancelled too. RuntimeError if
        called from the loop's own thread, where it would deadlock.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run called from its own loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the coroutine's own TimeoutError
            raise errdefs.DeadlineExceeded(f"no result within {timeout}s") from None
        finally:
            if not fut.done():
                fut.cancel()

    def close(self) -> None:
        """Stop the loop and its thread. Not for :meth:`default`, which lives with the process."""
        if self is BackgroundLoop._default:
            raise RuntimeError("the default BackgroundLoop is not closed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    @classmethod
    def _forget_default(cls) -> None:
        cls._default = None
        cls._default_lock = threading.Lock()


os.register_at_fork(after_in_child=BackgroundLoop._forget_default)


class SyncClient:
    """A :class:`Client` for threads: the same calls and errors, blocking. Thread-safe."""

    def __init__(self, client: Client, loop: BackgroundLoop) -> None:
        self.client = client
        """The asyncio client, for use on ``loop``."""
        self.loop = loop

    @classmethod
    def connect(cls, address: str | os.PathLike[str], *,
                loop: BackgroundLoop | None = None) -> SyncClient:
        loop = loop or BackgroundLoop.default()
        return cls(loop.run(Client.connect(address)), loop)

    @classmethod
    def from_socket(cls, sock: socket.socket, *,
                    loop: BackgroundLoop | None = None) -> SyncClient:
        loop = loop or BackgroundLoop.default()
        return cls(loop.run(Client.from_socket(sock)), loop)

    @property
    def closed(self) -> bool:
        return self.client.closed

    def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_cls: type[M],
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> M:
        """As :meth:`Client.call`, blocking the calling thread."""
        wait = None if timeout is None else timeout + _SYNC_GRACE
        return self.loop.run(
            self.client.call(service, method, request, response_cls, metadata=metadata,
                             timeout=timeout),
            wait,
        )

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is gone; False if ``timeout`` passed first."""
        try:
            self.loop.run(self.client.wait_closed(), timeout)
        except errdefs.DeadlineExceeded:
            return False
        return True

    def close(self) -> None:
        self.loop.run(self.client.close())


class _SyncUnaryMethod:
    """``method(request, *, metadata=None, timeout=...)`` → the reply message, blocking."""

    def __init__(self, method: _UnaryMethod, loop: BackgroundLoop) -> None:
        self._method = method
        self._loop = loop
        self.name = method.name

    def __call__(self, request: Message, *, metadata: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> Any:
        effective = self._method._timeout if timeout is None else timeout
        wait = None if effective is None else effective + _SYNC_GRACE
        return self._loop.run(self._method(request, metadata=metadata, timeout=timeout), wait)


class SyncStub:
    """:class:`Stub` for threads: ``SyncStub(sync_client, svc).State(req)`` blocks."""

    def __init__(self, client: SyncClient, service: ServiceDescriptor, *,
                 metadata: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> None:
        stub = Stub(client.client, service, metadata=metadata, timeout=timeout)
        self._service_name = service.full_name
        for name, method in vars(stub).items():
            if isinstance(method, _UnaryMethod):
                self.__dict__[name] = _SyncUnaryMethod(method, client.loop)

    def __getattr__(self, name: str) -> _SyncUnaryMethod:
        service = self.__dict__.get("_service_name", "the service")
        raise AttributeError(f"{service} has no unary method {name!r}")
