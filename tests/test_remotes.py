"""berth.remotes against real registries on loopback (docker-registry, with htpasswd, token
auth and TLS), plus scripted fake servers for what a real registry will not do.

Retries never really sleep here: resolvers get a `sleep` that records the delays asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import images
import pytest
import urllib3
from registry import Registry, free_loopback_port
from token_server import (
    ConfiguredRegistry,
    Reply,
    Request,
    ScriptedServer,
    TokenServer,
    self_signed_certificate,
)

from berth import errdefs
from berth.oci import image
from berth.oci.image import Descriptor
from berth.remotes import MAX_MANIFEST_SIZE, HostsConfig, RegistryResolver
from berth.remotes.auth import basic_authorization

HTTP = urllib3.PoolManager(retries=False)


# -- helpers -----------------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(base: str, repo: str, data: bytes, headers: dict[str, str] | None = None) -> str:
    """Upload a blob with plain urllib3 (independent of the code under test)."""
    resp = HTTP.request("POST", f"{base}/v2/{repo}/blobs/uploads/", headers=headers)
    assert resp.status == 202, resp.data
    location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    digest = digest_of(data)
    sep = "&" if "?" in location else "?"
    resp = HTTP.request(
        "PUT", f"{location}{sep}digest={digest}", body=data, headers=dict(headers or {})
    )
    assert resp.status == 201, resp.data
    return digest


def put_manifest(
    base: str,
    repo: str,
    ref: str,
    body: bytes,
    media_type: str,
    headers: dict[str, str] | None = None,
) -> Descriptor:
    resp = HTTP.request(
        "PUT",
        f"{base}/v2/{repo}/manifests/{ref}",
        body=body,
        headers={"Content-Type": media_type, **(headers or {})},
    )
    assert resp.status == 201, resp.data
    return Descriptor(media_type, digest_of(body), len(body))


class Image:
    """A small image pushed by hand: a config, layers, a manifest (and maybe an index)."""

    def __init__(
        self,
        base: str,
        repo: str,
        tag: str,
        *,
        docker: bool = False,
        layers: tuple[bytes, ...] = (b"layer one", os.urandom(300_000)),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.blobs: dict[str, bytes] = {}
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
        layer_type = image.DOCKER_LAYER_GZIP if docker else image.MEDIA_TYPE_LAYER_GZIP
        self.config = self._blob(base, repo, config, image.MEDIA_TYPE_CONFIG, headers)
        self.layers = [self._blob(base, repo, data, layer_type, headers) for data in layers]
        self.manifest_type = image.DOCKER_MANIFEST if docker else image.MEDIA_TYPE_MANIFEST
        self.manifest_bytes = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": self.manifest_type,
                "config": self._desc_json(self.config),
                "layers": [self._desc_json(d) for d in self.layers],
            }
        ).encode()
        self.manifest = put_manifest(
            base, repo, tag, self.manifest_bytes, self.manifest_type, headers
        )

    def _blob(
        self, base: str, repo: str, data: bytes, media_type: str, headers: dict[str, str] | None
    ) -> Descriptor:
        digest = put_blob(base, repo, data, headers)
        self.blobs[digest] = data
        return Descriptor(media_type, digest, len(data))

    @staticmethod
    def _desc_json(desc: Descriptor) -> dict[str, object]:
        return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def read_all(stream: io.BufferedIOBase | object) -> bytes:
    assert hasattr(stream, "read")
    with stream:  # type: ignore[attr-defined]
        return b"".join(iter(lambda: stream.read(1 << 20), b""))  # type: ignore[attr-defined]


class Sleeps(list[float]):
    """A `sleep` for resolvers that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def certs_d(tmp_path: Path) -> Path:
    path = tmp_path / "certs.d"
    path.mkdir()
    return path


def resolver(certs_d: Path, sleeps: Sleeps, **kwargs: object) -> RegistryResolver:
    kwargs.setdefault("plain_http", True)
    kwargs.setdefault("backoff_base", 0.001)
    return RegistryResolver(HostsConfig([certs_d]), sleep=sleeps, **kwargs)  # type: ignore[arg-type]


