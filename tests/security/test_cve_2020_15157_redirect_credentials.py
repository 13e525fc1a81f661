"""Registry credentials must not follow a redirect (the CVE-2020-15157 class).

containerd 1.2 sent a registry's credentials to whatever host answered 401 after a redirect
(or a foreign-layer URL) and to the token realm that host named. Berth did the same: a 401 from
a redirect target was taken as the registry's own challenge, so the credentials configured for
registry A went to the realm named by host B.

The rules tested here, each through the path a user takes (``berth login``, ``berth pull``
through berthd, the resolver's blob fetch), against small HTTP servers on 127.0.0.1:

* credentials are chosen by the host that sent the challenge: A's never go to B, nor to a
  token realm that B's challenge names;
* a redirect never carries ``Authorization`` (or the registry's configured headers) to
  another host; a host that challenges us after a redirect gets only what was issued for it;
* an HTTPS request is never redirected to plain HTTP: that is refused with a clear error,
  before the HTTP host is contacted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

import pytest
from daemon import Berthd
from registry import loopback_env
from token_server import HTTPServerThread, Reply, Request, ScriptedServer, self_signed_certificate

from berth import errdefs
from berth.oci import image
from berth.oci.image import Descriptor
from berth.remotes import HostsConfig, RegistryResolver
from berth.remotes.auth import Authorizer, basic_authorization
from berth.remotes.dockerconfig import DockerConfig
from berth.remotes.hosts import RegistryHost
from berth.remotes.origins import authority, follow_redirect, same_origin
from berth.remotes.session import RegistrySession

REPO = Path(__file__).resolve().parents[2]
BERTH = REPO / ".venv" / "bin" / "berth"

USER, PASSWORD = "alice", "registry-A-secret"
STORAGE_TOKEN = "token-for-storage-B"
DIGEST = "sha256:" + "ab" * 32


# -- the cast: registry A, storage host B, token server C ---------------------------------------


def leaked(requests: Iterable[Request]) -> list[str]:
    """Where A's password shows in what a server received (headers, target, body), if anywhere.

    The secret is looked for in the clear and as Basic credentials, so any encoding a client
    might use to pass it on is caught."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    found = []
    for req in requests:
        seen = [req.target, req.body.decode(errors="replace"), *req.headers.values()]
        if any(PASSWORD in part or basic in part for part in seen):
            found.append(f"{req.method} {req.target}")
    return found


def token_server_c() -> ScriptedServer:
    """C: issues ``STORAGE_TOKEN`` to anyone who asks (it is what B's challenge names)."""

    def handle(req: Request) -> Reply:
        if req.path != "/token":
            return Reply(404)
        body = json.dumps({"token": STORAGE_TOKEN, "expires_in": 300}).encode()
        return Reply(200, {"Content-Type": "application/json"}, body)

    return ScriptedServer(handle)


def storage_b(c: ScriptedServer, *, grant: bool, body: bytes = b"") -> ScriptedServer:
    """B: a host a registry redirects to, challenging for a token from C's realm. With
    ``grant`` it serves ``body`` to a request that carries C's token; otherwise it never does."""

    def handle(req: Request) -> Reply:
        if grant and req.headers.get("Authorization") == f"Bearer {STORAGE_TOKEN}":
            return Reply(200, {"Content-Type": "application/octet-stream"}, body)
        challenge = f'Bearer realm="{c.url}/token",service="storage-b",scope="blob:read"'
        return Reply(401, {"WWW-Authenticate": challenge}, b'{"errors":[]}')

    return ScriptedServer(handle)


def registry_a(b: ScriptedServer, *, basic: bool) -> ScriptedServer:
    """A: redirects every GET and HEAD to the same path on B. With ``basic`` it first wants
    A's own Basic credentials (a private registry whose blobs live on a storage host)."""
    expected = basic_authorization(USER, PASSWORD)

    def handle(req: Request) -> Reply:
        if basic and req.headers.get("Authorization") != expected:
            return Reply(401, {"WWW-Authenticate": 'Basic realm="registry-a"'})
        return Reply(307, {"Location": f"{b.url}{req.target}"})

    return ScriptedServer(handle)


def berth_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BERTH), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=loopback_env(env), check=False)


# -- through the user's paths -------------------------------------------------------------------


