"""The byte channels a streaming session works with, over SPDY/3.1 or WebSocket.

A :class:`Channel` is one direction pair of a session (``stdout``, a port-forward's ``data``):
:meth:`Channel.read` gives what the client sent (``b""`` once it ended its side),
:meth:`Channel.write` sends, :meth:`Channel.close` ends our side. Sessions see only channels, so
the same exec, attach and port-forward logic runs over both transports.

* :class:`SpdyConnection` drives :class:`~berth.cri.streaming.spdy.ServerConnection` on an asyncio
  stream: it replies to each stream the client opens at once (spdystream waits for that), hands
  the new channel, with its headers, to :meth:`SpdyConnection.accept`, and flushes after every
  write (there is no flow control to wait for; the socket's own buffer is the back-pressure).
* :class:`WebSocketConnection` maps Kubernetes' channel protocol on wsproto: every message starts
  with a channel number (``base64.`` protocols: an ASCII digit, then base64), the numbers fixed
  by the protocol (remotecommand: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), a message
  possibly in several fragments. With ``v5.channel.k8s.io`` the client ends a channel with a
  message on channel 255 naming it; the server never sends one (kubectl does not expect it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
from collections.abc import Sequence

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from berth import errdefs
from berth.cri.streaming import spdy

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
CHANNEL_QUEUE = 256  # chunks a channel holds for a session that has not read them yet
V5_CLOSE = 255
MAX_PENDING_STREAMS = 32  # streams a client opened that its session has not taken yet
MAX_MESSAGE = 1 << 20  # bytes of one WebSocket message (kubectl sends at most 32 KiB)
# The channels a client writes on: the rest (stdout, stderr, error) only carry to the client,
# and what a client sends on them is dropped rather than held.
CLIENT_WRITES = frozenset({"stdin", "resize", "data"})


class Channel:
    """One of a session's channels (see the module)."""

    def __init__(self, name: str, send: _Sender) -> None:
        self.name = name
        self.readable = name in CLIENT_WRITES
        self._send = send
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.room = asyncio.Event()  # set while the channel holds no more than CHANNEL_QUEUE
        self.room.set()
        self._ended = False
        self.closed = False

    def _deliver(self, data: bytes) -> None:
        if data and not self.readable:
            return
        if not self._ended:
            self._incoming.put_nowait(data)
            if not data:
                self._ended = True
            elif self._incoming.qsize() > CHANNEL_QUEUE:
                self.room.clear()  # the connection stops reading until the session catches up

    async def read(self) -> bytes:
        """What the client sent next; ``b""`` once it ended its side (or the connection went)."""
        data = await self._incoming.get()
        if self._incoming.qsize() <= CHANNEL_QUEUE:
            self.room.set()
        return data

    async def write(self, data: bytes) -> None:
        if data and not self.closed:
            await self._send.send(self, data, fin=False)

    async def close(self) -> None:
        """End our side (a FIN, or nothing over a WebSocket but v5's close message)."""
        if not self.closed:
            self.closed = True
            await self._send.send(self, b"", fin=True)