def hosts_toml(certs_d: Path, registry: str, text: str) -> None:
    (certs_d / registry).mkdir(parents=True, exist_ok=True)
    (certs_d / registry / "hosts.toml").write_text(text)


# -- resolve and fetch against docker-registry ---------------------------------------------------


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_resolve_by_tag_and_digest(
    registry: Registry, certs_d: Path, sleeps: Sleeps, docker: bool
) -> None:
    repo = f"resolve/{'docker' if docker else 'oci'}"
    img = Image(registry.url, repo, "v1", docker=docker)
    with resolver(certs_d, sleeps) as r:
        name, desc = r.resolve(f"{registry.host}/{repo}:v1")
        assert name == f"{registry.host}/{repo}:v1"
        assert desc == img.manifest
        _, by_digest = r.resolve(f"{registry.host}/{repo}@{img.manifest.digest}")
        assert by_digest == img.manifest
        # Tag and digest: the digest is what is asked for.
        name, both = r.resolve(f"{registry.host}/{repo}:nonexistent@{img.manifest.digest}")
        assert both == img.manifest and name.endswith(f":nonexistent@{img.manifest.digest}")


def test_resolve_index(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    img = Image(registry.url, "resolve/index", "inner", docker=True)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": image.DOCKER_MANIFEST_LIST,
            "manifests": [
                {
                    **Image._desc_json(img.manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    desc = put_manifest(registry.url, "resolve/index", "multi", index, image.DOCKER_MANIFEST_LIST)
    with resolver(certs_d, sleeps) as r:
        assert r.resolve(f"{registry.host}/resolve/index:multi")[1] == desc
        fetched = read_all(r.fetcher(f"{registry.host}/resolve/index").fetch(desc))
        assert fetched == index


def test_fetch_manifest_and_blobs_with_offsets(
    registry: Registry, certs_d: Path, sleeps: Sleeps
) -> None:
    img = Image(registry.url, "fetch/ranges", "v1")
    with resolver(certs_d, sleeps) as r:
        fetcher = r.fetcher(f"{registry.host}/fetch/ranges:v1")
        assert read_all(fetcher.fetch(img.manifest)) == img.manifest_bytes
        layer = img.layers[1]
        data = img.blobs[layer.digest]
        assert read_all(fetcher.fetch(layer)) == data
        for offset in (1, 4096, layer.size - 1, layer.size):
            assert read_all(fetcher.fetch(layer, offset)) == data[offset:], offset
        # read(n) semantics: blocks for n bytes unless the stream ends.
        with fetcher.fetch(layer, 100) as stream:
            assert stream.read(1000) == data[100:1100]
            assert stream.read(10) == data[1100:1110]
        with pytest.raises(errdefs.OutOfRange):
            fetcher.fetch(layer, layer.size + 1)


def test_not_found(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    img = Image(registry.url, "missing/present", "v1")
    with resolver(certs_d, sleeps) as r:
        with pytest.raises(errdefs.NotFound, match="missing/present:nope"):
            r.resolve(f"{registry.host}/missing/present:nope")
        with pytest.raises(errdefs.NotFound):
            r.resolve(f"{registry.host}/missing/nothing-here:v1")
        absent = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest_of(b"never pushed"), 12)
        with pytest.raises(errdefs.NotFound, match="BLOB_UNKNOWN"):
            r.fetcher(f"{registry.host}/missing/present").fetch(absent)
        manifest = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(b"{}"), 2)
        with pytest.raises(errdefs.NotFound):
            r.fetcher(f"{registry.host}/missing/present").fetch(manifest)
        with pytest.raises(errdefs.NotFound):
            r.resolve(f"{registry.host}/missing/present@{digest_of(b'absent')}")
        assert img.manifest == r.resolve(f"{registry.host}/missing/present:v1")[1]
    assert sleeps == []  # a 404 is an answer, never retried


def test_image_pushed_by_skopeo(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    layer = images.make_tar({"/etc/hello": b"hello\n"})
    ref = images.push_layers(registry, "skopeo/pushed:v1", [layer])
    with resolver(certs_d, sleeps) as r:
        _, desc = r.resolve(ref)
        assert desc.media_type == image.MEDIA_TYPE_MANIFEST
        fetcher = r.fetcher(ref)
        raw = read_all(fetcher.fetch(desc))
        assert digest_of(raw) == desc.digest
        manifest = json.loads(raw)
        for entry in [manifest["config"], *manifest["layers"]]:
            blob = read_all(
                fetcher.fetch(Descriptor(entry["mediaType"], entry["digest"], entry["size"]))
            )
            assert digest_of(blob) == entry["digest"]


def test_big_blob_streams_fast(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    data = os.urandom(96 << 20)
    digest = put_blob(registry.url, "fetch/big", data)
    desc = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest, len(data))
    with resolver(certs_d, sleeps) as r:
        fetcher = r.fetcher(f"{registry.host}/fetch/big")
        read_all(fetcher.fetch(desc, len(data) - 10))  # warm the connection and the token
        started = time.perf_counter()
        h = hashlib.sha256()
        with fetcher.fetch(desc) as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
        elapsed = time.perf_counter() - started
    assert "sha256:" + h.hexdigest() == digest
    rate = len(data) / elapsed / 1e6
    print(f"fetched {len(data) >> 20} MiB at {rate:.0f} MB/s (sha256 included)")
    assert rate > 150, f"{rate:.0f} MB/s"


# -- push --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1 << 20], ids=["monolithic", "chunked"])
def test_push_then_fetch_back(
    registry: Registry, certs_d: Path, sleeps: Sleeps, chunk_size: int | None
) -> None:
    repo = f"push/{'chunked' if chunk_size else 'whole'}"
    layer = os.urandom(2_500_000)
    config = b'{"architecture": "amd64", "os": "linux"}'
    blobs = {digest_of(b): b for b in (layer, config)}
    layer_desc = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest_of(layer), len(layer))
    config_desc = Descriptor(image.MEDIA_TYPE_CONFIG, digest_of(config), len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": image.MEDIA_TYPE_MANIFEST,
            "config": Image._desc_json(config_desc),
            "layers": [Image._desc_json(layer_desc)],
        }
    ).encode()
    manifest_desc = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(manifest), len(manifest))
    ref = f"{registry.host}/{repo}:v1"
    with resolver(certs_d, sleeps, chunk_size=chunk_size) as r:
        pusher = r.pusher(ref)
        assert not pusher.exists(layer_desc)
        for desc in (layer_desc, config_desc):
            pusher.push(desc, lambda desc=desc: io.BytesIO(blobs[desc.digest]))
            assert pusher.exists(desc)
        pusher.push(manifest_desc, lambda: io.BytesIO(manifest), "v1")
        assert pusher.exists(manifest_desc)
        # Read it all back through a fresh resolver, byte for byte.
    with resolver(certs_d, sleeps) as r:
        _, desc = r.resolve(ref)
        assert desc == manifest_desc
        fetcher = r.fetcher(ref)
        assert read_all(fetcher.fetch(desc)) == manifest
        assert read_all(fetcher.fetch(layer_desc)) == layer
        assert read_all(fetcher.fetch(config_desc)) == config
    assert registry.get_blob(repo, layer_desc.digest) == layer


def test_push_refuses_wrong_sizes_and_digests(
    registry: Registry, certs_d: Path, sleeps: Sleeps
) -> None:
    data = b"x" * 1000
    with resolver(certs_d, sleeps) as r:
        pusher = r.pusher(f"{registry.host}/push/bad")
        short = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(data), 2000)
        with pytest.raises(errdefs.InvalidArgument, match="ended after 1000 of its 2000"):
            pusher.push(short, lambda: io.BytesIO(data))
        wrong = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(b"other"), len(data))
        with pytest.raises(errdefs.InvalidArgument, match="DIGEST_INVALID"):
            pusher.push(wrong, lambda: io.BytesIO(data))
        with pytest.raises(errdefs.InvalidArgument, match="digest reference"):
            r.pusher(f"{registry.host}/push/bad@{digest_of(data)}")
    assert sleeps == []  # bad input is not retried