@pytest.mark.parametrize("grant", [True, False], ids=["b-accepts-its-token", "b-refuses"])
def test_berth_login_never_sends_credentials_to_a_redirect_targets_realm(
        tmp_path: Path, grant: bool) -> None:
    """``berth login A``: A's /v2/ redirects to B, whose challenge names realm C. A's password
    must reach neither B nor C; B gets only the anonymous token C issued for B. When B
    refuses even that, the error says so, and does not call A's credentials rejected."""
    with token_server_c() as c, storage_b(c, grant=grant, body=b"{}") as b, \
            registry_a(b, basic=False) as a:
        result = berth_cli("--address", str(tmp_path / "no.sock"), "login", a.host, "-u", USER,
                           "--password-stdin", stdin=PASSWORD + "\n",
                           env={"DOCKER_CONFIG": str(tmp_path / "docker")})
        assert leaked(c.requests) == [], c.requests
        assert leaked(b.requests) == [], b.requests
        assert c.requests, "B's challenge was never answered"
        assert all("Authorization" not in r.headers for r in c.requests)
        assert {r.headers.get("Authorization") for r in b.requests} <= {
            None, f"Bearer {STORAGE_TOKEN}"}
    if grant:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 1, result
    assert "redirected" in result.stderr and b.host in result.stderr, result.stderr
    assert "rejected the credentials" not in result.stderr, result.stderr
    assert not (tmp_path / "docker" / "config.json").exists()


@pytest.mark.needs_root
def test_berthd_pull_never_sends_credentials_to_a_redirect_targets_realm(
        berthd: Berthd, tmp_path: Path) -> None:
    """``berth pull A/app:v1`` with A's credentials saved: A takes them, then redirects the
    manifest to B, which challenges with realm C and never accepts. The pull fails with one
    clear line naming B; A's credentials went to A only."""
    docker = tmp_path / "docker"
    with token_server_c() as c, storage_b(c, grant=False) as b, \
            registry_a(b, basic=True) as a:
        DockerConfig(docker / "config.json").store(a.host, USER, PASSWORD)
        result = berth_cli("--address", berthd.address, "pull", "--plain-http",
                           f"{a.host}/private/app:v1", env={"DOCKER_CONFIG": str(docker)})
        assert leaked(c.requests) == [], c.requests
        assert leaked(b.requests) == [], b.requests
        assert all("Authorization" not in r.headers for r in c.requests)
        # A did get its own credentials: the redirect happened after A accepted them.
        assert any(r.headers.get("Authorization") == basic_authorization(USER, PASSWORD)
                   for r in a.requests)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unauthorized" in lines[0] and b.host in lines[0] and "redirect" in lines[0], lines


def test_storage_host_with_its_own_challenge_gets_only_its_own_token(tmp_path: Path) -> None:
    """A blob GET that A (Basic auth) redirects to B, which wants a token from C: the blob
    arrives; A's Basic credentials went to A only, C's token to B only."""
    blob = b"layer bytes kept on the storage host"
    desc = Descriptor(image.MEDIA_TYPE_LAYER, "sha256:" + hashlib.sha256(blob).hexdigest(),
                      len(blob))
    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    asked: list[str] = []

    def credentials(host: str) -> tuple[str, str] | None:  # as berthd's: per host
        asked.append(host)
        return (USER, PASSWORD) if host == a.host else None

    with token_server_c() as c, storage_b(c, grant=True, body=blob) as b, \
            registry_a(b, basic=True) as a, \
            RegistryResolver(HostsConfig([certs_d]), credentials, plain_http=True,
                             sleep=lambda _s: None) as r:
        with r.fetcher(f"{a.host}/private/app").fetch(desc) as stream:
            assert stream.read() == blob
        assert sorted(set(asked)) == sorted({a.host, b.host})  # each for its own challenge
        assert leaked([*b.requests, *c.requests]) == []
        assert all("Authorization" not in req.headers for req in c.requests)
        assert {q.headers.get("Authorization") for q in b.requests} <= {
            None, f"Bearer {STORAGE_TOKEN}"}
        assert all(q.headers.get("Authorization") != f"Bearer {STORAGE_TOKEN}"
                   for q in a.requests)


class TLSServer(HTTPServerThread):
    """A ``ScriptedServer`` speaking HTTPS with ``cert``/``key``."""

    def __init__(self, handle: Callable[[Request], Reply], cert: Path, key: Path) -> None:
        super().__init__(handle)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)

    def __enter__(self) -> Self:
        super().__enter__()
        assert self._server is not None
        # Wrapped before any client is given the address: accept() then hands out TLS sockets.
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        return self


