"""Registry answers are read with a bound (a denial-of-service class).

Berth read the answers to push and login requests whole into memory: a registry (or anyone
who can answer for it) could send an endless body and exhaust berthd's memory, or the
``berth login`` process's. Every registry response body Berth keeps in memory now has a bound:

* answers that carry no content Berth needs (push, login, HEAD): ``MAX_RESPONSE_BODY`` (1 MiB);
  more is a ``ResourceExhausted`` saying what was too large and what the limit is;
* token responses: ``MAX_TOKEN_RESPONSE`` (1 MiB), the same error;
* error bodies: only the first ``MAX_ERROR_BODY`` bytes are read (for the message); the
  connection is dropped rather than drained, and the error is the status's own;
* manifests: ``MAX_MANIFEST_SIZE`` (4 MiB), as before (tests/test_remotes.py covers them).

Each test floods from a small HTTP server on 127.0.0.1 that counts what it managed to send
before the client hung up: a bounded reader stops it after about the bound (plus what the
kernel's socket buffers swallow), a whole read takes all of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from registry import loopback_env

from berth import errdefs
from berth.oci import image
from berth.oci.image import Descriptor
from berth.remotes import HostsConfig, RegistryResolver
from berth.remotes.errors import MAX_ERROR_BODY, too_large
from berth.remotes.session import MAX_RESPONSE_BODY, MAX_TOKEN_RESPONSE

REPO = Path(__file__).resolve().parents[2]
BERTH = REPO / ".venv" / "bin" / "berth"

FLOOD = 64 << 20  # what a flooding server offers; a whole read takes all of it
# What a bounded reader may let through: the bound, plus the loopback socket buffers that a
# server fills before it notices the reader is gone.
SENT_AT_MOST = 16 << 20
LIMIT_WORDS = "larger than the 1048576-byte (1 MiB) limit"


# -- a server that floods -----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    flood: int = 0  # filler bytes after `body`
    send_length: bool = True  # False: no Content-Length; the body ends when the connection does


class FloodServer:
    """``handle(method, path) -> Answer`` served on 127.0.0.1 from a thread. ``sent[path]`` is
    how many body bytes the answers to ``path`` got out before the client hung up."""

    def __init__(self, handle: Callable[[str, str], Answer]) -> None:
        self.handle = handle
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def sent_to(self, prefix: str) -> int:
        with self._lock:
            return max((n for p, n in self.sent.items() if p.startswith(prefix)), default=0)

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def __enter__(self) -> Self:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                with outer._lock:
                    outer.requests.append((self.command, path))
                answer = outer.handle(self.command, path)
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if answer.send_length:
                    self.send_header("Content-Length", str(len(answer.body) + answer.flood))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command == "HEAD":
                    return
                chunk = b"x" * (64 << 10)
                try:
                    self.wfile.write(answer.body)
                    outer._count(path, len(answer.body))
                    left = answer.flood
                    while left > 0:
                        piece = chunk[: min(left, len(chunk))]
                        self.wfile.write(piece)
                        outer._count(path, len(piece))
                        left -= len(piece)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading: as it should

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def berth_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BERTH), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=loopback_env(env), check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def login(server: FloodServer, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return berth_cli("--address", str(tmp_path / "no.sock"), "login", server.host, "-u", "u",
                     "--password-stdin", stdin="pw\n",
                     env={"DOCKER_CONFIG": str(tmp_path / "docker")})


# -- berth login --------------------------------------------------------------------------------


@pytest.mark.parametrize("send_length", [False, True], ids=["endless", "announced"])
def test_berth_login_refuses_an_oversized_answer(tmp_path: Path, send_length: bool) -> None:
    """``GET /v2/`` answered 200 with a flood: refused once past 1 MiB (or at once, when the
    Content-Length says so), with the limit in the message; nothing is saved."""
    with FloodServer(lambda m, p: Answer(200, flood=FLOOD, send_length=send_length)) as server:
        result = login(server, tmp_path)
        sent = server.sent_to("/v2/")
    line = one_error_line(result)
    assert LIMIT_WORDS in line and "GET" in line and server.host in line, line
    assert sent < SENT_AT_MOST, f"{sent} bytes were taken in"
    assert not (tmp_path / "docker" / "config.json").exists()


@pytest.mark.parametrize("send_length", [False, True], ids=["endless", "announced"])
def test_berth_login_refuses_an_oversized_token_response(
        tmp_path: Path, send_length: bool) -> None:
    """The registry's token server answers with a flood: the error names the token response
    and the limit."""
    holder: dict[str, str] = {}

    def handle(method: str, path: str) -> Answer:
        if path == "/token":
            return Answer(200, {"Content-Type": "application/json"}, b'{"token": "',
                          flood=FLOOD, send_length=send_length)
        challenge = f'Bearer realm="{holder["url"]}/token",service="flood"'
        return Answer(401, {"WWW-Authenticate": challenge})

    with FloodServer(handle) as server:
        holder["url"] = server.url
        result = login(server, tmp_path)
        sent = server.sent_to("/token")
    line = one_error_line(result)
    assert "the token response" in line and LIMIT_WORDS in line, line
    assert sent < SENT_AT_MOST, f"{sent} bytes were taken in"


def test_token_response_over_the_bound_is_resource_exhausted(tmp_path: Path) -> None:
    """Through the resolver berthd uses: a token flood is ResourceExhausted (not Unavailable:
    asking again would only bring the same flood), and it is not asked for again."""
    holder: dict[str, str] = {}

    def handle(method: str, path: str) -> Answer:
        if path == "/token":
            return Answer(200, {}, b"{", flood=MAX_TOKEN_RESPONSE + 1, send_length=False)
        return Answer(401, {"WWW-Authenticate": f'Bearer realm="{holder["url"]}/token"'})

    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    with FloodServer(handle) as server, RegistryResolver(
            HostsConfig([certs_d]), plain_http=True, sleep=lambda _s: None) as r:
        holder["url"] = server.url
        with pytest.raises(errdefs.ResourceExhausted, match="the token response"):
            r.resolve(f"{server.host}/flood/app:v1")
        assert server.requests.count(("GET", "/token")) == 1


# -- push ---------------------------------------------------------------------------------------


def pushing_registry(upload_answer: Callable[[], Answer]) -> FloodServer:
    """A registry that takes pushes; ``upload_answer`` is its answer to starting an upload."""

    def handle(method: str, path: str) -> Answer:
        if method == "HEAD":
            return Answer(404)
        if method == "POST" and path.endswith("/blobs/uploads/"):
            return upload_answer()
        if method == "PUT" and "/blobs/uploads/" in path:
            return Answer(201)
        if method == "PUT" and "/manifests/" in path:
            return Answer(201)
        return Answer(404)

    return FloodServer(handle)


def flooded_upload() -> Answer:
    return Answer(202, {"Location": "/v2/flood/box/blobs/uploads/u1"}, flood=FLOOD,
                  send_length=False)


@pytest.mark.needs_root
def test_berthd_push_refuses_an_oversized_answer(
        berthd: Berthd, busybox_image: ImageInfo, tmp_path: Path) -> None:
    """``berth push`` through berthd to a registry whose answer to starting an upload is a
    flood: berthd stops reading after 1 MiB and the push fails with the limit named."""
    Ctr(berthd.address)("images", "pull", "--plain-http", busybox_image.ref)
    with pushing_registry(flooded_upload) as server:
        result = berth_cli("--address", berthd.address, "push", "--plain-http", "--ref",
                           f"{server.host}/flood/box:1", busybox_image.ref,
                           env={"DOCKER_CONFIG": str(tmp_path / "docker")})
        sent = server.sent_to("/v2/flood/box/blobs/uploads/")
    line = one_error_line(result)
    assert LIMIT_WORDS in line and "POST" in line, line
    assert sent < SENT_AT_MOST, f"{sent} bytes were taken in"
    assert not any(m == "PUT" and "/manifests/" in p for m, p in server.requests)


def test_error_body_is_read_with_a_bound(tmp_path: Path) -> None:
    """A manifest PUT refused with an endless error body: the error is the status's own
    (InvalidArgument for 400), with the registry's words, and the body was not drained."""
    manifest = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    desc = Descriptor(image.MEDIA_TYPE_MANIFEST, "sha256:" + hashlib.sha256(manifest).hexdigest(),
                      len(manifest))

    def handle(method: str, path: str) -> Answer:
        detail = b'{"errors": [{"code": "MANIFEST_INVALID", "message": "no"}]}'
        return Answer(400, {"Content-Type": "application/json"}, detail + b" " * 10,
                      flood=FLOOD, send_length=False)

    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    with FloodServer(handle) as server, RegistryResolver(
            HostsConfig([certs_d]), plain_http=True, sleep=lambda _s: None) as r:
        with pytest.raises(errdefs.InvalidArgument, match="MANIFEST_INVALID"):
            r.pusher(f"{server.host}/flood/app").push(desc, lambda: io.BytesIO(manifest), "v1")
        sent = server.sent_to("/v2/flood/app/manifests/")
    assert sent < SENT_AT_MOST, f"{sent} bytes were taken in"


# -- sans-IO ------------------------------------------------------------------------------------


def test_too_large_names_what_where_and_the_limit() -> None:
    err = too_large("the token response", "token server t.example", MAX_TOKEN_RESPONSE)
    assert isinstance(err, errdefs.ResourceExhausted)
    assert errdefs.code_of(err) is errdefs.Code.RESOURCE_EXHAUSTED
    assert str(err) == (
        "the token response from token server t.example is larger than the 1048576-byte "
        "(1 MiB) limit for it; refusing to read more"
    )
    assert "(64 KiB)" in str(too_large("x", "y", MAX_ERROR_BODY))
    assert "(1000 bytes)" in str(too_large("x", "y", 1000))
    assert MAX_RESPONSE_BODY == 1 << 20