def test_cross_repository_mount(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    data = os.urandom(50_000)
    desc = Descriptor(
        image.MEDIA_TYPE_LAYER_GZIP, put_blob(registry.url, "mount/src", data), 50_000
    )
    with resolver(certs_d, sleeps) as r:
        pusher = r.pusher(f"{registry.host}/mount/dst")
        assert not pusher.exists(desc)
        assert pusher.mount(desc, "mount/src") is True
        assert pusher.exists(desc)
        unknown = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest_of(b"unknown"), 7)
        assert pusher.mount(unknown, "mount/src") is False
    assert registry.get_blob("mount/dst", desc.digest) == data


# -- auth --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    with Registry(auth=("berth", "s3cret")) as reg:
        yield reg


def test_basic_auth(basic_registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    reg = basic_registry
    auth_header = {"Authorization": basic_authorization("berth", "s3cret")}
    img = Image(reg.url, "basic/app", "v1", headers=auth_header)
    ref = f"{reg.host}/basic/app:v1"
    with resolver(certs_d, sleeps, credentials=lambda host: ("berth", "s3cret")) as r:
        assert r.resolve(ref)[1] == img.manifest
        assert read_all(r.fetcher(ref).fetch(img.layers[0])) == img.blobs[img.layers[0].digest]
    wrong = resolver(certs_d, sleeps, credentials=lambda host: ("berth", "wrong"))
    with wrong, pytest.raises(errdefs.FailedPrecondition, match="rejected the credentials"):
        wrong.resolve(ref)
    with resolver(certs_d, sleeps) as r, pytest.raises(errdefs.FailedPrecondition) as err:
        r.resolve(ref)
    assert str(err.value) == (
        f"unauthorized: authentication required for {ref} (or it does not exist): "
        f"run `berth login {reg.host}`"
    )


@pytest.fixture(scope="module")
def token_registry() -> Iterator[tuple[TokenServer, ConfiguredRegistry]]:
    with (
        TokenServer({"alice": "pw"}, refresh_tokens={"identity-123": "alice"}) as tokens,
        ConfiguredRegistry({"auth": tokens.registry_config()}) as reg,
    ):
        yield tokens, reg


def test_bearer_token_auth(
    token_registry: tuple[TokenServer, ConfiguredRegistry], certs_d: Path, sleeps: Sleeps
) -> None:
    tokens, reg = token_registry
    layer = os.urandom(10_000)
    desc = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest_of(layer), len(layer))
    ref = f"{reg.host}/token/app:v1"
    with resolver(certs_d, sleeps, credentials=lambda host: ("alice", "pw")) as r:
        pusher = r.pusher(ref)
        pusher.push(desc, lambda: io.BytesIO(layer))
        manifest = json.dumps(
            {"schemaVersion": 2, "config": Image._desc_json(desc), "layers": []}
        ).encode()
        mdesc = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(manifest), len(manifest))
        pusher.push(mdesc, lambda: io.BytesIO(manifest), "v1")
        # A cross-repository mount asks for pull on the source as well.
        assert r.pusher(f"{reg.host}/token/other").mount(desc, "token/app")
    pushes = len(tokens.issued)
    assert pushes <= 3, tokens.issued  # one token per scope set, reused across requests

    with resolver(certs_d, sleeps, credentials=lambda host: ("alice", "pw")) as r:
        assert r.resolve(ref)[1] == mdesc
        fetcher = r.fetcher(ref)
        for _ in range(3):
            assert read_all(fetcher.fetch(desc)) == layer
    assert len(tokens.issued) == pushes + 1  # the pull's token was cached
    assert tokens.issued[-1] == ("alice", ["repository:token/app:pull"])

    with resolver(certs_d, sleeps, credentials=lambda host: ("", "identity-123")) as r:
        assert r.resolve(ref)[1] == mdesc  # the identity token goes by POST

    wrong = resolver(certs_d, sleeps, credentials=lambda host: ("alice", "nope"))
    with wrong, pytest.raises(errdefs.FailedPrecondition, match="credentials of user 'alice'"):
        wrong.resolve(ref)
    with resolver(certs_d, sleeps) as r:
        with pytest.raises(errdefs.FailedPrecondition, match="authentication required") as err:
            r.resolve(ref)
        assert f"berth login {reg.host}" in str(err.value)
    assert sleeps == []


