"""The streaming server's HTTP edge and its bad input, in process: tokens (unknown, reused,
expired, too many), requests that are not upgrades or offer no protocol it speaks, garbage
instead of SPDY, and clients that connect and go silent. Each ends cleanly: an HTTP error or a
closed connection, no process started, no thread left. The processes behind it are real ones
(``subprocess``), and the SPDY client is built from the sans-IO codec; real Go clients (kubectl)
drive it against berthd in test_streaming_reference.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from token_server import self_signed_certificate
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection
from wsproto.events import Message as WsMessage
from wsproto.events import Request as WsRequest

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri import attach
from berth.cri.streaming import spdy
from berth.cri.streaming.channels import (
    MAX_MESSAGE,
    MAX_PENDING_STREAMS,
    Channel,
    SpdyConnection,
)
from berth.cri.streaming.remotecommand import RemoteCommand
from berth.cri.streaming.server import StreamServer
from berth.cri.streaming.tokens import Tokens

TIMEOUT = 0.5


class LocalProcess:
    """A real process on this host standing in for a container's (the server's contract)."""

    session = None
    stdin_once = True

    def __init__(self, request: pb.ExecRequest) -> None:
        self.proc = subprocess.Popen(list(request.cmd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.outputs = {"stdout": self.proc.stdout.fileno(),
                        "stderr": self.proc.stderr.fileno()}
        for fd in self.outputs.values():
            os.set_blocking(fd, False)
        self.stdin = ""

    def resize(self, width: int, height: int) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def wait(self) -> int:
        return self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()

    def release(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


class LocalBackend:
    def __init__(self) -> None:
        self.started = 0
        self.processes: list[LocalProcess] = []

    def exec_process(self, request: pb.ExecRequest) -> LocalProcess:
        self.started += 1
        self.processes.append(LocalProcess(request))
        return self.processes[-1]

    def attach_process(self, request: pb.AttachRequest) -> Any:
        raise errdefs.NotImplementedByBerth("attach")

    def dial(self, sandbox_id: str, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port))


@pytest.fixture
def server() -> Iterator[StreamServer]:
    before = threading.active_count()
    s = StreamServer(LocalBackend(), head_timeout=TIMEOUT, stream_timeout=TIMEOUT,
                     tokens=Tokens(max_in_flight=5))
    s.start()
    try:
        yield s
    finally:
        s.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before, threading.enumerate()


def _exec_url(server: StreamServer, *cmd: str) -> str:
    return server.url("exec", pb.ExecRequest(container_id="c", cmd=list(cmd), stdout=True,
                                              stderr=True))


def _connect(url: str) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock, parts.path


def _head(path: str, *headers: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, head.decode(), rest


SPDY_UPGRADE = ("Connection: Upgrade", "Upgrade: SPDY/3.1",
                "X-Stream-Protocol-Version: v4.channel.k8s.io",
                "X-Stream-Protocol-Version: channel.k8s.io")


def test_unknown_and_reused_tokens(server: StreamServer) -> None:
    for path in ("/exec/nosuchtoken", "/attach/x", "/nothing/here", "/exec"):
        sock, _ = _connect(server.base_url + path)
        with sock:
            sock.sendall(_head(path, *SPDY_UPGRADE))
            status, _, body = _response(sock)
        assert (status, body) == (404, b"404 page not found\n")
    url = _exec_url(server, "true")
    for expected in (101, 404):
        sock, path = _connect(url)
        with sock:
            sock.sendall(_head(path, *SPDY_UPGRADE))
            assert _response(sock)[0] == expected


def test_expired_token_and_the_limit() -> None:
    now = [0.0]
    tokens = Tokens(ttl=60, max_in_flight=2, clock=lambda: now[0])
    first = tokens.insert("exec", "a")
    assert len(first) == 11
    tokens.insert("exec", "b")
    with pytest.raises(errdefs.ResourceExhausted, match="in-flight"):
        tokens.insert("exec", "c")
    now[0] = 61.0
    assert tokens.consume(first) is None  # expired
    third = tokens.insert("exec", "c")  # the expired ones made room
    assert tokens.consume(third) is not None and tokens.consume(third) is None


def test_not_an_upgrade_or_no_common_protocol(server: StreamServer) -> None:
    sock, path = _connect(_exec_url(server, "true"))
    with sock:
        sock.sendall(_head(path))
        status, _, body = _response(sock)
    assert status == 400 and b"missing upgrade headers" in body
    sock, path = _connect(_exec_url(server, "true"))
    with sock:
        sock.sendall(_head(path, "Connection: Upgrade", "Upgrade: SPDY/3.1",
                           "X-Stream-Protocol-Version: v9.channel.k8s.io"))
        status, head, _ = _response(sock)
    assert status == 403  # as the kubelet's library answers
    assert "X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in head
    assert started_processes(server) == 0


def started_processes(server: StreamServer) -> int:
    backend = server.backend
    assert isinstance(backend, LocalBackend)
    return backend.started


class SpdyClient:
    """A SPDY/3.1 client from the codec: opens streams as spdystream does."""

    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.writer = spdy.FrameWriter()
        self.reader = spdy.FrameReader()
        self.next_id = 1
        self.frames: list[spdy.Frame] = list(self.reader.feed(initial)) if initial else []

    def open(self, streamtype: str, fin: bool = False) -> int:
        stream_id, self.next_id = self.next_id, self.next_id + 2
        self.sock.sendall(self.writer.encode(spdy.SynStreamFrame(
            stream_id, spdy.Headers([("streamtype", streamtype)]), fin=fin)))
        return stream_id

    def read_all(self) -> dict[int, bytes]:
        """Data per stream until the server closes the connection."""
        out: dict[int, bytes] = {}
        frames = list(self.frames)
        while True:
            for frame in frames:
                if isinstance(frame, spdy.DataFrame):
                    out[frame.stream_id] = out.get(frame.stream_id, b"") + bytes(frame.data)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            frames = self.reader.feed(chunk)
        return out


def test_exec_over_spdy(server: StreamServer) -> None:
    sock, path = _connect(_exec_url(server, "sh", "-c", "echo out; echo err >&2; exit 3"))
    with sock:
        sock.sendall(_head(path, *SPDY_UPGRADE))
        status, head, rest = _response(sock)
        assert status == 101 and "X-Stream-Protocol-Version: v4.channel.k8s.io" in head
        client = SpdyClient(sock, rest)
        error, stdout, stderr = client.open("error"), client.open("stdout"), \
            client.open("stderr")
        got = client.read_all()
    assert got[stdout] == b"out\n" and got[stderr] == b"err\n"
    status_doc = json.loads(got[error])
    assert status_doc["reason"] == "NonZeroExitCode"
    assert status_doc["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_garbage_instead_of_spdy(server: StreamServer) -> None:
    sock, path = _connect(_exec_url(server, "sleep", "30"))
    with sock:
        sock.sendall(_head(path, *SPDY_UPGRADE) + os.urandom(4096))
        assert _response(sock)[0] == 101
        sock.settimeout(10)
        while sock.recv(65536):  # a GOAWAY, then the server closes
            pass
    assert started_processes(server) == 0


def test_silent_clients(server: StreamServer) -> None:
    # Half a request head, then nothing: closed after the head timeout.
    sock, path = _connect(_exec_url(server, "true"))
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode())
        sock.settimeout(10)
        status, _, _ = _response(sock)
        assert status == 400
    # Upgraded, but it opens only the error stream: told so on it, then closed.
    sock, path = _connect(_exec_url(server, "true"))
    with sock:
        sock.sendall(_head(path, *SPDY_UPGRADE))
        _, _, rest = _response(sock)
        client = SpdyClient(sock, rest)
        error = client.open("error")
        got = client.read_all()
    assert got[error] == b"timed out waiting for client to create streams"
    assert started_processes(server) == 0


# -- what one client may hold --------------------------------------------------------------------


def _spdy_session(url: str) -> tuple[socket.socket, SpdyClient, dict[str, int]]:
    """An exec session over SPDY with its error, stdout and stderr streams open."""
    sock, path = _connect(url)
    sock.sendall(_head(path, *SPDY_UPGRADE))
    status, _, rest = _response(sock)
    assert status == 101
    client = SpdyClient(sock, rest)
    return sock, client, {name: client.open(name) for name in ("error", "stdout", "stderr")}


def _sessions_ended() -> None:
    """Wait (up to 10 s) until no session waits on a process any more."""
    deadline = time.monotonic() + 10
    while (any(t.name == "cri-stream-call" for t in threading.enumerate())
           and time.monotonic() < deadline):
        time.sleep(0.05)


def test_sessions_waiting_on_their_processes_hold_no_shared_worker(
        server: StreamServer) -> None:
    """Twelve sessions whose processes run on (more than asyncio's default pool has
    workers): another session still starts and ends at once."""
    held = [_spdy_session(_exec_url(server, "sleep", "30")) for _ in range(12)]
    try:
        deadline = time.monotonic() + 10
        while started_processes(server) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started_processes(server) == 12
        sock, client, streams = _spdy_session(_exec_url(server, "echo", "free"))
        with sock:
            sock.settimeout(10)
            assert client.read_all()[streams["stdout"]] == b"free\n"
    finally:
        for sock, _, _ in held:
            sock.close()  # the server kills their processes, and their waits end
        _sessions_ended()


def test_streams_opened_and_reset_are_not_kept() -> None:
    """A client opening and resetting streams over and over, then opening streams its session
    never takes: the connection keeps none of the reset ones, holds at most
    MAX_PENDING_STREAMS waiting and refuses the rest, and goes on answering."""
    async def run() -> tuple[int, int, list[int]]:
        server_sock, client_sock = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=server_sock)
        conn = SpdyConnection(reader, writer)
        conn.start()
        codec, frames = spdy.FrameWriter(), spdy.FrameReader()
        wire = bytearray()
        for n in range(2000):
            sid = 2 * n + 1
            wire += codec.encode(spdy.SynStreamFrame(sid, spdy.Headers([("streamtype", "x")])))
            wire += codec.encode(spdy.RstStreamFrame(sid, spdy.RstStatus.CANCEL))
        for n in range(2000, 2100):  # opened, never reset, never taken
            wire += codec.encode(spdy.SynStreamFrame(2 * n + 1,
                                                     spdy.Headers([("streamtype", "x")])))
        wire += codec.encode(spdy.PingFrame(1))
        client_sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client_sock, bytes(wire))
        refused: list[int] = []
        answered = False
        deadline = loop.time() + 20
        while not answered and loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(client_sock, 1 << 16), 1)
            except TimeoutError:
                continue
            for frame in frames.feed(chunk):
                if (isinstance(frame, spdy.RstStreamFrame)
                        and frame.status == spdy.RstStatus.REFUSED_STREAM):
                    refused.append(frame.stream_id)
                answered = answered or isinstance(frame, spdy.PingFrame)
        kept, pending = len(conn._channels), len(conn._opened)
        client_sock.close()
        await conn.lost
        await conn.close()
        return kept, pending, refused

    kept, pending, refused = asyncio.run(run())
    assert (kept, pending) == (MAX_PENDING_STREAMS, MAX_PENDING_STREAMS)
    assert refused == [2 * n + 1 for n in range(2000 + MAX_PENDING_STREAMS, 2100)]


def _ws_exec(server: StreamServer, *cmd: str) -> tuple[socket.socket, WSConnection]:
    url = server.url("exec", pb.ExecRequest(container_id="c", cmd=list(cmd), stdin=True,
                                            stdout=True, stderr=True))
    sock, path = _connect(url)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(WsRequest(host="x", target=path,
                                   subprotocols=["v4.channel.k8s.io"])))
    sock.settimeout(10)
    while True:
        ws.receive_data(sock.recv(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return sock, ws


def test_websocket_message_over_the_limit_closes_the_session(server: StreamServer) -> None:
    """One WebSocket message may be at most MAX_MESSAGE bytes: a client sending an endless
    one (in fragments) is closed with 1009, not buffered."""
    sock, ws = _ws_exec(server, "sleep", "30")
    with sock:
        chunk = b"\x00" + b"x" * (256 << 10)
        code = None
        with contextlib.suppress(OSError):
            for _ in range(MAX_MESSAGE // len(chunk) + 4):
                sock.sendall(ws.send(WsMessage(data=chunk, message_finished=False)))
        while code is None:
            data = sock.recv(65536)
            if not data:
                break
            ws.receive_data(data)
            code = next((e.code for e in ws.events() if isinstance(e, CloseConnection)), None)
    _sessions_ended()
    assert code == 1009


def test_resize_documents_are_bounded() -> None:
    """Terminal sizes: the last of a burst is applied; an endless document, or one nested too
    deep to parse, ends the resizing and nothing else."""
    class Sizes:
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def resize(self, width: int, height: int) -> None:
            self.seen.append((width, height))

    async def feed(*chunks: bytes) -> list[tuple[int, int]]:
        channel = Channel("resize", cast(Any, None))
        for chunk in chunks:
            channel._deliver(chunk)
        session = RemoteCommand({"resize": channel}, "v4.channel.k8s.io", exec_=True, cmd=[])
        sizes = Sizes()
        await asyncio.wait_for(session._resize(cast(Any, sizes)), 10)
        return sizes.seen

    burst = b"".join(b'{"Width":%d,"Height":24} ' % w for w in range(1, 2001))
    assert asyncio.run(feed(burst, b'{"Width":7,', b'"Height":8}', b"")) == [(2000, 24), (7, 8)]
    # Given up on, the channel is still read (and dropped) to its end.
    assert asyncio.run(feed(b'{"Width":1,"Height":2}', b'"' + b"a" * 10000,
                            b'{"Width":3,"Height":4}', b"")) == [(1, 2)]
    assert asyncio.run(feed(b"[" * 200000, b"")) == []


def test_stdin_without_a_reader_is_not_waited_for(tmp_path: Path) -> None:
    """A stdin FIFO nobody reads (a StdinOnce attach that ended): the session's stdin ends at
    once instead of a thread waiting forever in open(2); one whose reader never reads holds
    only the session, and ends with it."""
    class Stdin:
        stdin_once = True

        def __init__(self, path: str) -> None:
            self.stdin = path
            self.closed = 0

        def close_stdin(self) -> None:
            self.closed += 1

    async def run(fifo: str, payload: bytes, end: bool) -> int:
        channel = Channel("stdin", cast(Any, None))
        channel._deliver(payload)
        if end:
            channel._deliver(b"")
        session = RemoteCommand({"stdin": channel}, "v4.channel.k8s.io", exec_=False, cmd=[])
        process = Stdin(fifo)
        task = asyncio.ensure_future(session._stdin(cast(Any, process)))
        done, _ = await asyncio.wait([task], timeout=1)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return process.closed

    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    before = {t for t in threading.enumerate() if t.name == "cri-stream-call"}
    assert asyncio.run(run(str(fifo), b"data", True)) == 1  # ENXIO: no reader
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        asyncio.run(run(str(fifo), b"x" * (1 << 20), False))  # fills the pipe, then waits
    finally:
        os.close(reader)
    time.sleep(0.2)  # close_stdin's call ends with it
    assert {t for t in threading.enumerate() if t.name == "cri-stream-call"} <= before


def test_streaming_over_tls(tmp_path: Path) -> None:
    """With a key pair (enable_tls_streaming) the server speaks HTTPS only, and its URLs say
    so."""
    cert, key = self_signed_certificate(tmp_path, "stream")
    server = StreamServer(LocalBackend(), tls=(str(cert), str(key)))
    server.start()
    try:
        url = _exec_url(server, "echo", "tls")
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        raw, path = _connect(url)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(_head(path, *SPDY_UPGRADE))
            assert _response(sock)[0] == 101
        plain, path = _connect(_exec_url(server, "echo", "tls"))
        with plain:
            plain.settimeout(10)
            plain.sendall(_head(path, *SPDY_UPGRADE))
            assert b"HTTP/1.1 101" not in plain.recv(65536)
    finally:
        server.close()
    with pytest.raises(errdefs.InvalidArgument, match="does not load"):
        StreamServer(LocalBackend(), tls=(str(key), str(cert)))


def test_a_detached_attach_leaves_nothing_waiting() -> None:
    """An attach whose client goes away detaches at once, and nothing is left waiting on the
    container (its end is looked at, not waited for): attaching and detaching again and again
    costs no thread."""
    class Attached:
        stdin = ""
        session = None
        stdin_once = False

        def __init__(self) -> None:
            self.outputs: dict[str, int] = {}
            self.released = 0

        def wait(self) -> int:
            raise AssertionError("an attach's session must not wait on the container")

        def exited(self) -> bool:
            return False

        def kill(self) -> None:
            raise AssertionError("an attach never ends the container")

        def release(self) -> None:
            self.released += 1

    async def attach_and_leave(process: Attached) -> None:
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session = RemoteCommand({}, "v4.channel.k8s.io", exec_=False, cmd=[],
                                connection_lost=lost)
        running = asyncio.ensure_future(session.run(lambda: cast(Any, process)))
        await asyncio.sleep(0.05)
        lost.set_result(None)
        await asyncio.wait_for(running, 5)

    before = {t for t in threading.enumerate() if t.name == "cri-stream-call"}
    processes = [Attached() for _ in range(20)]
    for process in processes:
        asyncio.run(attach_and_leave(process))
    time.sleep(0.2)  # the start and release calls' threads end with their calls
    assert {t for t in threading.enumerate() if t.name == "cri-stream-call"} <= before
    assert [p.released for p in processes] == [1] * 20


def test_attach_output_is_carried_without_a_waiting_thread() -> None:
    """An attach session's output comes from the container's fan-out, published by another
    thread: the session waits on the loop for it (no thread of its own, however long it
    waits), carries every chunk in order, and ends with the streams."""
    class Collect:
        def __init__(self) -> None:
            self.got: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

        async def send(self, channel: Channel, data: bytes, *, fin: bool) -> None:
            self.got[channel.name].append(b"<end>" if fin else data)

    class Attached:
        stdin = ""
        stdin_once = False

        def __init__(self, session: attach.Session) -> None:
            self.session = session
            self.outputs: dict[str, int] = {}
            self.done = False

        def exited(self) -> bool:
            return self.done

        def release(self) -> None:
            assert self.session is not None
            self.session.close()

    output = attach.Output()
    process = Attached(output.subscribe())
    sender = Collect()
    waiting: list[int] = []

    def publish() -> None:
        for i in range(50):
            output.publish("stdout" if i % 2 else "stderr", b"%d;" % i)
            if i == 25:
                time.sleep(1.0)  # the session waits here
                waiting.append(sum(t.name == "cri-stream-call" for t in threading.enumerate()))
        output.end()
        process.done = True

    async def run() -> None:
        channels = {name: Channel(name, cast(Any, sender)) for name in ("stdout", "stderr")}
        session = RemoteCommand(channels, "v4.channel.k8s.io", exec_=False, cmd=[])
        publisher = threading.Thread(target=publish)
        running = asyncio.ensure_future(session.run(lambda: cast(Any, process)))
        await asyncio.sleep(0.1)
        publisher.start()
        await asyncio.wait_for(running, 10)
        publisher.join()

    asyncio.run(run())
    assert waiting == [0]
    assert b"".join(sender.got["stdout"]) == b"".join(b"%d;" % i for i in range(1, 50, 2)) \
        + b"<end>"
    assert b"".join(sender.got["stderr"]) == b"".join(b"%d;" % i for i in range(0, 50, 2)) \
        + b"<end>"


def test_accept_waits_again_after_a_pending_stream_is_reset() -> None:
    """A stream opened, then reset before its session took it: accept() waits for the next
    stream (it does not return at once, over and over), and takes it when it comes. A
    port-forward's connection takes a burst of streams without refusing any."""
    async def run() -> tuple[float, str, int]:
        server_sock, client_sock = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=server_sock)
        conn = SpdyConnection(reader, writer, max_pending=spdy.MAX_CONCURRENT_STREAMS)
        conn.start()
        codec = spdy.FrameWriter()
        loop = asyncio.get_running_loop()
        client_sock.setblocking(False)

        async def send(*frames: spdy.Frame) -> None:
            await loop.sock_sendall(client_sock, b"".join(codec.encode(f) for f in frames))
            await asyncio.sleep(0.05)  # read by the connection apart from what follows

        await send(spdy.SynStreamFrame(1, spdy.Headers([("streamtype", "gone")])))
        await send(spdy.RstStreamFrame(1, spdy.RstStatus.CANCEL))
        started = loop.time()
        assert await conn.accept(0.3) is None
        waited = loop.time() - started
        await send(spdy.SynStreamFrame(3, spdy.Headers([("streamtype", "data")])))
        opened = await conn.accept(5)
        assert opened is not None
        await send(*(spdy.SynStreamFrame(5 + 2 * n, spdy.Headers([("streamtype", "data")]))
                     for n in range(100)))
        taken = 0
        while await conn.accept(0.5) is not None:
            taken += 1
        client_sock.close()
        await conn.lost
        await conn.close()
        return waited, opened[0].name, taken

    waited, name, taken = asyncio.run(run())
    assert waited >= 0.25
    assert (name, taken) == ("data", 100)


