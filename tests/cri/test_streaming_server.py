"""The streaming server's HTTP edge and its bad input, in process: tokens (unknown, reused,
expired, too many), requests that are not upgrades or offer no protocol it speaks, garbage
instead of SPDY, and clients that connect and go silent. Each ends cleanly: an HTTP error or a
closed connection, no process started, no thread left. The processes behind it are real ones
(``subprocess``), and the SPDY client is built from the sans-IO codec; real Go clients (kubectl)
drive it against berthd in test_streaming_reference.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.streaming import spdy
from berth.cri.streaming.server import StreamServer
from berth.cri.streaming.tokens import Tokens

TIMEOUT = 0.5


class LocalProcess:
    """A real process on this host standing in for a container's (the server's contract)."""

    session = None
    stdin_once = True

    def __init__(self, request: pb.ExecRequest) -> None:
        self.proc = subprocess.Popen(list(request.cmd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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

    def exec_process(self, request: pb.ExecRequest) -> LocalProcess:
        self.started += 1
        return LocalProcess(request)

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