# -- mirrors, failures, retries ----------------------------------------------------------------


def test_mirror_serves_when_origin_is_down(
    registry: Registry, certs_d: Path, sleeps: Sleeps
) -> None:
    img = Image(registry.url, "mirrored/app", "v1")
    origin = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    hosts_toml(
        certs_d,
        origin,
        f'server = "http://{origin}"\n'
        f'[host."http://{registry.host}"]\ncapabilities = ["pull", "resolve"]\n',
    )
    with resolver(certs_d, sleeps, plain_http=False) as r:
        assert r.resolve(f"{origin}/mirrored/app:v1")[1] == img.manifest
        layer = img.layers[1]
        assert read_all(r.fetcher(f"{origin}/mirrored/app").fetch(layer)) == img.blobs[layer.digest]
        # Pushing goes to the origin only (mirrors are for pulling): unreachable, clearly.
        with pytest.raises(errdefs.Unavailable, match=f"registry {origin} is unreachable"):
            r.pusher(f"{origin}/mirrored/app:v2").push(layer, lambda: io.BytesIO(b""))


def test_origin_serves_when_mirrors_fail(registry: Registry, certs_d: Path, sleeps: Sleeps) -> None:
    img = Image(registry.url, "fallback/app", "v1")
    dead = f"127.0.0.1:{free_loopback_port()}"
    with ScriptedServer(lambda req: Reply(404, body=b'{"errors":[{"code":"NOPE"}]}')) as empty:
        hosts_toml(
            certs_d,
            registry.host,
            f'[host."http://{dead}"]\ncapabilities = ["pull", "resolve"]\n'
            f'[host."http://{empty.host}"]\ncapabilities = ["pull", "resolve"]\n',
        )
        with resolver(certs_d, sleeps) as r:
            assert r.resolve(f"{registry.host}/fallback/app:v1")[1] == img.manifest
            fetched = read_all(r.fetcher(f"{registry.host}/fallback/app").fetch(img.layers[0]))
            assert fetched == img.blobs[img.layers[0].digest]
            with pytest.raises(errdefs.NotFound) as err:
                r.resolve(f"{registry.host}/fallback/app:absent")
        assert f"also tried http://{dead}/v2" in str(err.value)
        # The mirror was told which registry the request is for.
        assert empty.requests[0].query["ns"] == [registry.host]
    assert sleeps == []  # a failing mirror is skipped at once, not retried