# -- stream_idle_timeout --------------------------------------------------------------------------


IDLE = 1.0


@pytest.fixture
def idle_server() -> Iterator[StreamServer]:
    backend = LocalBackend()
    s = StreamServer(backend, head_timeout=TIMEOUT, stream_timeout=TIMEOUT, idle_timeout=IDLE)
    s.start()
    try:
        yield s
    finally:
        s.close()
        for process in backend.processes:  # with what they left running in the background
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.proc.pid, 9)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Read until the server closes ``sock``; how long that took (fails after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def _tasks_left(server: StreamServer) -> list[str]:
    """The server loop's tasks (by coroutine name), once they settle (up to 5 s)."""
    async def names() -> list[str]:
        return sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks()
                      if t is not asyncio.current_task())
    loop = server._loop
    assert loop is not None
    deadline = time.monotonic() + 5
    left = asyncio.run_coroutine_threadsafe(names(), loop).result(5)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = asyncio.run_coroutine_threadsafe(names(), loop).result(5)
    return left


def test_an_idle_connection_is_closed_and_its_exec_ended(idle_server: StreamServer) -> None:
    """Nothing either way for stream_idle_timeout: the server closes the connection and the
    session ends as if the client had gone (the exec is killed), over SPDY and WebSocket; the
    session's output copies end with it (none is left to the loop's close)."""
    backend = idle_server.backend
    assert isinstance(backend, LocalBackend)
    # A child in the background keeps the outputs open after the exec is killed: the
    # session's copies of them must end with it all the same.
    script = "sleep 60 & exec sleep 60"
    sock, _, _ = _spdy_session(_exec_url(idle_server, "sh", "-c", script))
    with sock:
        assert _closed_within(sock, 10 * IDLE) >= IDLE * 0.5
    sock, _ = _ws_exec(idle_server, "sh", "-c", script)
    with sock:
        assert _closed_within(sock, 10 * IDLE) >= IDLE * 0.5
    _sessions_ended()
    assert [p.proc.wait(10) for p in backend.processes] == [-9, -9]
    left = _tasks_left(idle_server)
    assert left == []