async def _shut(writer: asyncio.StreamWriter, pump: asyncio.Task[None] | None) -> None:
    """Close a connection's socket and stop its reading task."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    if pump is not None:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


class _Sender:
    """What a connection shares: sending on a channel, and when it last carried anything."""

    active_at = 0.0
    """The loop's time of the last bytes the client sent or a session sent it."""

    _writer: asyncio.StreamWriter

    def _active(self) -> None:
        self.active_at = asyncio.get_running_loop().time()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes and all: a write waiting for a client that
        stopped reading fails instead of waiting on."""
        self._writer.transport.abort()

    async def send(self, channel: Channel, data: bytes, *, fin: bool) -> None:
        raise NotImplementedError


class SpdyConnection(_Sender):
    """A SPDY/3.1 connection on an asyncio stream (see the module)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 initial: bytes = b"", *, max_pending: int = MAX_PENDING_STREAMS) -> None:
        """``max_pending``: streams opened and not yet taken that are kept; past it new
        streams are refused (an exec takes its few at once). A port-forward takes streams as
        they come, and a burst of connections must not be refused: it passes the SPDY layer's
        own cap on live streams."""
        self._max_pending = max_pending
        self._reader = reader
        self._writer = writer
        self._conn = spdy.ServerConnection()
        self._initial = initial
        self._channels: dict[int, Channel] = {}
        self._ids: dict[Channel, int] = {}
        # Streams opened and not yet taken by accept(), oldest first; a stream reset before it
        # is taken leaves it. _ready is set while there is one to take or the connection ended.
        self._opened: collections.deque[tuple[Channel, spdy.Headers]] = collections.deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the client's side of the connection ended."""
        self._active()

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def accept(self, timeout: float | None) -> tuple[Channel, spdy.Headers] | None:
        """The next stream the client opens, with its headers; None when the connection ended
        or no stream came within ``timeout`` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._opened:
            if self._ended:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), None if deadline is None
                                       else max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
        return self._opened.popleft()

    async def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out:
            self._writer.write(out)
            await self._writer.drain()

    async def send(self, channel: Channel, data: bytes, *, fin: bool) -> None:
        stream_id = self._ids.get(channel)
        if stream_id is None:
            return
        self._active()
        async with self._lock:
            try:
                self._conn.send_data(stream_id, data, fin=fin)
            except spdy.StreamClosed:
                self._forget(stream_id)  # reset by the client meanwhile
                return
            if fin and stream_id not in self._conn.streams:
                self._forget(stream_id)  # both sides ended
            with contextlib.suppress(ConnectionError):
                await self._flush()

    def _forget(self, stream_id: int) -> None:
        """Drop a stream that is gone on both sides: a connection holds only live streams
        (the SPDY layer caps how many), however many a client opens and resets over time."""
        channel = self._channels.pop(stream_id, None)
        if channel is not None:
            self._ids.pop(channel, None)

    async def _run(self) -> None:
        try:
            data = self._initial
            while True:
                if data:
                    try:
                        events = self._conn.receive_data(data)
                    except spdy.ProtocolError as err:
                        log.info("cri streaming: SPDY protocol error from the client: %s", err)
                        break
                    for event in events:
                        self._event(event)
                    async with self._lock:
                        await self._flush()
                for channel in [c for c in self._channels.values() if not c.room.is_set()]:
                    await channel.room.wait()  # back-pressure: a session behind on stdin
                data = await self._reader.read(READ_SIZE)
                if not data:
                    break
                self._active()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                async with self._lock:
                    await self._flush()
            for channel in self._channels.values():
                channel._deliver(b"")
            self._ended = True
            self._ready.set()
            if not self.lost.done():
                self.lost.set_result(None)

    def _event(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.StreamOpened):
            if len(self._opened) >= self._max_pending:
                # The session takes the streams it needs at once; a client opening more than
                # it takes is refused rather than remembered.
                self._conn.reset(event.stream_id, spdy.RstStatus.REFUSED_STREAM)
                return
            try:
                self._conn.reply(event.stream_id)
            except spdy.StreamClosed:
                return  # unidirectional, or reset in the same read: nothing to serve
            name = event.headers.first("streamtype", "") or ""
            channel = Channel(name, self)
            self._channels[event.stream_id] = channel
            self._ids[channel] = event.stream_id
            self._opened.append((channel, event.headers))
            self._ready.set()
        elif isinstance(event, spdy.StreamData):
            found = self._channels.get(event.stream_id)
            if found is not None and event.data:
                found._deliver(event.data)
        elif isinstance(event, (spdy.StreamEnded, spdy.StreamReset)):
            found = self._channels.get(event.stream_id)
            if found is not None:
                found._deliver(b"")
                if isinstance(event, spdy.StreamReset):
                    found.closed = True
                    for pending in [p for p in self._opened if p[0] is found]:
                        self._opened.remove(pending)  # never taken: nothing to tell anyone
                if event.stream_id not in self._conn.streams:
                    self._forget(event.stream_id)

    async def close(self) -> None:
        """Flush what is queued and close the connection."""
        with contextlib.suppress(ConnectionError):
            async with self._lock:
                await self._flush()
        await _shut(self._writer, self._pump)


class WebSocketConnection(_Sender):
    """Kubernetes' channel protocol over a WebSocket (see the module)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ws: WSConnection, protocol: str, names: Sequence[str]) -> None:
        """``names``: the channel names by number (remotecommand: stdin, stdout, stderr,
        error, resize)."""
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self.protocol = protocol
        self._base64 = "base64." in protocol
        self._v5 = protocol.startswith("v5.")
        self.channels = [Channel(name, self) for name in names]
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments = bytearray()
        self._text = ""
        self._active()

    @staticmethod
    def handshake(head: bytes, offered: Sequence[str]) -> tuple[WSConnection, str, bytes]:
        """Accept the upgrade request ``head`` with the first of the client's subprotocols in
        ``offered``: (the connection, the protocol chosen, the bytes to send).
        InvalidArgument if none fits."""
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        for event in ws.events():
            if isinstance(event, Request):
                chosen = next((p for p in event.subprotocols if p in offered), None)
                if chosen is None:
                    raise errdefs.InvalidArgument(
                        f"none of the WebSocket subprotocols {event.subprotocols} is supported "
                        f"(supported: {list(offered)})")
                return ws, chosen, ws.send(AcceptConnection(subprotocol=chosen))
        raise errdefs.InvalidArgument("not a WebSocket upgrade request")

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def send(self, channel: Channel, data: bytes, *, fin: bool) -> None:
        if fin:
            return  # a channel's end is the client's to signal (v5); the server's is the close
        payload = bytes([self.channels.index(channel)]) + data
        self._active()
        async with self._lock:
            if self._base64:
                text = chr(ord("0") + payload[0]) + base64.b64encode(payload[1:]).decode()
                out = self._ws.send(Message(data=text))
            else:
                out = self._ws.send(Message(data=payload))
            self._writer.write(out)
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    def _message(self, payload: bytes) -> None:
        if not payload:
            return
        number, body = payload[0], payload[1:]
        if self._v5 and number == V5_CLOSE and body:
            if body[0] < len(self.channels):
                self.channels[body[0]]._deliver(b"")
            return
        if number < len(self.channels) and body:
            self.channels[number]._deliver(body)

    async def _run(self) -> None:
        try:
            while True:
                for channel in self.channels:
                    await channel.room.wait()  # back-pressure: a session behind on stdin
                data = await self._reader.read(READ_SIZE)
                if not data:
                    break
                self._active()
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, BytesMessage):
                        # A message may come in fragments: only the first starts with the
                        # channel number.
                        self._fragments += event.data
                        if len(self._fragments) > MAX_MESSAGE:
                            await self._refuse_message()
                            return
                        if event.message_finished:
                            self._message(bytes(self._fragments))
                            self._fragments.clear()
                    elif isinstance(event, TextMessage):
                        self._text += event.data
                        if len(self._text) > MAX_MESSAGE:
                            await self._refuse_message()
                            return
                        if event.message_finished:
                            text, self._text = self._text, ""
                            self._text_message(text)
                    elif isinstance(event, Ping):
                        await self._answer(event.response())
                    elif isinstance(event, CloseConnection):
                        await self._answer(event.response())
                        return
        except ConnectionError:
            pass
        finally:
            for channel in self.channels:
                channel._deliver(b"")
            if not self.lost.done():
                self.lost.set_result(None)

    def _text_message(self, text: str) -> None:
        """A ``base64.`` message: the channel as an ASCII digit, then the data in base64;
        anything else ends nothing but itself (it is dropped, and logged)."""
        if not text:
            return
        number = ord(text[0]) - ord("0")
        try:
            data = base64.b64decode(text[1:], validate=True)
        except ValueError:
            log.info("cri streaming: a WebSocket message that is not base64 was dropped")
            return
        if 0 <= number < 256:
            self._message(bytes([number]) + data)

    async def _answer(self, event: Event) -> None:
        """A reply of the protocol's own (pong, close), sent at the pace the client reads;
        none once our side is closing (the client's close answered ours)."""
        async with self._lock:
            try:
                out = self._ws.send(event)
            except LocalProtocolError:
                return
            self._writer.write(out)
            await self._writer.drain()

    async def _refuse_message(self) -> None:
        log.info("cri streaming: a WebSocket message over %d bytes; closing the session",
                 MAX_MESSAGE)
        self._fragments.clear()
        self._text = ""
        with contextlib.suppress(ConnectionError):
            await self._answer(CloseConnection(code=1009, reason="message too big"))

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, LocalProtocolError):
            async with self._lock:
                self._writer.write(self._ws.send(CloseConnection(code=1000)))
                await self._writer.drain()
        await _shut(self._writer, self._pump)
