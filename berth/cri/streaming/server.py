"""The streaming server: the HTTP endpoint behind the URLs that the CRI's Exec, Attach and
PortForward return (``http://ADDRESS:PORT/exec/TOKEN``, ``/attach/TOKEN``,
``/portforward/TOKEN``), on ``stream_server_address``:``stream_server_port`` (containerd's
defaults: 127.0.0.1 and a port of the kernel's choosing).

A connection carries one request. Its token (:mod:`.tokens`) names what the CRI call asked for;
an unknown, used or expired token is 404. The client upgrades the connection:

* ``Upgrade: SPDY/3.1``, with one ``X-Stream-Protocol-Version`` per protocol it speaks: the
  first one it offers that the server speaks is chosen (exec and attach: ``v4.channel.k8s.io``
  down to ``channel.k8s.io``; port-forward: ``portforward.k8s.io``) and answered in the 101;
  none fits: 400 with ``X-Accepted-Stream-Protocol-Versions``. The server never writes first
  after the 101 (the Go client would lose it) and bytes the client sent after its request head
  are SPDY's.
* ``Upgrade: websocket`` (exec and attach), with the ``channel.k8s.io`` family as
  subprotocols (``v5.``, ``v4.``, ``base64.``), through wsproto.

Everything runs on one asyncio loop in a thread of its own; the runtime's blocking calls run in
worker threads. Bounds: a request head of at most 64 KiB read within 30 s, the token cache's
limit on requests waiting, and containerd's ``stream_idle_timeout``: a connection that carries
nothing either way for so long (4 h by default) is closed, its session ended as if the client
had gone (an exec is killed, an attach detaches, port-forward tunnels close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import h11

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.config import DEFAULT_STREAM_IDLE_TIMEOUT
from berth.cri.streaming import portforward, remotecommand, spdy
from berth.cri.streaming.channels import (
    MAX_PENDING_STREAMS,
    Channel,
    SpdyConnection,
    WebSocketConnection,
)
from berth.cri.streaming.remotecommand import Process, RemoteCommand
from berth.cri.streaming.tokens import Tokens

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10
HEAD_TIMEOUT = 30.0
CLIENT_CLOSE_TIMEOUT = 5.0  # after the outcome is sent, for the client to hang up first
SPDY = "spdy/3.1"
VERSION_HEADER = "x-stream-protocol-version"
ACCEPTED_HEADER = "X-Stream-Protocol-Versions"


class Backend(Protocol):
    """What the server asks of the runtime (each call blocks)."""

    def exec_process(self, request: pb.ExecRequest) -> Process: ...

    def attach_process(self, request: pb.AttachRequest) -> Process: ...

    def dial(self, sandbox_id: str, port: int) -> socket.socket: ...


def negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first of the client's protocols the server speaks; "" when the client offered none
    (a legacy client); None when none fits."""
    if not offered:
        return ""
    return next((p for p in offered if p in supported), None)


def _response(status: int, reason: str, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
              body: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    data = body.encode()
    if status != 101:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}",
                  "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate (chain) and its key, as containerd loads
    ``x509_key_pair_streaming``; InvalidArgument naming the files if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as err:
        raise errdefs.InvalidArgument(
            f"cri config: the streaming key pair ({cert_file}, {key_file}) does not load: "
            f"{getattr(err, 'strerror', None) or err}") from None
    return context