def test_unreachable_registry_is_unavailable_after_bounded_retries(
    certs_d: Path, sleeps: Sleeps
) -> None:
    dead = f"127.0.0.1:{free_loopback_port()}"
    r = resolver(certs_d, sleeps, max_retries=2)
    with r, pytest.raises(errdefs.Unavailable) as err:
        r.resolve(f"{dead}/some/app:v1")
    assert str(err.value) == (
        f"registry {dead} is unreachable: Connection refused; "
        "check the address and that it is running"
    )
    assert len(sleeps) == 2


def test_stopped_registry(certs_d: Path, sleeps: Sleeps) -> None:
    with Registry() as reg:
        Image(reg.url, "stopped/app", "v1")
        host = reg.host
        with resolver(certs_d, sleeps, max_retries=1) as r:
            r.resolve(f"{host}/stopped/app:v1")  # a pooled connection now exists
            reg.stop()
            with pytest.raises(errdefs.Unavailable, match="is unreachable"):
                r.resolve(f"{host}/stopped/app:v1")


def test_retries_503_and_honours_retry_after(certs_d: Path, sleeps: Sleeps) -> None:
    manifest = b'{"schemaVersion": 2}'
    answers = [
        Reply(503, body=b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}'),
        Reply(502),
        Reply(429, {"Retry-After": "3"}),
    ]

    def handle(req: Request) -> Reply:
        if answers:
            return answers.pop(0)
        return Reply(
            200,
            {
                "Content-Type": image.MEDIA_TYPE_MANIFEST,
                "Docker-Content-Digest": digest_of(manifest),
            },
            manifest,
        )

    with ScriptedServer(handle) as server, resolver(certs_d, sleeps, max_retries=3) as r:
        _, desc = r.resolve(f"{server.host}/retry/app:v1")
        assert desc == Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(manifest), len(manifest))
        assert len(sleeps) == 3 and sleeps[2] == 3.0
        answers.extend([Reply(503)] * 3)
        with pytest.raises(errdefs.Unavailable, match=r"answered HTTP 503 .* 2 times"):
            RegistryResolver(
                HostsConfig([certs_d]), plain_http=True, max_retries=1, sleep=sleeps
            ).resolve(f"{server.host}/retry/app:v1")


