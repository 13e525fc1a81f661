"""Sans-IO tests of berth.remotes: references, hosts.toml, auth challenges and tokens, docker
config files. Nothing here opens a socket."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from berth import errdefs
from berth.remotes import auth, reference
from berth.remotes.auth import Authorizer, Challenge, Prepared, parse_challenges
from berth.remotes.dockerconfig import DockerConfig, default_config_path
from berth.remotes.hosts import HostsConfig, RegistryHost, is_loopback

DIGEST = "sha256:" + "ab" * 32

# -- references --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "host", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", ""),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", ""),
        ("library/busybox", "docker.io", "library/busybox", "latest", ""),
        ("user/app", "docker.io", "user/app", "latest", ""),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", ""),
        ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", ""),
        ("localhost/app", "localhost", "app", "latest", ""),
        ("localhost:5000/app:x", "localhost:5000", "app", "x", ""),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", ""),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", ""),
        ("Registry.Example.com/app", "Registry.Example.com", "app", "latest", ""),
        ("ghcr.io/o/r@" + DIGEST, "ghcr.io", "o/r", "", DIGEST),
        ("ghcr.io/o/r:v2@" + DIGEST, "ghcr.io", "o/r", "v2", DIGEST),
        ("a.b/x__y.z-w---v:T_1.2-3", "a.b", "x__y.z-w---v", "T_1.2-3", ""),
    ],
)
def test_reference_normalization(
    ref: str, host: str, repository: str, tag: str, digest: str
) -> None:
    parsed = reference.parse(ref)
    assert (parsed.host, parsed.repository, parsed.tag, parsed.digest) == (
        host,
        repository,
        tag,
        digest,
    )
    assert parsed.object == (digest or tag)
    assert reference.parse(str(parsed)) == parsed  # the normal form is a fixed point


def test_reference_strings() -> None:
    ref = reference.parse("busybox")
    assert str(ref) == "docker.io/library/busybox:latest"
    assert ref.name == "docker.io/library/busybox"
    assert ref.familiar() == "busybox:latest"
    pinned = reference.parse(f"127.0.0.1:5000/x/y:t@{DIGEST}")
    assert str(pinned) == f"127.0.0.1:5000/x/y:t@{DIGEST}"
    assert pinned.object == DIGEST
    assert pinned.with_tag("u") == reference.parse("127.0.0.1:5000/x/y:u")
    assert reference.parse("r.io/x", default_tag=False).object == ""


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox:", "tag"),
        ("busybox:-x", "tag"),
        ("busybox:" + "t" * 129, "tag"),
        ("busybox@sha256:abc", "digest"),
        ("busybox@sha512:" + "a" * 128, "only sha256"),
        ("busybox@" + "a" * 64, "digest"),
        ("a" * 64, "image ID"),
        ("my image", "whitespace"),
        ("r.io/a//b", "not valid"),
        ("r.io/-a", "not valid"),
        ("r.io/a_", "not valid"),
        ("-r.io/a", "registry host"),
        ("r.io:port/a", "registry host"),
        ("r.io/" + "a" * 260, "longer than 255"),
        (":tag", "missing"),
    ],
)
def test_reference_errors(ref: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        reference.parse(ref)


# -- hosts.toml --------------------------------------------------------------------------------


def write_hosts(root: Path, registry: str, text: str) -> Path:
    directory = root / registry
    directory.mkdir(parents=True)
    (directory / "hosts.toml").write_text(text)
    return directory


def test_hosts_default_without_configuration(tmp_path: Path) -> None:
    config = HostsConfig([tmp_path / "missing"])
    assert config.hosts("docker.io") == [RegistryHost("https", "registry-1.docker.io")]
    assert config.hosts("r.example.com:5000") == [RegistryHost("https", "r.example.com:5000")]
    (local,) = config.hosts("127.0.0.1:5000")
    assert (local.scheme, local.http_fallback) == ("https", True)
    (plain,) = config.with_plain_http().hosts("r.example.com")
    assert (plain.scheme, plain.url) == ("http", "http://r.example.com/v2")
    # Docker Hub's address is fixed: plain_http does not apply to it.
    assert config.with_plain_http().hosts("docker.io")[0].scheme == "https"


def test_hosts_toml_mirrors_in_file_order(tmp_path: Path) -> None:
    directory = write_hosts(
        tmp_path,
        "docker.io",
        """