def test_a_connection_that_carries_output_is_not_idle(idle_server: StreamServer) -> None:
    """Output every IDLE/4 for 3 IDLE keeps the connection: the whole output and the exit
    status arrive."""
    script = f"for i in $(seq 12); do echo $i; sleep {IDLE / 4}; done; exit 3"
    sock, client, streams = _spdy_session(_exec_url(idle_server, "sh", "-c", script))
    with sock:
        sock.settimeout(10)
        got = client.read_all()
    assert got[streams["stdout"]] == b"".join(b"%d\n" % i for i in range(1, 13))
    assert json.loads(got[streams["error"]])["details"]["causes"][0]["message"] == "3"


def test_no_idle_limit_with_zero() -> None:
    server = StreamServer(LocalBackend(), idle_timeout=0)
    server.start()
    try:
        sock, client, streams = _spdy_session(
            _exec_url(server, "sh", "-c", "sleep 1.5; echo done"))
        with sock:
            sock.settimeout(10)
            assert client.read_all()[streams["stdout"]] == b"done\n"
    finally:
        server.close()


def test_a_client_that_stops_reading_is_dropped_when_idle(idle_server: StreamServer) -> None:
    """Output the client never reads fills the connection: nothing moves any more, and once
    idle the server drops it rather than waiting on the client to send its session's end."""
    backend = idle_server.backend
    assert isinstance(backend, LocalBackend)
    sock, _, _ = _spdy_session(_exec_url(idle_server, "yes"))
    with sock:
        time.sleep(3 * IDLE)
        left = _tasks_left(idle_server)
        assert left == []
    assert backend.processes[0].proc.wait(10) == -9


def test_client_pings_keep_a_connection(idle_server: StreamServer) -> None:
    """kubectl keeps a quiet session (an idle shell) with SPDY PINGs: they are traffic."""
    backend = idle_server.backend
    assert isinstance(backend, LocalBackend)
    sock, client, _ = _spdy_session(_exec_url(idle_server, "sleep", "60"))
    with sock:
        for n in range(12):
            sock.sendall(client.writer.encode(spdy.PingFrame(2 * n + 1)))
            time.sleep(IDLE / 4)
        assert backend.processes[0].proc.poll() is None  # 3 IDLE later, still served
    assert backend.processes[0].proc.wait(10) == -9  # the client went: the exec ends