# -- what only a scripted server does ----------------------------------------------------------


def test_resolve_without_digest_header_hashes_the_body(certs_d: Path, sleeps: Sleeps) -> None:
    manifest = json.dumps({"schemaVersion": 2, "layers": []}).encode()

    def handle(req: Request) -> Reply:
        ctype = {"Content-Type": image.MEDIA_TYPE_INDEX + "; charset=utf-8"}
        return Reply(200, ctype, manifest)

    with ScriptedServer(handle) as server, resolver(certs_d, sleeps) as r:
        _, desc = r.resolve(f"{server.host}/nodigest/app:v1")
        assert desc == Descriptor(image.MEDIA_TYPE_INDEX, digest_of(manifest), len(manifest))
        assert [q.method for q in server.requests] == ["HEAD", "GET"]
        assert image.MEDIA_TYPE_INDEX in server.requests[0].headers["Accept"]


def test_oversize_manifests_are_refused(certs_d: Path, sleeps: Sleeps) -> None:
    big = b"{" + b" " * MAX_MANIFEST_SIZE + b"}"
    mode = {"length": True, "head": True}

    def handle(req: Request) -> Reply:
        if req.method == "HEAD" and not mode["head"]:
            return Reply(405)
        headers = {"Content-Type": image.MEDIA_TYPE_MANIFEST}
        if mode["length"]:
            headers["Docker-Content-Digest"] = digest_of(big)
        return Reply(200, headers, big, send_length=mode["length"])

    ref_desc = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(big), 1000)
    with ScriptedServer(handle) as server, resolver(certs_d, sleeps) as r:
        ref = f"{server.host}/big/app:v1"
        with pytest.raises(errdefs.InvalidArgument, match="refusing a 4194306-byte manifest"):
            r.resolve(ref)  # by the HEAD's Content-Length
        with pytest.raises(errdefs.InvalidArgument, match="more than the 1000 expected"):
            r.fetcher(ref).fetch(ref_desc)  # by the GET's Content-Length
        mode.update(length=False, head=False)
        with pytest.raises(errdefs.InvalidArgument, match="refusing a 4194305-byte manifest"):
            r.resolve(ref)  # while reading a body of unknown length
        unknown_size = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(big), 0)
        with pytest.raises(errdefs.InvalidArgument, match="more than the 4194304 expected"):
            read_all(r.fetcher(ref).fetch(unknown_size))  # while streaming
        count = len(server.requests)
        huge = Descriptor(image.MEDIA_TYPE_MANIFEST, digest_of(big), MAX_MANIFEST_SIZE + 1)
        with pytest.raises(errdefs.InvalidArgument, match="refusing manifest"):
            r.fetcher(ref).fetch(huge)
        assert len(server.requests) == count  # refused before asking