server = "https://registry-1.docker.io"
ca = "root.pem"

[host."https://zz-mirror.example.com:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."https://zz-mirror.example.com:5000".header]
    x-mirror = "1"
    x-list = ["a", "b"]

[host."http://aa-mirror.local/prefix"]
  capabilities = ["pull"]

[host."https://custom.example.com/custom/api"]
  override_path = true
  client = ["c.cert", "/abs/c.key"]
""",
    )
    hosts = HostsConfig([tmp_path]).hosts("docker.io")
    assert [h.url for h in hosts] == [
        "https://zz-mirror.example.com:5000/v2",
        "http://aa-mirror.local/prefix/v2",
        "https://custom.example.com/custom/api",
        "https://registry-1.docker.io/v2",
    ]
    zz, aa, custom, origin = hosts
    assert zz.capabilities == {"pull", "resolve"} and zz.is_mirror
    assert zz.skip_verify and zz.headers == {"x-mirror": ("1",), "x-list": ("a", "b")}
    assert aa.capabilities == {"pull"}
    assert custom.client == (str(directory / "c.cert"), "/abs/c.key")
    assert not custom.is_mirror  # default capabilities include push
    assert origin.ca == (str(directory / "root.pem"),)
    assert not any(h.http_fallback for h in hosts)


def test_hosts_toml_without_server_keeps_origin_settings(tmp_path: Path) -> None:
    write_hosts(tmp_path, "127.0.0.1:5000", 'skip_verify = true\n[header]\nx-a = "b"\n')
    (origin,) = HostsConfig([tmp_path]).hosts("127.0.0.1:5000")
    assert origin.host == "127.0.0.1:5000" and origin.scheme == "https"
    assert origin.skip_verify and origin.headers == {"x-a": ("b",)}
    assert not origin.http_fallback  # TLS settings were written down: no downgrade


def test_hosts_default_directory_and_roots_order(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_hosts(first, "_default", 'server = "http://fallback.local:1"\n')
    write_hosts(second, "r.io", 'server = "https://r-from-second.local"\n')
    config = HostsConfig([first, second])
    # The first root with a directory (its own or _default) wins, as in containerd's CRI.
    assert [h.url for h in config.hosts("r.io")] == ["http://fallback.local:1/v2"]
    assert [h.url for h in HostsConfig([second]).hosts("r.io")] == [
        "https://r-from-second.local/v2"
    ]


def test_hosts_docker_cert_layout(tmp_path: Path) -> None:
    directory = tmp_path / "r.io"
    directory.mkdir()
    for name in ("b.crt", "a.crt", "client.cert", "client.key"):
        (directory / name).write_text("x")
    (host,) = HostsConfig([tmp_path]).hosts("r.io")
    assert host.ca == (str(directory / "a.crt"), str(directory / "b.crt"))
    assert host.client == (str(directory / "client.cert"), str(directory / "client.key"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = [", "not valid TOML"),
        ('[host."https://m"]\ncapabilities = ["pull", "fly"]', "unknown capabilities"),
        ('[host."https://m"]\nskip_verify = "yes"', "skip_verify"),
        ('[host."https://m"]\nca = 3', "ca must be"),
        ("colour = 1", "unknown keys"),
        ('client = [["a", "b"], ["c", "d"]]', "several are not supported"),
        ('server = "https://m?x=1"', "not a server URL"),
    ],
)
def test_hosts_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    write_hosts(tmp_path, "r.io", text)
    with pytest.raises(errdefs.InvalidArgument, match=message):
        HostsConfig([tmp_path]).hosts("r.io")


def test_is_loopback() -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]:5000", "::1"):
        assert is_loopback(host), host
    for host in ("example.com", "10.0.0.1:5000", "[2001:db8::1]:5000", "localhost.example"):
        assert not is_loopback(host), host


# -- challenges ----------------------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    (c,) = parse_challenges(
        [
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"'
        ]
    )
    assert c == Challenge(
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/busybox:pull",
        },
    )


def test_parse_multiple_challenges_quoted_commas_and_escapes() -> None:
    challenges = parse_challenges(
        [
            'Bearer realm="https://a/t", scope="repository:x:pull,push", '
            'error="insufficient_scope", Basic realm="say \\"hi\\", ok"',
            'Negotiate abc==, Digest realm="d", nonce=XYZ',
            "BASIC Realm=plain",
        ]
    )
    assert [c.scheme for c in challenges] == ["bearer", "basic", "negotiate", "digest", "basic"]
    assert challenges[0].params == {
        "realm": "https://a/t",
        "scope": "repository:x:pull,push",
        "error": "insufficient_scope",
    }
    assert challenges[1].params == {"realm": 'say "hi", ok'}
    assert challenges[2].params == {"token68": "abc=="}
    assert challenges[3].params == {"realm": "d", "nonce": "XYZ"}
    assert challenges[4].params == {"realm": "plain"}


def test_parse_challenges_tolerates_garbage() -> None:
    assert parse_challenges(["", " , ,", '"', "="]) == []
    (c,) = parse_challenges(['Bearer realm="https://a/t'])  # unterminated quote
    assert c.params == {"realm": "https://a/t"}


def test_merge_scopes() -> None:
    assert auth.merge_scopes(
        ["repository:b:push", "repository:a:pull", "repository:b:pull", "registry:catalog:*"]
    ) == ("registry:catalog:*", "repository:a:pull", "repository:b:pull,push")
    assert auth.merge_scopes(["repository:a:pull repository:c:pull", ""]) == (
        "repository:a:pull",
        "repository:c:pull",
    )
    assert auth.merge_scopes(["odd"]) == ("odd",)


# -- token requests and responses --------------------------------------------------------------

BEARER = Challenge("bearer", {"realm": "https://auth.example/token?x=1", "service": "reg"})


def test_token_request_anonymous_and_basic() -> None:
    scopes = ["repository:a/b:pull", "repository:c:pull"]
    anonymous = auth.token_request(BEARER, scopes, None)
    assert anonymous.method == "GET" and "Authorization" not in anonymous.headers
    parts = urlsplit(anonymous.url)
    assert parse_qs(parts.query) == {"x": ["1"], "service": ["reg"], "scope": scopes}
    basic = auth.token_request(BEARER, scopes, ("u", "p:w"))
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p:w").decode()


def test_token_request_identity_token_posts_refresh_grant() -> None:
    req = auth.token_request(BEARER, ["repository:a:pull,push"], ("", "refresh-me"))
    assert req.method == "POST" and req.url == BEARER.params["realm"]
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert req.body is not None
    assert parse_qs(req.body.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["refresh-me"],
        "service": ["reg"],
        "client_id": ["berth"],
        "scope": ["repository:a:pull,push"],
    }


def test_token_request_needs_a_realm() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="realm"):
        auth.token_request(Challenge("bearer", {"realm": "/relative"}), [], None)


def test_parse_token_response() -> None:
    token = auth.parse_token_response(b'{"token": "t1", "expires_in": 300}', now=1000.0)
    assert (token.value, token.expires_at) == ("t1", 1300.0)
    both = auth.parse_token_response(
        b'{"token": "t", "access_token": "a", "refresh_token": "r"}', now=0.0
    )
    assert (both.value, both.expires_at, both.refresh_token) == ("a", 60.0, "r")
    short = auth.parse_token_response(b'{"token": "t", "expires_in": 5}', now=0.0)
    assert short.expires_at == 60.0  # the spec's minimum
    for bad in (b"not json", b"[]", b'{"expires_in": 60}', b'{"token": ""}'):
        with pytest.raises(errdefs.Unavailable):
            auth.parse_token_response(bad, now=0.0)


def test_token_cache_expiry() -> None:
    cache = auth.TokenCache(margin=5.0)
    key: auth.TokenKey = ("h", "r", "s", ("repository:a:pull",))
    cache.put(key, auth.Token("t", expires_at=100.0))
    assert cache.get(key, now=94.0) is not None
    assert cache.get(key, now=95.0) is None  # refreshed early, never used at the edge
    assert cache.get(key, now=0.0) is None  # and forgotten


# -- the authorizer state machine --------------------------------------------------------------

CHALLENGE = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'


def test_authorizer_bearer_flow_and_cache() -> None:
    asked: list[str] = []

    def creds(host: str) -> tuple[str, str] | None:
        asked.append(host)
        return ("u", "p")

    authz = Authorizer(creds)
    first = authz.prepare("r.io", ["repository:a:pull"], now=0.0)
    assert first == Prepared()  # nothing known yet: anonymous
    extra = authz.challenged("r.io", [CHALLENGE], first)
    assert extra == ("repository:a:pull",)
    second = authz.prepare("r.io", ["repository:a:pull"], now=0.0)
    assert second.token_request is not None and second.key is not None
    assert second.token_request.headers["Authorization"].startswith("Basic ")
    header = authz.token_received(second.key, b'{"token": "T", "expires_in": 120}', now=0.0)
    assert header == "Bearer T"
    # Later requests for the same scope reuse the token until it nears expiry.
    cached = authz.prepare("r.io", ["repository:a:pull"], now=100.0)
    assert cached.header == "Bearer T"
    assert authz.prepare("r.io", ["repository:a:pull"], now=116.0).token_request is not None
    # Another repository needs its own token, and the old challenge's scope does not leak in.
    other = authz.prepare("r.io", ["repository:b:pull"], now=0.0)
    assert other.token_request is not None
    assert "repository%3Aa" not in other.token_request.url
    assert asked == ["r.io"]  # credentials asked once per host


def test_authorizer_gives_up_when_retrying_cannot_help() -> None:
    authz = Authorizer(None)
    sent = authz.prepare("r.io", [], now=0.0)
    # Basic without credentials: no point in retrying.
    assert authz.challenged("r.io", ['Basic realm="x"'], sent) is None
    # Unknown schemes only.
    assert authz.challenged("r.io", ["Negotiate abc=="], sent) is None
    # A bearer token that already covered the scope the server insists on.
    assert authz.challenged("r.io", [CHALLENGE], sent) is not None
    token = authz.prepare("r.io", ["repository:a:pull"], now=0.0)
    assert token.key is not None
    authz.token_received(token.key, b'{"token": "T"}', now=0.0)
    with_token = authz.prepare("r.io", ["repository:a:pull"], now=0.0)
    denied = CHALLENGE + ',error="insufficient_scope"'
    assert authz.challenged("r.io", [denied], with_token) is None
    # ...but widening is worth one more try when the server names a scope we lacked.
    wider = 'Bearer realm="https://auth.example/token",scope="repository:b:pull",error="insufficient_scope"'
    assert authz.challenged("r.io", [wider], with_token) == ("repository:b:pull",)


def test_authorizer_basic() -> None:
    authz = Authorizer(lambda host: ("u", "p") if host == "r.io" else None)
    assert authz.challenged("r.io", ['Basic realm="r"'], Prepared()) == ()
    sent = authz.prepare("r.io", [], now=0.0)
    assert sent.header == auth.basic_authorization("u", "p")
    assert authz.challenged("r.io", ['Basic realm="r"'], sent) is None  # rejected credentials
    # An identity token cannot answer Basic.
    token_only = Authorizer(lambda host: ("", "tok"))
    assert token_only.challenged("r.io", ['Basic realm="r"'], Prepared()) is None


# -- docker config -------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_config_read(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
                    "r.example.com": {"username": "u", "password": "p"},
                    "https://tok.example.com/v2/": {"auth": b64("x:y"), "identitytoken": "IT"},
                    "empty.example.com": {},
                },
                "proxies": {"default": {}},
            }
        )
    )
    config = DockerConfig(path)
    assert config("docker.io") == ("hub", "pw:with:colons")
    assert config("registry-1.docker.io") == ("hub", "pw:with:colons")
    assert config("r.example.com") == ("u", "p")
    assert config("tok.example.com") == ("", "IT")
    assert config("empty.example.com") is None
    assert config("other.example.com") is None
    assert DockerConfig(tmp_path / "missing.json")("docker.io") is None


def test_docker_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(errdefs.InvalidArgument, match="not valid JSON"):
        DockerConfig(path)("r.io")
    path.write_text(json.dumps({"auths": {"r.io": {"auth": "!!!"}}}))
    with pytest.raises(errdefs.InvalidArgument, match="base64"):
        DockerConfig(path)("r.io")
    path.write_text(json.dumps({"auths": {"r.io": {"auth": b64("nocolon")}}}))
    with pytest.raises(errdefs.InvalidArgument, match="':'"):
        DockerConfig(path)("r.io")


def test_docker_config_store_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    config = DockerConfig(path)
    config.store("docker.io", "hub", "secret")
    config.store("127.0.0.1:5000", "", "identity")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["auths"]["https://index.docker.io/v1/"] == {"auth": b64("hub:secret")}
    assert doc["auths"]["127.0.0.1:5000"] == {"identitytoken": "identity"}
    assert config("registry-1.docker.io") == ("hub", "secret")
    # Other keys survive, and a login replaces every entry naming the same registry.
    doc["credsStore_comment"] = "kept"
    doc["auths"]["index.docker.io"] = {"auth": b64("old:old")}
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    config.store("docker.io", "new", "pw")
    doc = json.loads(path.read_text())
    assert doc["credsStore_comment"] == "kept"
    assert [k for k in doc["auths"] if "docker.io" in k] == ["https://index.docker.io/v1/"]
    assert config.remove("docker.io") is True
    assert config.remove("docker.io") is False
    assert config("docker.io") is None
    assert config("127.0.0.1:5000") == ("", "identity")
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]  # no temp files
    with pytest.raises(errdefs.InvalidArgument):
        config.store("r.io", "a:b", "pw")


def test_docker_config_writes_through_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "config.json"
    link.symlink_to(real)
    DockerConfig(link).store("r.io", "u", "p")
    assert link.is_symlink()
    assert json.loads(real.read_text())["auths"]["r.io"] == {"auth": b64("u:p")}


def test_docker_config_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'case "$server" in\n'
        '  helped.example.com) echo \'{"ServerURL":"x","Username":"hu","Secret":"hs"}\' ;;\n'
        '  token.example.com) echo \'{"Username":"<token>","Secret":"ht"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credHelpers": {"helped.example.com": "fake"}}))
    config = DockerConfig(path)
    assert config("helped.example.com") == ("hu", "hs")
    path.write_text(json.dumps({"credsStore": "fake", "auths": {"r.io": {"auth": b64("a:b")}}}))
    assert config("r.io") == ("a", "b")  # an auths entry comes before the store
    assert config("token.example.com") == ("", "ht")
    assert config("unknown.example.com") is None
    path.write_text(json.dumps({"credsStore": "absent"}))
    with pytest.raises(errdefs.FailedPrecondition, match="not installed"):
        config("r.io")


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert default_config_path() == tmp_path / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config_path() == tmp_path / ".docker" / "config.json"
