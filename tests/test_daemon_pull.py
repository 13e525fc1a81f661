"""`berth pull` / `berth push` run by berthd itself (the Transfer service), end to end.

Everything goes through the installed `.venv/bin/berth` as a child process, against a real
berthd and real `docker-registry` processes on loopback (anonymous, htpasswd basic auth, bearer
tokens from `token_server.TokenServer`, a mirror named in `hosts.toml`), and every result is
checked from the outside with the real `ctr`: `images ls`, `images check`, `content ls`,
`snapshots ls`, `content active`, and `ctr images mount` + `rootfs_mismatches` for the files.

The registries here log every request (docker-registry's access log, one combined-format line
per request), so the tests can count what berthd fetched: a second pull downloads no layer, two
pulls at once download each layer once, an interrupted download resumes with a Range request.

Concurrent pulls of one image share their downloads and both succeed.

Layout: one berthd for the module, whose transfer plugin reads `hosts.toml` files from a
directory the tests write into; each test works in a namespace of its own. The tests that need
a daemon with nothing on disk (concurrent pulls, the interrupted pull) get a berthd of their own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import hostile_layers
import images
import pytest
from conftest import Ctr, sha256_of
from ctr_views import active_ingests, committed, content_digests, image_names, snapshot_kinds
from daemon import Berthd, mounts_under
from images import ImageInfo, rootfs_mismatches
from registry import Registry, free_loopback_port, loopback_env
from token_server import ConfiguredRegistry, TokenServer

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"
SKOPEO = "/usr/bin/skopeo"
TRANSFER_PLUGIN = "io.containerd.transfer.v1.local"


# -- running berth -----------------------------------------------------------------------------


def berth(address: str, *args: str, namespace: str = "default", docker_config: Path | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`berth --address A --namespace NS ARGS...` as a child process (stdout is a pipe, not a
    terminal). `docker_config` is the DOCKER_CONFIG directory; None gives an empty one, so the
    credentials of whoever runs the tests never leak in."""
    with tempfile.TemporaryDirectory(prefix="berth-docker-config-") as empty:
        env = loopback_env({"DOCKER_CONFIG": str(docker_config or empty)})
        return subprocess.run(
            [str(BERTH), "--address", address, "--namespace", namespace, *args],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
            stdin=subprocess.DEVNULL)