def test_https_registry_redirect_to_http_is_refused(tmp_path: Path) -> None:
    """``berth login A`` where A speaks HTTPS and redirects /v2/ to a plain-HTTP host: refused
    with a clear error before the HTTP host hears anything, and nothing is saved."""
    cert, key = self_signed_certificate(tmp_path, "registry-a")
    with ScriptedServer(lambda req: Reply(200, {}, b"{}")) as plain:

        def handle(req: Request) -> Reply:
            if req.headers.get("Authorization") != basic_authorization(USER, PASSWORD):
                return Reply(401, {"WWW-Authenticate": 'Basic realm="registry-a"'})
            return Reply(302, {"Location": f"{plain.url}{req.target}"})

        with TLSServer(handle, cert, key) as a:
            docker = tmp_path / "docker"
            result = berth_cli("--address", str(tmp_path / "no.sock"), "login", a.host, "-u",
                               USER, "--password-stdin", stdin=PASSWORD + "\n",
                               env={"DOCKER_CONFIG": str(docker), "SSL_CERT_FILE": str(cert)})
            assert a.requests, result.stderr  # reached over verified TLS
        assert plain.requests == []
    assert result.returncode == 1, result
    assert "HTTPS" in result.stderr and "plain HTTP" in result.stderr, result.stderr
    assert plain.host in result.stderr, result.stderr
    assert not (docker / "config.json").exists()


def test_https_registry_naming_a_plain_http_token_realm_gets_no_credentials(
        tmp_path: Path) -> None:
    """``berth login A`` where A speaks HTTPS and its bearer challenge names a token realm over
    plain HTTP: the credentials are not sent in clear text (refused with a clear error), and
    the HTTP token server hears nothing."""
    cert, key = self_signed_certificate(tmp_path, "registry-a")
    with ScriptedServer(lambda req: Reply(200, {}, b'{"token":"t"}')) as plain:
        challenge = f'Bearer realm="{plain.url}/token",service="registry-a"'

        def handle(req: Request) -> Reply:
            return Reply(401, {"WWW-Authenticate": challenge})

        with TLSServer(handle, cert, key) as a:
            docker = tmp_path / "docker"
            result = berth_cli("--address", str(tmp_path / "no.sock"), "login", a.host, "-u",
                               USER, "--password-stdin", stdin=PASSWORD + "\n",
                               env={"DOCKER_CONFIG": str(docker), "SSL_CERT_FILE": str(cert)})
            assert a.requests, result.stderr
        assert plain.requests == []
    assert result.returncode == 1, result
    assert "plain HTTP" in result.stderr and "clear text" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (docker / "config.json").exists()


# -- the sans-IO pieces -----------------------------------------------------------------------


def test_follow_redirect_resolves_and_refuses_downgrades() -> None:
    here = "https://r.example/v2/x/blobs/" + DIGEST
    assert follow_redirect(here, "/elsewhere?sig=1") == "https://r.example/elsewhere?sig=1"
    assert follow_redirect(here, "https://s.example/b") == "https://s.example/b"
    assert follow_redirect("http://r.example/v2/", "https://r.example/v2/") == \
        "https://r.example/v2/"  # an upgrade is fine
    assert follow_redirect("http://r.example/v2/", "http://s.example/v2/") == \
        "http://s.example/v2/"  # a plain-HTTP registry may redirect over plain HTTP
    with pytest.raises(errdefs.FailedPrecondition, match=r"HTTPS to plain HTTP") as err:
        follow_redirect(here, "http://s.example/b?sig=secret")
    assert "sig=secret" not in str(err.value)  # signed URLs are not echoed into logs
    with pytest.raises(errdefs.FailedPrecondition, match="not an HTTP"):
        follow_redirect(here, "file:///etc/passwd")


def test_origins_compare_scheme_host_and_effective_port() -> None:
    assert same_origin("https://R.example:443/a", "https://r.example/b")
    assert same_origin("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/x")
    assert not same_origin("https://r.example/a", "http://r.example/a")
    assert not same_origin("https://r.example/a", "https://r.example:5000/a")
    assert not same_origin("https://r.example/a", "https://r.example.evil/a")
    assert not same_origin("https://r.example/a", "https://user@evil/a")
    assert authority("https://S.example:443/b") == "s.example"
    assert authority("http://127.0.0.1:5001/b") == "127.0.0.1:5001"
    assert authority("https://[::1]:5000/b") == "[::1]:5000"
    assert authority("https://user:pw@s.example/b") == "s.example"


def test_absolute_url_that_downgrades_is_refused() -> None:
    """An upload Location (or any absolute URL the session is handed for a registry) that
    would move from the registry's HTTPS to plain HTTP is refused before anything is sent.
    (Port 1 on loopback: nothing listens there, so a request that went out would fail
    differently.)"""
    session = RegistrySession(Authorizer(lambda host: (USER, PASSWORD)))
    host = RegistryHost("https", "127.0.0.1:1")
    try:
        with pytest.raises(errdefs.FailedPrecondition, match="plain HTTP"):
            session.request("PUT", host, f"http://127.0.0.1:1/v2/x/blobs/uploads/1?d={DIGEST}",
                            body=b"blob", retry=False)
    finally:
        session.close()