def test_range_ignored_and_cut_connections(certs_d: Path, sleeps: Sleeps) -> None:
    blob = os.urandom(200_000)
    cut = {"at": None}

    def handle(req: Request) -> Reply:  # ignores Range: always the whole blob
        return Reply(200, {"Content-Type": "application/octet-stream"}, blob, cut_after=cut["at"])

    desc = Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest_of(blob), len(blob))
    with ScriptedServer(handle) as server, resolver(certs_d, sleeps) as r:
        fetcher = r.fetcher(f"{server.host}/norange/app")
        assert read_all(fetcher.fetch(desc, 150_001)) == blob[150_001:]
        assert server.requests[-1].headers["Range"] == "bytes=150001-"
        cut["at"] = 70_000
        with pytest.raises(errdefs.Unavailable, match=r"lost the connection .* fetch again"):
            read_all(fetcher.fetch(desc))
        # A body longer than the descriptor says is refused, not passed on.
        small = Descriptor(desc.media_type, desc.digest, 1000)
        cut["at"] = None
        with pytest.raises(errdefs.InvalidArgument, match="more than the 1000 expected"):
            fetcher.fetch(small)


def test_redirects_do_not_carry_credentials(certs_d: Path, sleeps: Sleeps) -> None:
    blob = b"stored elsewhere"
    with ScriptedServer(lambda req: Reply(200, {}, blob)) as storage:

        def registry_handle(req: Request) -> Reply:
            if req.headers.get("Authorization") != basic_authorization("u", "p"):
                return Reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
            return Reply(307, {"Location": f"{storage.url}/signed?sig=abc"})

        with (
            ScriptedServer(registry_handle) as reg,
            resolver(
                certs_d, sleeps, credentials=lambda host: ("u", "p"), headers={"X-Extra": "1"}
            ) as r,
        ):
            desc = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(blob), len(blob))
            assert read_all(r.fetcher(f"{reg.host}/redir/app").fetch(desc)) == blob
    (stored,) = storage.requests
    assert stored.target == "/signed?sig=abc"  # origin-form, as servers expect
    assert "Authorization" not in stored.headers
    assert stored.headers["User-Agent"] == "berth/0.1"


def test_upload_with_relative_location(certs_d: Path, sleeps: Sleeps) -> None:
    data = os.urandom(5000)
    received: dict[str, bytes] = {}

    def handle(req: Request) -> Reply:
        if req.method == "POST" and req.path == "/v2/rel/app/blobs/uploads/":
            return Reply(202, {"Location": "/v2/rel/app/blobs/uploads/u1?_state=s1"})
        if req.method == "PUT" and req.path == "/v2/rel/app/blobs/uploads/u1":
            assert req.query["_state"] == ["s1"]
            digest = req.query["digest"][0]
            received[digest] = req.body
            return Reply(201, {"Docker-Content-Digest": digest})
        return Reply(404)

    desc = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(data), len(data))
    with ScriptedServer(handle) as server, resolver(certs_d, sleeps) as r:
        r.pusher(f"{server.host}/rel/app").push(desc, lambda: io.BytesIO(data))
    assert received == {desc.digest: data}


# -- TLS and the loopback HTTP fallback --------------------------------------------------------


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_registry(tmp_path: Path, certs_d: Path, sleeps: Sleeps) -> None:
    cert, key = self_signed_certificate(tmp_path, "registry")
    with ConfiguredRegistry(tls=(cert, key)) as reg:
        ref = f"{reg.host}/tls/app:v1"
        # Not trusted: reported as such, and never downgraded to HTTP.
        r = resolver(certs_d, sleeps, plain_http=False)
        with r, pytest.raises(errdefs.FailedPrecondition, match="TLS certificate not trusted"):
            r.resolve(ref)
        hosts_toml(certs_d, reg.host, f'ca = "{cert}"\n')
        with resolver(certs_d, sleeps, plain_http=False) as r:
            with pytest.raises(errdefs.NotFound):
                r.resolve(ref)  # reached over verified TLS; the image is not there
            desc = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(b"tls"), 3)
            r.pusher(ref).push(desc, lambda: io.BytesIO(b"tls"))
            assert read_all(r.fetcher(ref).fetch(desc)) == b"tls"
        hosts_toml(certs_d, reg.host, "skip_verify = true\n")
        with resolver(certs_d, sleeps, plain_http=False) as r:
            desc = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(b"tls"), 3)
            assert read_all(r.fetcher(ref).fetch(desc)) == b"tls"


