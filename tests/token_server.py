"""Loopback servers for the registry client's tests: a token auth server, a docker-registry
with any extra configuration (token auth, TLS), and a scripted fake registry.

* `TokenServer`: the distribution spec's token endpoint (`GET /token?service=&scope=` with
  optional Basic credentials, `POST /token` with an OAuth2 refresh-token grant), issuing JWTs
  that docker-registry accepts: RS256, signed by a key whose self-signed certificate is in the
  registry's `rootcertbundle` and travels in the JWT header's `x5c` (see distribution's
  `registry/auth/token/token.go`: x5c is verified against the root bundle; the claims must
  carry the configured issuer as `iss`, the service as `aud`, and the grants in `access`).
  Signing uses the `openssl` CLI, so no Python crypto package is needed.
* `ConfiguredRegistry`: `registry.Registry` with extra configuration merged in (`auth.token`,
  `http.tls`), reusing its start/stop/port handling.
* `ScriptedServer`: a threaded HTTP server that answers with a Python function, for what a real
  registry will not do (oversized manifests, ignored ranges, 503s, redirects, cut bodies).

Everything listens on 127.0.0.1 only and is stopped by its `with` block.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from registry import Registry

OPENSSL = "/usr/bin/openssl"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _run(cmd: list[str], data: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def self_signed_certificate(directory: Path, name: str, *, rsa: bool = False) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for CN=`name`, valid for IP 127.0.0.1 and localhost, made with
    openssl. EC keys are quicker to make; `rsa=True` gives the RS256 signing key we need."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    newkey = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt",
                                                   "ec_paramgen_curve:prime256v1"]  # fmt: skip
    _run(
        [
            OPENSSL, "req", "-x509", *newkey, "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ]
    )  # fmt: skip
    return cert, key


# -- HTTP plumbing ---------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    target: str = ""  # the request line's target, as sent


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    send_length: bool = True  # False: no Content-Length, the body ends when the connection does


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HTTPServerThread:
    """`handle(Request) -> Reply` served on 127.0.0.1:<free port> from a thread; every request
    is recorded in `requests`."""

    def __init__(self, handle: Callable[[Request], Reply]) -> None:
        self.handle = handle
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        assert self._server is not None, "server not started"
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> Self:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers),
                    body,
                    self.path,
                )
                with outer._lock:
                    outer.requests.append(request)
                reply = outer.handle(request)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.send_length:
                    self.send_header("Content-Length", str(len(reply.body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.cut_after is not None:
                    self.wfile.write(reply.body[: reply.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)
                if not reply.send_length:
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = _Server(("127.0.0.1", 0), Handler)
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


ScriptedServer = HTTPServerThread


# -- the token server ------------------------------------------------------------------------


class TokenServer(HTTPServerThread):
    """A token endpoint at `/token` for docker-registry's `auth.token`.

    `users` maps user -> password (Basic on GET); `refresh_tokens` maps an identity token ->
    user (POST grant_type=refresh_token). Authenticated users get every action they ask for;
    anonymous requests get `anonymous_actions` (none by default). Wrong credentials are
    answered 401. Issued token requests are recorded in `issued` as (user, scopes).
    """

    service = "berth-test-registry"
    issuer = "berth-test-issuer"

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        refresh_tokens: Mapping[str, str] | None = None,
        anonymous_actions: Iterable[str] = (),
        expires_in: int = 300,
    ) -> None:
        super().__init__(self._handle)
        self.users = dict(users)
        self.refresh_tokens = dict(refresh_tokens or {})
        self.anonymous_actions = tuple(anonymous_actions)
        self.expires_in = expires_in
        self.issued: list[tuple[str, list[str]]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="berth-token-"))
        self.cert, self.key = self_signed_certificate(self._dir, "token-issuer", rsa=True)
        pem = self.cert.read_text()
        self._x5c = "".join(pem.split("-----")[2].split())  # the DER, base64, as PEM holds it

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_config(self) -> dict[str, object]:
        """The `auth` section for docker-registry's configuration."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert),
            }
        }

    def _handle(self, request: Request) -> Reply:
        if request.path != "/token":
            return Reply(404)
        if request.method == "POST":
            form = parse_qs(request.body.decode())
            if form.get("grant_type") != ["refresh_token"]:
                return Reply(400, body=b'{"error": "unsupported_grant_type"}')
            user = self.refresh_tokens.get(form.get("refresh_token", [""])[0])
            if user is None:
                return Reply(401, body=b'{"error": "invalid_grant"}')
            scopes = form.get("scope", [""])[0].split()
            service = form.get("service", [""])[0]
        elif request.method == "GET":
            user = self._basic_user(request.headers.get("Authorization", ""))
            if user is False:
                return Reply(401, {"WWW-Authenticate": 'Basic realm="token"'})
            scopes = request.query.get("scope", [])
            service = request.query.get("service", [""])[0]
        else:
            return Reply(405)
        if service != self.service:
            return Reply(400, body=b'{"error": "unknown service"}')
        with self._lock:
            self.issued.append((user or "", scopes))
        token = self.sign(user or "", scopes)
        body = {"token": token, "access_token": token, "expires_in": self.expires_in}
        return Reply(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _basic_user(self, header: str) -> str | bool | None:
        """The user of valid Basic credentials, None when there are none, False when wrong."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user if self.users.get(user) == password else False

    def sign(self, user: str, scopes: Iterable[str]) -> str:
        """A JWT granting `user` the scopes it asked for (anonymous: `anonymous_actions`)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            granted = wanted if user else [a for a in wanted if a in self.anonymous_actions]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = _run(
            [OPENSSL, "dgst", "-sha256", "-sign", str(self.key)], signing_input.encode()
        )
        return f"{signing_input}.{_b64url(signature)}"


# -- docker-registry with extra configuration ------------------------------------------------


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class ConfiguredRegistry(Registry):
    """A `Registry` whose configuration gets `extra` merged in (e.g. `{"auth": {...}}`).

    With `tls=(cert, key)` it serves HTTPS; `url` and the readiness probe follow.
    """

    def __init__(
        self,
        extra: Mapping[str, Any] | None = None,
        *,
        tls: tuple[Path, Path] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.extra = dict(extra or {})
        self.tls = tls
        if tls is not None:
            _merge(self.extra, {"http": {"tls": {"certificate": str(tls[0]), "key": str(tls[1])}}})

    def _write_config(self, htpasswd: Path | None) -> Path:
        path = super()._write_config(htpasswd)
        config = json.loads(path.read_text())
        _merge(config, self.extra)
        path.write_text(json.dumps(config, indent=2))
        return path

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        credentials: tuple[str, str] | bool | None = True,
        timeout: float = 30.0,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if self.tls is None:
            return super().request(path, method=method, headers=headers,
                                   credentials=credentials, timeout=timeout, data=data)
        if data is not None:
            raise ValueError("a request body is only sent to a plain-HTTP registry")
        # Only the readiness probe and test assertions come here: skip verification.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method)
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers.items()), err.read()