def pull(address: str, ref: str, namespace: str, *, plain_http: bool = True,
         docker_config: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ("pull", "--plain-http", ref) if plain_http else ("pull", ref)
    return berth(address, *args, namespace=namespace, docker_config=docker_config)


def succeeded(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0 and "Traceback" not in proc.stderr


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed: exit status 1, exactly one line on stderr,
    `berth: ...`, no traceback (asserted); returns the line."""
    shown = f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 1, shown
    assert "Traceback" not in proc.stderr, shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("berth: "), shown
    return lines[0]


def layer_status(out: str) -> dict[str, str]:
    """Each layer's last status in `berth pull`'s plain progress (short digest -> status)."""
    last: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("layer sha256:"):
            _kind, digest, status = line.split()[:3]
            last[digest] = status
    return last


# -- what ctr sees -----------------------------------------------------------------------------


def image_check_line(c: Ctr, ref: str) -> str:
    out = c("images", "check").stdout
    return next((ln for ln in out.splitlines() if ln.split()[:1] == [ref]), f"{ref} not listed")


@contextlib.contextmanager
def image_mounted(c: Ctr, ref: str, target: Path) -> Iterator[Path]:
    """`ctr images mount ref target` for the block; always unmounted (and its snapshot gone)."""
    target.mkdir(parents=True, exist_ok=True)
    c("images", "mount", ref, str(target))
    try:
        yield target
    finally:
        c("images", "unmount", "--rm", str(target), check=False)
        for point in mounts_under(str(target)):
            subprocess.run(["umount", "-l", point], check=False)


def mounted_mismatches(c: Ctr, ref: str, target: Path, info: ImageInfo) -> list[str]:
    with image_mounted(c, ref, target) as mnt:
        return rootfs_mismatches(mnt, info)


def regular_files(top: Path) -> dict[str, str]:
    """Every regular file under `top` as "/path" -> hex sha256 (symlinks not followed)."""
    found = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found["/" + str(path.relative_to(top))] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    return found


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every prefix of `diff_ids` (what the layer snapshots are named)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            diff_id = sha256_of(f"{chain[-1]} {diff_id}".encode())
        chain.append(diff_id)
    return chain


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- registries that log their requests --------------------------------------------------------

_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/\S*) HTTP/[\d.]+" (\d{3}) (\d+)')


@dataclasses.dataclass(frozen=True)
class Hit:
    method: str
    path: str  # with the query
    status: int
    written: int  # body bytes sent


class LoggedRegistry(ConfiguredRegistry):
    """A `docker-registry` with its access log on (one combined-format line per request in
    `log_path`). After `pin_port()`, `stop()` + `start()` serve again on the same port (and
    the same storage, when `root` was given): a registry that went away and came back."""

    def __init__(self, root: Path | None = None, *, extra: dict[str, object] | None = None,
                 **kwargs: object) -> None:
        config: dict[str, object] = {"log": {"level": "info",
                                             "accesslog": {"disabled": False}}}
        config.update(extra or {})
        super().__init__(config, root=root, **kwargs)  # type: ignore[arg-type]
        self._pinned: int | None = None

    def pin_port(self) -> None:
        self._pinned = self.port

    def _write_config(self, htpasswd: Path | None) -> Path:
        if self._pinned is not None:
            self.port = self._pinned
        return super()._write_config(htpasswd)

    def kill(self) -> None:
        """SIGKILL the registry (by its PID): every connection drops at once; then reap it."""
        os.kill(self.pid, signal.SIGKILL)
        self.stop()

    def mark(self) -> int:
        """A position in the log: `hits(since=mark)` lists only later requests."""
        return len(self.log_path.read_bytes())

    def hits(self, since: int = 0) -> list[Hit]:
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [Hit(m[1], m[2], int(m[3]), int(m[4])) for m in _ACCESS.finditer(text)]

    def blob_gets(self, repo: str, since: int = 0) -> dict[str, list[Hit]]:
        """GET /v2/<repo>/blobs/<digest> requests by digest."""
        found: dict[str, list[Hit]] = {}
        prefix = f"/v2/{repo}/blobs/"
        for hit in self.hits(since):
            if hit.method == "GET" and hit.path.startswith(prefix):
                found.setdefault(hit.path[len(prefix):].split("?")[0], []).append(hit)
        return found


def manifest_of(info: ImageInfo) -> tuple[str, dict[str, object]]:
    """(digest, parsed manifest) of a test image, from the OCI layout it was pushed from."""
    index = json.loads((info.layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest")
    return desc["digest"], json.loads((info.layout / "blobs/sha256" / desc["digest"][7:])
                                      .read_text())


def layer_digests(info: ImageInfo) -> list[str]:
    return [str(x["digest"]) for x in manifest_of(info)[1]["layers"]]  # type: ignore[attr-defined]


def skopeo_push(layout: Path, ref: str, *creds: str) -> None:
    """Push `layout:latest` to `ref` unchanged (same digests), with `--dest-creds` if given."""
    cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet", "--preserve-digests",
           "--dest-tls-verify=false", *(["--dest-creds", creds[0]] if creds else []),
           f"oci:{layout}:latest", f"docker://{ref}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=loopback_env(), check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


# -- module fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transfer plugin's `config_path`: `<dir>/<host:port>/hosts.toml`, read per pull."""
    return tmp_path_factory.mktemp("certs.d")


def berthd_config(directory: Path, hosts: Path) -> str:
    config = directory / "berthd.toml"
    config.write_text(f'version = 2\n\n[plugins."{TRANSFER_PLUGIN}"]\n'
                      f'  config_path = "{hosts}"\n')
    return str(config)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, hosts_dir: Path) -> Iterator[Berthd]:
    base = tmp_path_factory.mktemp("berthd")
    with Berthd(base / "d", config=berthd_config(base, hosts_dir)) as d:
        yield d


@pytest.fixture(scope="module")
def reg() -> Iterator[LoggedRegistry]:
    with LoggedRegistry() as r:
        yield r


@pytest.fixture(scope="module")
def bb(reg: LoggedRegistry, busybox_image: ImageInfo, image_cache: Path) -> ImageInfo:
    """busybox (one layer), pushed to this module's logging registry."""
    return images.busybox(reg, image_cache)


@pytest.fixture(scope="module")
def ml(reg: LoggedRegistry, multilayer_image: ImageInfo, image_cache: Path) -> ImageInfo:
    """multilayer (3 layers: hardlink, symlink, whiteouts), pushed to the logging registry."""
    return images.multilayer(reg, image_cache)


# -- 1. anonymous pulls ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["busybox", "multilayer"])
def test_anonymous_pull_mount_repull_and_remove(daemon: Berthd, reg: LoggedRegistry,
                                                bb: ImageInfo, ml: ImageInfo, tmp_path: Path,
                                                which: str) -> None:
    info = bb if which == "busybox" else ml
    ns = f"anon-{which}"
    c = Ctr(daemon.address, ns)
    digest, _manifest = manifest_of(info)

    first = pull(daemon.address, info.ref, ns)
    assert succeeded(first), first.stderr
    assert first.stdout.splitlines()[-1] == f"Pulled {info.ref} {digest}"
    assert image_names(c) == {info.ref}
    assert "complete" in image_check_line(c, info.ref).split(), c("images", "check").stdout
    assert len(committed(c)) == info.layer_count
    assert c("leases", "ls", "-q").stdout.split() == []  # the pull's lease is gone
    assert mounted_mismatches(c, info.ref, tmp_path / "mnt", info) == []
    stored = (content_digests(c), snapshot_kinds(c))

    # Again: nothing new is downloaded or stored, and it says so.
    mark = reg.mark()
    again = pull(daemon.address, info.ref, ns)
    assert succeeded(again), again.stderr
    assert again.stdout.splitlines()[-1] == f"Pulled {info.ref} {digest}"
    assert set(layer_status(again.stdout).values()) == {"done"}
    assert not any(ln.split()[2:3] == ["downloading"] for ln in again.stdout.splitlines()
                   if ln.startswith("layer ")), again.stdout
    fetched = reg.blob_gets(info.repo, since=mark)
    assert [d for d in layer_digests(info) if d in fetched] == [], fetched
    assert (content_digests(c), snapshot_kinds(c)) == stored
    assert image_names(c) == {info.ref}

    removed = berth(daemon.address, "rmi", "--sync", info.ref, namespace=ns)
    assert succeeded(removed), removed.stderr
    assert removed.stdout.split() == [info.ref]
    assert image_names(c) == set()
    assert content_digests(c) == set()
    assert snapshot_kinds(c) == {}


# -- 2. htpasswd basic auth --------------------------------------------------------------------

USER, PASSWORD = "berth", "s3cret"


def docker_config_with(directory: Path, host: str, user: str, password: str) -> Path:
    """A DOCKER_CONFIG directory whose config.json holds these credentials for `host`."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


def login(address: str, host: str, docker_config: Path, user: str, password: str
          ) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryFile("w+") as stdin:
        stdin.write(password + "\n")
        stdin.seek(0)
        return subprocess.run(
            [str(BERTH), "--address", address, "login", host, "-u", user, "--password-stdin"],
            stdin=stdin, capture_output=True, text=True, timeout=60, check=False,
            env=loopback_env({"DOCKER_CONFIG": str(docker_config)}))


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    with Registry(auth=(USER, PASSWORD)) as r:
        yield r


@pytest.fixture(scope="module")
def basic_busybox(basic_registry: Registry, busybox_image: ImageInfo,
                  image_cache: Path) -> ImageInfo:
    return images.busybox(basic_registry, image_cache, "private/busybox:latest")


def test_basic_auth_pull_with_login(daemon: Berthd, basic_registry: Registry,
                                    basic_busybox: ImageInfo, tmp_path: Path) -> None:
    ns = "basic-auth"
    c = Ctr(daemon.address, ns)
    config = tmp_path / "docker"
    logged_in = login(daemon.address, basic_registry.host, config, USER, PASSWORD)
    assert succeeded(logged_in), logged_in.stderr
    assert basic_registry.host in json.loads((config / "config.json").read_text())["auths"]

    pulled = pull(daemon.address, basic_busybox.ref, ns, docker_config=config)
    assert succeeded(pulled), pulled.stderr
    assert image_names(c) == {basic_busybox.ref}
    assert mounted_mismatches(c, basic_busybox.ref, tmp_path / "mnt", basic_busybox) == []


def test_basic_auth_wrong_password_is_one_line(daemon: Berthd, basic_registry: Registry,
                                               basic_busybox: ImageInfo, tmp_path: Path) -> None:
    ns = "basic-auth-wrong"
    c = Ctr(daemon.address, ns)
    config = docker_config_with(tmp_path / "docker", basic_registry.host, USER, "not-it-123")
    line = error_line(pull(daemon.address, basic_busybox.ref, ns, docker_config=config))
    assert "unauthorized" in line and "rejected the credentials" in line, line
    assert f"berth login {basic_registry.host}" in line, line
    assert "not-it-123" not in line  # the password is never shown
    assert image_names(c) == set()
    assert content_digests(c) == set()


def test_basic_auth_without_credentials_says_login(daemon: Berthd, basic_registry: Registry,
                                                   basic_busybox: ImageInfo) -> None:
    ns = "basic-auth-none"
    line = error_line(pull(daemon.address, basic_busybox.ref, ns))
    assert "unauthorized" in line and f"berth login {basic_registry.host}" in line, line
    assert image_names(Ctr(daemon.address, ns)) == set()


# -- 3. bearer token auth ----------------------------------------------------------------------

TOKEN_USER, TOKEN_PASSWORD = "tokenuser", "t0ken-pw"


@pytest.fixture(scope="module")
def token_registry() -> Iterator[tuple[TokenServer, ConfiguredRegistry]]:
    with (
        TokenServer({TOKEN_USER: TOKEN_PASSWORD}) as tokens,
        ConfiguredRegistry({"auth": tokens.registry_config()}) as r,
    ):
        yield tokens, r


@pytest.fixture(scope="module")
def token_busybox(token_registry: tuple[TokenServer, ConfiguredRegistry],
                  busybox_image: ImageInfo) -> ImageInfo:
    _tokens, r = token_registry
    ref = f"{r.host}/tokened/busybox:latest"
    skopeo_push(busybox_image.layout, ref, f"{TOKEN_USER}:{TOKEN_PASSWORD}")
    return dataclasses.replace(busybox_image, ref=ref, repo="tokened/busybox")


def test_bearer_token_pull(daemon: Berthd, token_registry: tuple[TokenServer, ConfiguredRegistry],
                           token_busybox: ImageInfo, tmp_path: Path) -> None:
    tokens, r = token_registry
    ns = "token-auth"
    c = Ctr(daemon.address, ns)

    # Without credentials: refused, with the way out named.
    line = error_line(pull(daemon.address, token_busybox.ref, ns))
    assert "unauthorized" in line and f"berth login {r.host}" in line, line
    # With a wrong password: the token server refuses it.
    wrong = docker_config_with(tmp_path / "wrong", r.host, TOKEN_USER, "nope")
    line = error_line(pull(daemon.address, token_busybox.ref, ns, docker_config=wrong))
    assert "rejected the credentials" in line and repr(TOKEN_USER) in line, line
    assert image_names(c) == set()

    config = tmp_path / "docker"
    logged_in = login(daemon.address, r.host, config, TOKEN_USER, TOKEN_PASSWORD)
    assert succeeded(logged_in), logged_in.stderr
    issued = len(tokens.issued)
    pulled = pull(daemon.address, token_busybox.ref, ns, docker_config=config)
    assert succeeded(pulled), pulled.stderr
    assert (TOKEN_USER, ["repository:tokened/busybox:pull"]) in tokens.issued[issued:]
    assert image_names(c) == {token_busybox.ref}
    assert mounted_mismatches(c, token_busybox.ref, tmp_path / "mnt", token_busybox) == []


# -- 4. a mirror -------------------------------------------------------------------------------


def test_pull_through_a_mirror_when_the_origin_is_down(daemon: Berthd, hosts_dir: Path,
                                                       reg: LoggedRegistry, bb: ImageInfo,
                                                       tmp_path: Path) -> None:
    with Registry() as origin:  # a registry that was there, and is now stopped
        origin_host = origin.host
    config = hosts_dir / origin_host
    config.mkdir()
    (config / "hosts.toml").write_text(
        f'server = "http://{origin_host}"\n\n'
        f'[host."http://{reg.host}"]\n  capabilities = ["pull", "resolve"]\n')
    try:
        pull_through_the_mirror(daemon, reg, bb, origin_host, tmp_path)
    finally:
        shutil.rmtree(config)  # the port may serve another registry later


def pull_through_the_mirror(daemon: Berthd, reg: LoggedRegistry, bb: ImageInfo,
                            origin_host: str, tmp_path: Path) -> None:
    ns = "mirrored"
    c = Ctr(daemon.address, ns)
    ref = f"{origin_host}/{bb.repo}:{bb.tag}"
    mark = reg.mark()
    # No --plain-http: the schemes are the ones hosts.toml states.
    pulled = pull(daemon.address, ref, ns, plain_http=False)
    assert succeeded(pulled), pulled.stderr
    assert image_names(c) == {ref}
    assert mounted_mismatches(c, ref, tmp_path / "mnt", bb) == []
    # The mirror served it, told which registry the pull was for (containerd's ?ns=).
    served = [h for h in reg.hits(since=mark) if h.status == 200]
    assert any(h.path.startswith(f"/v2/{bb.repo}/manifests/")
               and f"ns={origin_host}" in unquote(h.path) for h in served), served


# -- 5. a blob changed on the registry ---------------------------------------------------------


def registry_blob(r: Registry, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return r.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def test_blob_changed_on_the_registry_fails_with_a_digest_error(daemon: Berthd,
                                                                reg: LoggedRegistry) -> None:
    ns = "tampered"
    c = Ctr(daemon.address, ns)
    tag = uuid.uuid4().hex[:12]
    good = images.make_tar({"/data/good.txt": f"good {tag}\n".encode() * 1000})
    bad = images.make_tar({"/data/bad.txt": f"tampered {tag}\n".encode() * 4000})
    blobs = [images.compress(x, "gzip") for x in (good, bad)]
    ref = images.push_layers(reg, f"corrupt/tampered:{tag}", [good, bad])
    digest = sha256_of(blobs[1])
    data = bytearray(registry_blob(reg, digest).read_bytes())
    assert sha256_of(bytes(data)) == digest
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    registry_blob(reg, digest).write_bytes(bytes(data))

    line = error_line(pull(daemon.address, ref, ns))
    print(line)
    assert "digest" in line and digest in line, line
    assert digest not in content_digests(c)
    assert sha256_of(bytes(data)) not in content_digests(c)
    assert ref not in image_names(c)
    chain = chain_ids([sha256_of(good), sha256_of(bad)])
    assert chain[1] not in snapshot_kinds(c)
    assert set(committed(c)) <= {chain[0]}
    # No half-written copy of it waits as an ingest either.
    assert not [r for r in active_ingests(c) if digest in r], c("content", "active").stdout


# -- 6. the registry goes away in the middle of a pull -----------------------------------------

BIG_LAYERS = 4
BIG_FILES = 5
BIG_FILE_SIZE = 5 << 20  # 4 layers x 5 files x 5 MiB: ~105 MB, incompressible
BIG_SEED = 20241130


@dataclasses.dataclass(frozen=True)
class BigImage:
    ref: str
    repo: str
    layers: list[str]  # layer blob digests, in manifest order
    sizes: dict[str, int]
    files: dict[str, str]  # every file -> hex sha256
    info: ImageInfo


def push_big_image(r: Registry) -> BigImage:
    rng = random.Random(BIG_SEED)
    tars, files = [], {}
    for i in range(BIG_LAYERS):
        content = {f"/big/layer{i}/file{j}.bin": rng.randbytes(BIG_FILE_SIZE)
                   for j in range(BIG_FILES)}
        files.update({p: hashlib.sha256(d).hexdigest() for p, d in content.items()})
        tars.append(images.make_tar(content))
    repo = "interrupted/big"
    ref = images.push_layers(r, f"{repo}:latest", tars, "none")
    info = ImageInfo(ref=ref, repo=repo, tag="latest", layout=Path(), layer_count=BIG_LAYERS,
                     cmd=("/bin/sh",), sha256={p: h for p, h in files.items()})
    return BigImage(ref, repo, [sha256_of(t) for t in tars], {sha256_of(t): len(t) for t in tars},
                    files, info)


def ingest_sizes(d: Berthd) -> list[int]:
    """Bytes in each of berthd's ingest files right now (read from disk: far quicker than ctr)."""
    sizes = []
    for data in (d.root / "io.containerd.content.v1.content" / "ingest").glob("*/data"):
        with contextlib.suppress(OSError):
            sizes.append(data.stat().st_size)
    return sizes


def test_registry_stopped_mid_pull_then_back(berthd: Berthd, tmp_path: Path) -> None:
    """SIGKILL the registry while berthd downloads a ~105 MB image: the pull ends with one
    clear line, promptly; the partial download stays as an ingest; with the registry back on
    the same port and storage, the next pull fetches only the rest of it (HTTP 206) and the
    image mounts with exactly the pushed files."""
    with LoggedRegistry(tmp_path / "storage") as r:
        big = push_big_image(r)
        r.pin_port()
        host = r.host
        ns = "interrupted"
        c = Ctr(berthd.address, ns)
        smallest = min(big.sizes.values())
        proc = subprocess.Popen(
            [str(BERTH), "--address", berthd.address, "--namespace", ns, "pull", "--plain-http",
             big.ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=loopback_env({"DOCKER_CONFIG": str(tmp_path / "no-docker-config")}))
        try:
            killed_at = None
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if any(4 << 20 <= n < smallest // 2 for n in ingest_sizes(berthd)):
                    r.kill()
                    killed_at = time.monotonic()
                    break
                time.sleep(0.001)
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert killed_at is not None, "the pull ended before the registry could be stopped"
        took = time.monotonic() - killed_at
        print(f"registry killed with ingests at {sorted(ingest_sizes(berthd))}; the pull "
              f"gave up {took:.1f}s later: {err.strip()}")
        failed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        line = error_line(failed)
        assert host in line and ("unreachable" in line or "broke off" in line), line
        assert took < 30, f"the pull took {took:.1f}s to give up"
        assert big.ref not in image_names(c)

        partial = {ref: n for ref, n in active_ingests(c).items() if n}
        resumable = {d: n for ref, n in partial.items() for d in big.layers
                     if d in ref and 0 < n < big.sizes[d]}
        assert resumable, f"no partly downloaded layer was kept: {partial}"
        print(f"partly downloaded layers: {resumable}")

        r.start()
        mark = r.mark()
        again = pull(berthd.address, big.ref, ns)
        assert succeeded(again), again.stderr
        gets = r.blob_gets(big.repo, since=mark)
        for digest, have in resumable.items():
            hits = gets.get(digest, [])
            assert [h.status for h in hits] == [206], (digest, hits)
            # ctr rounds the offset it shows to 4 significant digits
            assert abs(hits[0].written - (big.sizes[digest] - have)) <= have // 1000 + 1, hits
        assert "complete" in image_check_line(c, big.ref).split()
        assert active_ingests(c) == {}
        with image_mounted(c, big.ref, tmp_path / "mnt") as mnt:
            assert regular_files(mnt) == big.files


# -- 7. push, then pull back -------------------------------------------------------------------


def registry_manifest(r: Registry, repo: str, reference: str) -> tuple[str, bytes]:
    accept = ("application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    status, headers, body = r.request(f"/v2/{repo}/manifests/{reference}",
                                      headers={"Accept": accept})
    assert status == 200, (status, body[:300])
    return headers.get("Content-Type", ""), body


@pytest.mark.parametrize("where", ["same-registry", "other-registry"])
def test_push_then_pull_round_trip(daemon: Berthd, reg: LoggedRegistry, ml: ImageInfo,
                                   tmp_path: Path, where: str) -> None:
    ns = f"push-{where}"
    c = Ctr(daemon.address, ns)
    first = pull(daemon.address, ml.ref, ns)
    assert succeeded(first), first.stderr
    assert image_names(c) == {ml.ref}
    digest, manifest = manifest_of(ml)
    media_type, original = registry_manifest(reg, ml.repo, "latest")
    assert sha256_of(original) == digest

    with contextlib.ExitStack() as stack:
        target_reg = reg if where == "same-registry" else stack.enter_context(LoggedRegistry())
        repo = f"roundtrip/{where}"
        target = f"{target_reg.host}/{repo}:copy"
        mark = target_reg.mark()
        pushed = berth(daemon.address, "push", "--plain-http", "--ref", target, ml.ref,
                       namespace=ns)
        assert succeeded(pushed), pushed.stderr
        assert pushed.stdout.splitlines()[-1] == f"Pushed {target} {digest}"
        hits = target_reg.hits(since=mark)
        if where == "same-registry":  # blobs are mounted from the source repository
            assert any(h.method == "POST" and "mount=" in h.path and h.status == 201
                       for h in hits), hits
        else:
            assert any(h.method == "PUT" and "/blobs/uploads/" in h.path for h in hits), hits

        # Byte for byte what was pulled: the manifest (same digest and type) and every blob.
        pushed_type, copy = registry_manifest(target_reg, repo, "copy")
        assert copy == original and pushed_type == media_type
        status, headers, _ = target_reg.request(f"/v2/{repo}/manifests/{digest}",
                                                method="HEAD", headers={"Accept": media_type})
        assert status == 200 and headers.get("Docker-Content-Digest") == digest
        descriptors = [manifest["config"], *manifest["layers"]]  # type: ignore[list-item]
        for desc in descriptors:
            blob = target_reg.get_blob(repo, desc["digest"])
            assert sha256_of(blob) == desc["digest"] and len(blob) == desc["size"]
            assert blob == reg.get_blob(ml.repo, desc["digest"])

        fresh = f"{ns}-back"
        back = pull(daemon.address, target, fresh)
        assert succeeded(back), back.stderr
        cb = Ctr(daemon.address, fresh)
        assert image_names(cb) == {target}
        assert "complete" in image_check_line(cb, target).split()
        assert mounted_mismatches(cb, target, tmp_path / "mnt", ml) == []


# -- 8. hostile layers pulled by berthd --------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the hostile layers aim at (absolute targets name it; see hostile_layers)."""
    return hostile_layers.make_sentinel(tmp_path_factory.mktemp("sentinel"))


_at = hostile_layers.landing


def _same_inode(a: Path, b: Path) -> bool:
    sa, sb = a.lstat(), b.lstat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# name -> (the member a refusal must name, what a contained apply shows in the image)
HOSTILE: dict[str, tuple[str, Callable[[Path, Path], bool]]] = {
    "dotdot-file": ("../outside/pwned",
                    lambda m, o: (m / "outside" / "pwned").read_bytes() == b"x"),
    "absolute-name": ("/pwned", lambda m, o: _at(m, o, "pwned").read_bytes() == b"x"),
    "abs-symlink-write": ("l/secret", lambda m, o: _at(m, o, "secret").read_bytes() == b"pwned"),
    "rel-symlink-write": ("l/secret",
                          lambda m, o: (m / "outside" / "secret").read_bytes() == b"pwned"),
    "symlink-chain": ("a/secret",
                      lambda m, o: (m / "outside" / "secret").read_bytes() == b"pwned"),
    "hardlink-etc-passwd": ("/etc/passwd",
                            lambda m, o: not _same_inode(m / "passwd", Path("/etc/passwd"))),
    "whiteout-through-symlink": ("l/.wh.secret", lambda m, o: (m / "l").is_symlink()),
    "device-through-symlink": ("l/null",
                               lambda m, o: stat.S_ISCHR(_at(m, o, "null").lstat().st_mode)),
}


@pytest.fixture(scope="module")
def hostile_baseline(daemon: Berthd, bb: ImageInfo) -> Ctr:
    """The namespace for the hostile pulls, with busybox pulled first: it must survive."""
    c = Ctr(daemon.address, "hostile")
    first = pull(daemon.address, bb.ref, "hostile")
    assert succeeded(first), first.stderr
    return c


class Escape:
    """What a hostile pull may not touch, recorded before it: the sentinel tree, /etc/passwd,
    and the places a relative escape from a snapshot root or a temporary dir would land."""

    def __init__(self, d: Berthd, sentinel: Path) -> None:
        self.sentinel = sentinel
        self.stray = [Path(tempfile.gettempdir()) / "outside", Path("/outside"),
                      d.base.parent / "outside", d.base / "outside", d.root / "outside",
                      d.state / "outside"]
        assert not [p for p in self.stray if os.path.lexists(p)]
        self.tree = hostile_layers.snapshot_tree(str(sentinel))
        self.passwd = os.stat("/etc/passwd")

    def assert_nothing_escaped(self) -> None:
        assert hostile_layers.snapshot_tree(str(self.sentinel)) == self.tree, \
            "the sentinel directory changed"
        assert os.stat("/etc/passwd") == self.passwd
        assert [p for p in self.stray if os.path.lexists(p)] == []


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_layer_pulled_by_berthd_is_contained(daemon: Berthd, reg: LoggedRegistry,
                                                     bb: ImageInfo, hostile_baseline: Ctr,
                                                     sentinel: Path, tmp_path: Path,
                                                     name: str) -> None:
    c = hostile_baseline
    layer = {n: data for n, data, _ in hostile_layers.hostile_layers(str(sentinel))}[name]
    ref = images.push_layers(reg, f"hostile/{name}:latest", [layer])
    chain = sha256_of(layer)
    escape = Escape(daemon, sentinel)

    result = pull(daemon.address, ref, "hostile")
    escape.assert_nothing_escaped()
    culprit, contained = HOSTILE[name]
    print(f"{name}: exit {result.returncode} {result.stderr.strip()}")
    if result.returncode != 0:
        line = error_line(result)
        assert culprit in line, f"the error does not name the entry {culprit!r}: {line}"
        assert ref not in image_names(c)
        assert chain not in snapshot_kinds(c)
    else:
        assert succeeded(result), result.stderr
        assert chain in committed(c)
        with image_mounted(c, ref, tmp_path / "mnt") as mnt:
            assert contained(mnt, sentinel), f"{name} was not applied inside the image"
        escape.assert_nothing_escaped()
    # The image pulled before is whole.
    assert bb.ref in image_names(c)
    assert "complete" in image_check_line(c, bb.ref).split()
    assert mounted_mismatches(c, bb.ref, tmp_path / "baseline", bb) == []


# -- 9. two pulls of one image at once ---------------------------------------------------------


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` ("host:port") that sends answers back at most
    `rate` bytes per second per connection: a slow registry, so that downloads overlap."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> ThrottledProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.rate),
                             daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rate: int) -> None:
        try:
            while data := src.recv(64 << 10):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()


@dataclasses.dataclass
class TwinPulls:
    address: str
    ref: str
    info: ImageInfo
    results: dict[str, subprocess.CompletedProcess[str]]
    layers: list[str]
    config: str
    gets: dict[str, list[Hit]]  # blob GETs the registry served during the two pulls


TWIN_LAYER_SIZE = 8 << 20
TWIN_RATE = 4 << 20  # per connection: each layer takes ~2 s to arrive


def run_twin_pulls(base: Path, *, staggered: bool) -> Iterator[TwinPulls]:
    """Two `berth pull`s of one (new) image, in namespaces twin-a and twin-b, into a berthd
    that has none of it, from a registry slowed down so that the layer downloads overlap.
    Together: both start at once. Staggered: twin-b starts once twin-a's layer downloads are
    under way (its manifest and config are stored by then)."""
    with Berthd(base / "berthd") as d, LoggedRegistry() as r:
        rng = random.Random(uuid.uuid4().int)
        contents = [rng.randbytes(TWIN_LAYER_SIZE) for _ in range(3)]
        tars = [images.make_tar({f"/twins/{i}.bin": data}) for i, data in enumerate(contents)]
        repo = "concurrent/image"
        images.push_layers(r, f"{repo}:latest", tars, "none")
        manifest = json.loads(registry_manifest(r, repo, "latest")[1])
        with ThrottledProxy(r.host, TWIN_RATE) as proxy:
            ref = f"{proxy.host}/{repo}:latest"
            mark = r.mark()
            results: dict[str, subprocess.CompletedProcess[str]] = {}
            go = threading.Barrier(2)

            def run(ns: str) -> None:
                if not staggered:
                    go.wait()
                elif ns == "twin-b":
                    assert wait_for(lambda: any(n > 0 for n in ingest_sizes(d)), timeout=30)
                results[ns] = pull(d.address, ref, ns)

            threads = [threading.Thread(target=run, args=(ns,)) for ns in ("twin-a", "twin-b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=150)
            assert sorted(results) == ["twin-a", "twin-b"]
        info = ImageInfo(ref=ref, repo=repo, tag="latest", layout=Path(), layer_count=3,
                         cmd=("/bin/sh",), sha256={f"/twins/{i}.bin": hashlib.sha256(data)
                                                   .hexdigest() for i, data in enumerate(contents)})
        yield TwinPulls(d.address, ref, info, results, [sha256_of(t) for t in tars],
                        manifest["config"]["digest"], r.blob_gets(repo, since=mark))


@pytest.fixture(scope="module")
def twin_pulls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinPulls]:
    yield from run_twin_pulls(tmp_path_factory.mktemp("twins"), staggered=False)


@pytest.fixture(scope="module")
def staggered_pulls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinPulls]:
    yield from run_twin_pulls(tmp_path_factory.mktemp("staggered"), staggered=True)


def assert_pulled(t: TwinPulls, ns: str, target: Path) -> None:
    result = t.results[ns]
    assert succeeded(result), (ns, result.stderr)
    c = Ctr(t.address, ns)
    assert image_names(c) == {t.ref}
    assert "complete" in image_check_line(c, t.ref).split()
    assert mounted_mismatches(c, t.ref, target, t.info) == []


@pytest.mark.parametrize("how", ["together", "staggered"])
def test_two_pulls_at_once_fetch_each_layer_once(twin_pulls: TwinPulls,
                                                 staggered_pulls: TwinPulls, tmp_path: Path,
                                                 how: str) -> None:
    """Downloads are shared: for the two pulls, the registry served each layer blob once
    (never twice), and the pull that fetched them has the whole image."""
    t = twin_pulls if how == "together" else staggered_pulls
    counts = {d: len(t.gets.get(d, [])) for d in t.layers}
    assert counts == dict.fromkeys(t.layers, 1), counts
    ok = [ns for ns, result in t.results.items() if succeeded(result)]
    assert ok, {ns: r.stderr for ns, r in t.results.items()}
    assert_pulled(t, ok[0], tmp_path / "mnt")


def test_two_pulls_at_once_both_succeed(twin_pulls: TwinPulls, tmp_path: Path) -> None:
    for ns in twin_pulls.results:
        assert_pulled(twin_pulls, ns, tmp_path / f"mnt-{ns}")


def test_a_pull_joining_a_running_download_succeeds(staggered_pulls: TwinPulls,
                                                    tmp_path: Path) -> None:
    for ns in staggered_pulls.results:
        assert_pulled(staggered_pulls, ns, tmp_path / f"mnt-{ns}")


def test_two_pulls_at_once_fetch_the_config_once(twin_pulls: TwinPulls) -> None:
    gets = twin_pulls.gets.get(twin_pulls.config, [])
    assert len(gets) <= 1, gets


# -- 10. missing images, unreachable registries ------------------------------------------------


@pytest.mark.parametrize("what", ["missing-tag", "missing-repo"])
def test_missing_image_is_one_not_found_line(daemon: Berthd, reg: LoggedRegistry,
                                             bb: ImageInfo, what: str) -> None:
    ns = f"missing-{what}"
    ref = (f"{reg.host}/{bb.repo}:no-such-tag" if what == "missing-tag"
           else f"{reg.host}/no/such-repo:latest")
    line = error_line(pull(daemon.address, ref, ns))
    assert "not found" in line and ref in line, line
    c = Ctr(daemon.address, ns)
    assert image_names(c) == set()
    assert content_digests(c) == set()


@pytest.mark.parametrize("plain_http", [True, False], ids=["plain-http", "https-first"])
def test_unreachable_registry_fails_quickly(daemon: Berthd, plain_http: bool) -> None:
    host = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    started = time.monotonic()
    result = pull(daemon.address, f"{host}/some/image:latest", "unreachable",
                  plain_http=plain_http)
    took = time.monotonic() - started
    line = error_line(result)
    assert f"registry {host} is unreachable" in line and "Connection refused" in line, line
    assert took < 10, f"giving up took {took:.1f}s"
    assert image_names(Ctr(daemon.address, "unreachable")) == set()


# -- 11. indexes: labels by position, listed twice, documents of two kinds ---------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OTHER_ARCH = "arm64" if images.host_architecture() != "arm64" else "amd64"


@dataclasses.dataclass(frozen=True)
class TwoPlatforms:
    repo: str
    host: str  # the host platform's manifest (busybox as pushed)
    other: str  # a manifest for OTHER_ARCH: the same layers, its own config
    other_config: str


@pytest.fixture(scope="module")
def two_platforms(reg: LoggedRegistry, bb: ImageInfo) -> TwoPlatforms:
    """busybox's repository with a second manifest for another architecture beside it."""
    host, manifest = manifest_of(bb)
    config = json.loads((bb.layout / "blobs/sha256" /
                         str(manifest["config"]["digest"])[7:]).read_text())  # type: ignore[index]
    config["architecture"] = OTHER_ARCH
    config_data = json.dumps(config).encode()
    config_digest = reg.put_blob(bb.repo, config_data)
    other = dict(manifest, config={"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": config_digest, "size": len(config_data)})
    other_digest = reg.put_manifest(bb.repo, "other-arch", json.dumps(other).encode(),
                                    OCI_MANIFEST)
    return TwoPlatforms(bb.repo, host, other_digest, config_digest)


def _index(reg: LoggedRegistry, repo: str, tag: str, entries: list[tuple[str, str]],
           **extra: object) -> str:
    """PUT an OCI index of (digest, architecture) entries as repo:tag; returns the reference."""
    manifests = []
    for digest, arch in entries:
        _, _, body = reg.request(f"/v2/{repo}/manifests/{digest}",
                                 headers={"Accept": OCI_MANIFEST})
        manifests.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                          "platform": {"os": "linux", "architecture": arch}})
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, **extra}
    reg.put_manifest(repo, tag, json.dumps(document).encode(), OCI_INDEX)
    return f"{reg.host}/{repo}:{tag}"


def collect_now(c: Ctr, ref: str) -> None:
    """Run the collector to its end: delete a second name of `ref` with --sync."""
    c("images", "tag", ref, "berth-test/collect:now")
    c("images", "rm", "--sync", "berth-test/collect:now")


def test_every_platform_pulled_stays_referenced_by_its_index(
        daemon: Berthd, reg: LoggedRegistry, two_platforms: TwoPlatforms) -> None:
    """`pull --all-platforms`, then a plain pull of the same index: the index's children keep
    their labels by position in the index (as containerd labels them), so the collector keeps
    the other platform's manifest and config. Before, the plain pull renumbered the labels of
    its chosen manifests and the other platform's documents were collected."""
    ns = "index-labels"
    ref = _index(reg, two_platforms.repo, "two-platforms",
                 [(two_platforms.other, OTHER_ARCH), (two_platforms.host,
                                                      images.host_architecture())])
    assert succeeded(berth(daemon.address, "pull", "--plain-http", "--all-platforms", ref,
                           namespace=ns))
    c = Ctr(daemon.address, ns)
    kept = {two_platforms.other, two_platforms.other_config, two_platforms.host}
    assert kept <= content_digests(c)
    assert succeeded(pull(daemon.address, ref, ns))
    collect_now(c, ref)
    assert kept <= content_digests(c)
    c("images", "rm", "--sync", ref)
    assert content_digests(c) == set()


def test_a_manifest_listed_many_times_is_fetched_once(
        daemon: Berthd, reg: LoggedRegistry, two_platforms: TwoPlatforms) -> None:
    """An index naming one manifest 50 times: `pull --all-platforms` fetches it once, and
    `push --all-platforms` puts it once, not once per listing."""
    ns = "index-repeats"
    listed = [(two_platforms.other, OTHER_ARCH)] * 50 + [(two_platforms.host,
                                                          images.host_architecture())]
    ref = _index(reg, two_platforms.repo, "repeats", listed)
    mark = reg.mark()
    assert succeeded(berth(daemon.address, "pull", "--plain-http", "--all-platforms", ref,
                           namespace=ns))
    gets = [h for h in reg.hits(mark) if h.method == "GET"
            and h.path.endswith(f"/manifests/{two_platforms.other}")]
    assert len(gets) == 1, gets
    target = f"{reg.host}/berth-test/repeats:pushed"
    mark = reg.mark()
    assert succeeded(berth(daemon.address, "push", "--plain-http", "--all-platforms",
                           "--ref", target, ref, namespace=ns))
    puts = [h for h in reg.hits(mark) if h.method == "PUT"
            and h.path.endswith(f"/manifests/{two_platforms.other}")]
    assert len(puts) == 1, puts
    Ctr(daemon.address, ns)("images", "rm", "--sync", ref)