def test_loopback_falls_back_to_plain_http(
    registry: Registry, certs_d: Path, sleeps: Sleeps
) -> None:
    img = Image(registry.url, "fallback/http", "v1")
    with resolver(certs_d, sleeps, plain_http=False) as r:
        assert r.resolve(f"{registry.host}/fallback/http:v1")[1] == img.manifest
        assert r.session.base_url(r._hosts.hosts(registry.host)[0]).startswith("http://")
    assert sleeps == []


def test_failed_upload_starts_over(certs_d: Path, sleeps: Sleeps) -> None:
    data = os.urandom(3000)
    sessions: list[str] = []
    stored: dict[str, bytes] = {}

    def handle(req: Request) -> Reply:
        if req.method == "POST":
            sessions.append(f"u{len(sessions)}")
            return Reply(202, {"Location": f"/v2/again/app/blobs/uploads/{sessions[-1]}"})
        if req.method == "PUT" and req.path.endswith("/u0"):
            return Reply(500, body=b'{"errors":[{"code":"UNKNOWN","message":"disk hiccup"}]}')
        if req.method == "PUT":
            stored[req.path] = req.body
            return Reply(201, {"Docker-Content-Digest": req.query["digest"][0]})
        return Reply(404)

    desc = Descriptor(image.MEDIA_TYPE_LAYER, digest_of(data), len(data))
    with ScriptedServer(handle) as server, resolver(certs_d, sleeps) as r:
        r.pusher(f"{server.host}/again/app").push(desc, lambda: io.BytesIO(data))
    assert sessions == ["u0", "u1"]
    assert stored == {"/v2/again/app/blobs/uploads/u1": data}
    assert len(sleeps) == 1


def test_one_resolver_from_many_threads(
    token_registry: tuple[TokenServer, ConfiguredRegistry], certs_d: Path, sleeps: Sleeps
) -> None:
    _tokens, reg = token_registry
    blobs = [os.urandom(200_000 + i) for i in range(8)]
    descs = [Descriptor(image.MEDIA_TYPE_LAYER, digest_of(b), len(b)) for b in blobs]
    ref = f"{reg.host}/threads/app"
    with resolver(certs_d, sleeps, credentials=lambda host: ("alice", "pw")) as r:
        pusher = r.pusher(ref)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: pusher.push(descs[i], lambda: io.BytesIO(blobs[i])), range(8)))
        fetcher = r.fetcher(ref)
        with ThreadPoolExecutor(8) as pool:
            fetched = list(pool.map(lambda d: read_all(fetcher.fetch(d)), descs * 3))
    assert fetched == blobs * 3


def test_pull_only_mirror_is_not_asked_for_tags(
    registry: Registry, certs_d: Path, sleeps: Sleeps
) -> None:
    img = Image(registry.url, "caps/app", "v1")
    with ScriptedServer(lambda req: Reply(404)) as mirror:
        hosts_toml(
            certs_d, registry.host, f'[host."http://{mirror.host}"]\ncapabilities = ["pull"]\n'
        )
        with resolver(certs_d, sleeps) as r:
            assert r.resolve(f"{registry.host}/caps/app:v1")[1] == img.manifest
            assert mirror.requests == []  # a tag means what a resolve host says it means
            read_all(r.fetcher(f"{registry.host}/caps/app").fetch(img.layers[0]))
            assert [q.path for q in mirror.requests] == [
                f"/v2/caps/app/blobs/{img.layers[0].digest}"
            ]