class StreamServer:
    """The streaming server (see the module). :meth:`start` binds and serves in a thread;
    :meth:`url` makes a CRI call's answer."""

    def __init__(self, backend: Backend, address: str = "127.0.0.1", port: int = 0,
                 tokens: Tokens | None = None, *, head_timeout: float = HEAD_TIMEOUT,
                 stream_timeout: float = remotecommand.STREAM_CREATION_TIMEOUT,
                 tls: tuple[str, str] | None = None,
                 idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT) -> None:
        """``tls``: the certificate and key files to serve HTTPS with (see
        :func:`tls_context`). ``idle_timeout``: seconds a connection may carry nothing before
        it is closed (0: no limit)."""
        self.backend = backend
        self.idle_timeout = idle_timeout
        self._tls = tls_context(*tls) if tls is not None else None
        self.head_timeout = head_timeout
        self.stream_timeout = stream_timeout
        self.address = address
        self.port = port
        self.tokens = tokens or Tokens()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="cri-streaming", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise errdefs.Unavailable(
                f"the CRI streaming server cannot listen on {self.address}:{self.port}: "
                f"{self._error}")

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._handle, self.address, self.port, limit=MAX_HEAD, ssl=self._tls,
                ssl_handshake_timeout=self.head_timeout if self._tls is not None else None))
        except OSError as err:
            self._error = err
            self._ready.set()
            loop.close()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("cri streaming server listening on %s", self.base_url)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self._tls is not None else 'http'}://{host}:{self.port}"

    def url(self, kind: str, request: Any) -> str:
        """Keep ``request`` under a new token; the absolute URL the client connects to."""
        return f"{self.base_url}/{kind}/{self.tokens.insert(kind, request)}"

    def close(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            # Every connection ends its session (as a client that went away) before the loop
            # stops: no handler is left half-way.
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop)
        self._thread.join(5)

    # -- one connection ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            await self._request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("cri streaming: a request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, reason: str, body: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
        writer.write(_response(status, reason, headers or [], body))
        await writer.drain()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except (asyncio.LimitOverrunError, TimeoutError, asyncio.IncompleteReadError):
            await self._refuse(writer, 400, "Bad Request", "bad request head\n")
            return
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            await self._refuse(writer, 400, "Bad Request", f"bad request: {err}\n")
            return
        if not isinstance(event, h11.Request):
            await self._refuse(writer, 400, "Bad Request", "bad request\n")
            return
        target = event.target.decode("latin-1").split("?", 1)[0]
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        parts = target.strip("/").split("/")
        pending = self.tokens.consume(parts[1]) if len(parts) == 2 and parts[0] in (
            "exec", "attach", "portforward") else None
        if pending is None or pending.kind != parts[0]:
            await self._refuse(writer, 404, "Not Found", "404 page not found\n")
            return
        upgrade = next((v.strip().lower() for k, v in headers if k == "upgrade"), "")
        if upgrade == "websocket" and pending.kind != "portforward":
            await self._websocket(reader, writer, head, pending.kind, pending.request)
        elif upgrade == SPDY:
            await self._spdy(reader, writer, headers, pending.kind, pending.request)
        else:
            await self._refuse(writer, 400, "Bad Request",
                               "unable to upgrade: missing upgrade headers in request\n")

    async def _spdy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    headers: list[tuple[str, str]], kind: str, request: Any) -> None:
        offered = [p.strip() for k, v in headers if k == VERSION_HEADER
                   for p in v.split(",") if p.strip()]
        supported = (portforward.PROTOCOL,) if kind == "portforward" \
            else remotecommand.SPDY_PROTOCOLS
        protocol = negotiate(offered, supported)
        if protocol is None:
            # 403, as the kubelet's streaming library (and so containerd) answers.
            await self._refuse(
                writer, 403, "Forbidden",
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}\n",
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
            return
        reply = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if protocol:
            reply.append(("X-Stream-Protocol-Version", protocol))
        writer.write(_response(101, "Switching Protocols", reply))
        await writer.drain()
        # What the client sent after its head is still in the reader: it is SPDY.
        conn = SpdyConnection(reader, writer, max_pending=spdy.MAX_CONCURRENT_STREAMS
                              if kind == "portforward" else MAX_PENDING_STREAMS)
        conn.start()

        async def session() -> None:
            if kind == "portforward":
                await portforward.PortForward(
                    conn, request.pod_sandbox_id,
                    lambda port: self.backend.dial(request.pod_sandbox_id, port)).run()
            else:
                channels = await self._spdy_channels(conn, kind, request, protocol)
                if channels is not None:
                    await self._remotecommand(kind, request, channels, protocol, conn.lost)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(conn.lost), CLIENT_CLOSE_TIMEOUT)

        try:
            await self._until_idle(conn, kind, session())
        finally:
            await conn.close()

    async def _spdy_channels(self, conn: SpdyConnection, kind: str, request: Any,
                             protocol: str) -> dict[str, Channel] | None:
        """Wait for every stream the request asks for (the client opens them one by one)."""
        tty = request.tty
        wanted = remotecommand.expected_channels(request.stdin, request.stdout,
                                                 request.stderr, tty,
                                                 remotecommand.version_of(protocol))
        channels: dict[str, Channel] = {}
        deadline = asyncio.get_running_loop().time() + self.stream_timeout
        while not wanted <= set(channels):
            left = deadline - asyncio.get_running_loop().time()
            opened = await conn.accept(max(0.0, left)) if left > 0 else None
            if opened is None:
                log.info("cri streaming: %s: the client opened %s of the streams %s", kind,
                         sorted(channels), sorted(wanted))
                error = channels.get("error")
                if error is not None:
                    await error.write(b"timed out waiting for client to create streams")
                    await error.close()
                return None
            channel, _ = opened
            channels[channel.name] = channel
        return channels

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         head: bytes, kind: str, request: Any) -> None:
        try:
            ws, protocol, accept = WebSocketConnection.handshake(
                head, remotecommand.WEBSOCKET_PROTOCOLS)
        except errdefs.InvalidArgument as err:
            await self._refuse(writer, 400, "Bad Request", f"unable to upgrade: {err}\n")
            return
        writer.write(accept)
        await writer.drain()
        conn = WebSocketConnection(reader, writer, ws, protocol,
                                   remotecommand.WEBSOCKET_CHANNELS)
        conn.start()
        try:
            wanted = remotecommand.expected_channels(
                request.stdin, request.stdout, request.stderr, request.tty,
                remotecommand.version_of(protocol))
            channels = {c.name: c for c in conn.channels if c.name in wanted}
            await self._until_idle(
                conn, kind, self._remotecommand(kind, request, channels, protocol, conn.lost))
        finally:
            await conn.close()

    async def _until_idle(self, conn: SpdyConnection | WebSocketConnection, kind: str,
                          session: Awaitable[None]) -> None:
        """Run ``session`` until it ends, or until ``conn`` has carried nothing either way for
        ``idle_timeout`` seconds: then the session is cancelled, as when its client goes."""
        task = asyncio.ensure_future(session)
        loop = asyncio.get_running_loop()
        try:
            while self.idle_timeout > 0:
                left = conn.active_at + self.idle_timeout - loop.time()
                if left <= 0:
                    log.info("cri streaming: closing a %s connection idle for %gs "
                             "(stream_idle_timeout)", kind, self.idle_timeout)
                    # Dropped before the session is cancelled: what it still sends on its way
                    # out must not wait for a client that stopped reading.
                    conn.abort()
                    return
                await asyncio.wait((task,), timeout=left)
                if task.done():
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
                (outcome,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(outcome, Exception):
                    log.error("cri streaming: a %s session failed as it ended: %s", kind,
                              outcome)

    async def _remotecommand(self, kind: str, request: Any, channels: dict[str, Channel],
                             protocol: str, lost: asyncio.Future[None]) -> None:
        start: Callable[[], Process]
        if kind == "exec":
            session = RemoteCommand(channels, protocol, exec_=True, cmd=list(request.cmd),
                                    connection_lost=lost)
            start = lambda: self.backend.exec_process(request)  # noqa: E731
        else:
            session = RemoteCommand(channels, protocol, exec_=False, cmd=[],
                                    connection_lost=lost)
            start = lambda: self.backend.attach_process(request)  # noqa: E731
        await session.run(start)
