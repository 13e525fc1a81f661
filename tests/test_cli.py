"""The `berth` CLI: run in-process (`berth.cli.app.run`, output through capsys) or as the
installed `.venv/bin/berth`, against a real berthd, a real registry, the real `ctr` and skopeo.

Images for the image-store commands get into berthd with `ctr images pull`, so those tests do
not depend on `berth pull` (the daemon's Transfer service), which has tests of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd, mounts_under
from images import ImageInfo, make_tar, rootfs_mismatches, write_layout
from registry import Registry, loopback_env

from berth.cli import humanize, progress
from berth.cli.app import run
from berth.cli.archive import ANNOTATION_IMAGE_NAME
from berth.cli.images import split_name
from berth.oci.image import Descriptor
from berth.transfer.progress import Progress

REPO = Path(__file__).resolve().parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"
SKOPEO = "/usr/bin/skopeo"


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


class Berth:
    """`berth --address A --namespace NS ARGS...` in this process, its output captured."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str],
                 namespace: str = "default") -> None:
        self.address, self.capsys, self.namespace = address, capsys, namespace

    def __call__(self, *args: str, ok: bool = True) -> Result:
        self.capsys.readouterr()
        code = run(["--address", self.address, "--namespace", self.namespace, *args])
        out, err = self.capsys.readouterr()
        result = Result(code, out, err)
        if ok:
            assert code == 0, result
        return result

    def ns(self, namespace: str) -> Berth:
        return Berth(self.address, self.capsys, namespace)


def berth_process(address: str, *args: str, input: str | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `berth` as a child process (stdout is a pipe: not a terminal)."""
    return subprocess.run([str(BERTH), "--address", address, *args], input=input,
                          capture_output=True, text=True, timeout=300,
                          env=loopback_env(env), check=False)


def one_error_line(r: Result, *words: str) -> None:
    """Failed with status 1 and exactly one line on stderr mentioning ``words``."""
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r
    assert lines[0].startswith("berth:"), r
    assert "Traceback" not in r.err
    for w in words:
        assert w in lines[0], r


def skopeo(*args: str) -> str:
    proc = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True,
                          env=loopback_env(), check=False, timeout=300)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def layout_sizes(info: ImageInfo) -> tuple[str, int]:
    """(manifest digest, config + layer bytes) of a test image's cached OCI layout."""
    index = json.loads((info.layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == info.tag)
    manifest = json.loads((info.layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    return desc["digest"], manifest["config"]["size"] + sum(x["size"] for x in manifest["layers"])


def mounted_rootfs_problems(c: Ctr, ref: str, target: Path, info: ImageInfo) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    c("images", "mount", ref, str(target))
    try:
        return rootfs_mismatches(target, info)
    finally:
        c("images", "unmount", "--rm", str(target))
        assert str(target) not in mounts_under(str(target))


# -- no daemon needed ----------------------------------------------------------------------


def test_human_sizes_and_ages() -> None:
    assert humanize.size(0) == "0 B"
    assert humanize.size(1023) == "1023 B"
    assert humanize.size(4 * 1024 * 1024 + 200 * 1024) == "4.2 MiB"
    assert humanize.age(0.5) == "just now"
    assert humanize.age(1) == "1 second ago"
    assert humanize.age(3 * 3600 + 5) == "3 hours ago"
    assert humanize.age(2 * 86400) == "2 days ago"
    assert humanize.short_digest("sha256:" + "ab" * 32) == "ab" * 6


def test_split_name() -> None:
    assert split_name("docker.io/library/busybox:latest") == ("docker.io/library/busybox",
                                                              "latest")
    assert split_name("127.0.0.1:5000/x/y:1.0") == ("127.0.0.1:5000/x/y", "1.0")
    assert split_name("127.0.0.1:5000/x/y@sha256:" + "a" * 64) == ("127.0.0.1:5000/x/y",
                                                                  "<none>")
    assert split_name("plain") == ("plain", "<none>")


def _msg(kind: str, status: str, digest: str = "", offset: int = 0, total: int = 0,
         name: str = "") -> Progress:
    return Progress(kind, status, Descriptor("", digest, total), offset, total, name)


def test_lines_view_one_line_per_change_and_at_most_one_per_second() -> None:
    out = io.StringIO()
    now = [0.0]
    view = progress.LinesView(out, clock=lambda: now[0])
    d = "sha256:" + "1a2b3c4d5e6f" + "0" * 52
    mib = 1 << 20
    script = [
        (0.0, _msg("image", "resolving", name="busybox")),
        (0.0, _msg("layer", "waiting", d, 0, 40 * mib)),
        (0.1, _msg("layer", "downloading", d, 0, 40 * mib)),
        (0.4, _msg("layer", "downloading", d, 5 * mib, 40 * mib)),  # too soon: not shown
        (1.2, _msg("layer", "downloading", d, int(12.3 * mib), 40 * mib)),
        (1.3, _msg("layer", "downloading", d, 13 * mib, 40 * mib)),  # too soon
        (2.0, _msg("layer", "extracting", d, 0, 40 * mib)),
        (2.5, _msg("layer", "done", d, 40 * mib, 40 * mib)),
        (2.5, _msg("image", "done", name="docker.io/library/busybox:latest")),
    ]
    for t, m in script:
        now[0] = t
        view.update(m)
    assert out.getvalue().splitlines() == [
        "image busybox resolving",
        "layer sha256:1a2b3c4d5e6f… waiting",
        "layer sha256:1a2b3c4d5e6f… downloading 0 B/40.0 MiB",
        "layer sha256:1a2b3c4d5e6f… downloading 12.3 MiB/40.0 MiB",
        "layer sha256:1a2b3c4d5e6f… extracting",
        "layer sha256:1a2b3c4d5e6f… done",
    ]


def test_follow_returns_the_final_message_and_requires_one() -> None:
    final = _msg("image", "done", "sha256:" + "f" * 64, name="x")
    assert progress.follow([_msg("layer", "done", "sha256:" + "0" * 64), final], None) is final
    code_err = None
    try:
        progress.follow([_msg("layer", "done", "sha256:" + "0" * 64)], None)
    except Exception as err:
        code_err = err
    assert code_err is not None and "without naming the image" in str(code_err)


def test_daemon_not_running_is_one_clear_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    r = Berth(str(tmp_path / "nothing.sock"), capsys)("images", ok=False)
    one_error_line(r, "cannot reach berthd", "nothing.sock", "is it running")
    proc = berth_process(str(tmp_path / "nothing.sock"), "rmi", "busybox")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc
    assert "cannot reach berthd" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = Berth(str(tmp_path / "x.sock"), capsys)
    assert b("no-such-command", ok=False).code == 2
    one_error_line(b("images", "--format", "yaml", ok=False), "--format")
    one_error_line(b("pull", "Not/A/Valid:Ref!", ok=False), "invalid reference")
    one_error_line(b("pull", "--platform", "a/b/c/d", "busybox", ok=False), "invalid platform")


# -- login / logout ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[Registry]:
    with Registry(auth=("berth", "s3cret")) as reg:
        yield reg


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "docker" / "config.json"


def test_login_checks_the_credentials_then_stores_them(
        auth_registry: Registry, docker_config: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    b = Berth(str(tmp_path / "unused.sock"), capsys)
    host = auth_registry.host
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong\n"))
    bad = b("login", host, "-u", "berth", "--password-stdin", ok=False)
    one_error_line(bad, "login to", host, "rejected")
    assert not docker_config.exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    good = b("login", host, "-u", "berth", "--password-stdin")
    assert "Login Succeeded" in good.out
    doc = json.loads(docker_config.read_text())
    assert doc["auths"][host]["auth"] == "YmVydGg6czNjcmV0"  # base64("berth:s3cret")
    assert docker_config.stat().st_mode & 0o077 == 0
    # -p works too (with a warning), and replaces the entry
    again = b("login", host, "-u", "berth", "-p", "s3cret")
    assert "insecure" in again.err
    assert list(json.loads(docker_config.read_text())["auths"]) == [host]
    out = b("logout", host).out
    assert "Removing login credentials" in out
    assert json.loads(docker_config.read_text())["auths"] == {}
    assert "Not logged in" in b("logout", host).out


def test_login_errors_are_one_line(auth_registry: Registry, docker_config: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    b = Berth(str(tmp_path / "unused.sock"), capsys)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    one_error_line(b("login", auth_registry.host, "-u", "berth", ok=False), "no password")
    one_error_line(b("login", auth_registry.host, "--password-stdin", ok=False), "--username")
    monkeypatch.setattr(sys, "stdin", io.StringIO("b"))
    one_error_line(b("login", "127.0.0.1:1", "-u", "a", "--password-stdin", ok=False),
                   "unreachable")
    assert not docker_config.exists()


# -- against berthd ------------------------------------------------------------------------

needs_daemon = pytest.mark.needs_root


@pytest.fixture(scope="module")
def pulled(module_berthd: Berthd, busybox_image: ImageInfo,
           multilayer_image: ImageInfo) -> Berthd:
    """The module's berthd with both test images pulled by the real ctr."""
    c = Ctr(module_berthd.address)
    for info in (busybox_image, multilayer_image):
        c("images", "pull", "--plain-http", info.ref)
    return module_berthd


@pytest.fixture
def b(pulled: Berthd, capsys: pytest.CaptureFixture[str]) -> Berth:
    return Berth(pulled.address, capsys)


@needs_daemon
def test_images_table_quiet_and_json(b: Berth, busybox_image: ImageInfo,
                                     multilayer_image: ImageInfo) -> None:
    lines = b("images").out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "PLATFORM",
                                "SIZE"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    for info in (busybox_image, multilayer_image):
        repo = info.ref.rsplit(":", 1)[0]
        digest, size = layout_sizes(info)
        row = rows[repo]
        assert row[1] == info.tag
        assert row[2] == digest[7:19]
        assert " ".join(row[3:-3]).endswith("ago") or row[3] == "just"
        assert row[-3] == f"linux/{os.uname().machine.replace('x86_64', 'amd64')}"
        assert " ".join(row[-2:]) == humanize.size(size)
    assert sorted(b("images", "-q").out.split()) == sorted([busybox_image.ref,
                                                            multilayer_image.ref])
    data = {x["name"]: x for x in json.loads(b("images", "--format", "json").out)}
    digest, size = layout_sizes(busybox_image)
    assert data[busybox_image.ref]["digest"] == digest
    assert data[busybox_image.ref]["size"] == size
    assert data[busybox_image.ref]["repository"] + ":latest" == busybox_image.ref
    # the nerdctl-style alias
    assert b("image", "ls", "-q").out == b("images", "-q").out


@needs_daemon
def test_tag_inspect_rmi(b: Berth, pulled: Berthd, busybox_image: ImageInfo,
                         multilayer_image: ImageInfo) -> None:
    digest, _ = layout_sizes(busybox_image)
    b("tag", busybox_image.ref, "mybox:1")
    b("image", "tag", busybox_image.ref, "127.0.0.1:1/other/box")
    names = b("images", "-q").out.split()
    assert "docker.io/library/mybox:1" in names
    assert "127.0.0.1:1/other/box:latest" in names
    # Tagging onto an existing name moves it (AlreadyExists -> update), like nerdctl.
    b("tag", multilayer_image.ref, "mybox:1")
    doc = json.loads(b("inspect", "mybox:1").out)
    assert len(doc) == 1
    assert doc[0]["name"] == "docker.io/library/mybox:1"
    assert doc[0]["target"]["digest"] == layout_sizes(multilayer_image)[0]
    assert len(doc[0]["manifest"]["layers"]) == multilayer_image.layer_count
    assert doc[0]["config"]["rootfs"]["type"] == "layers"
    assert doc[0]["config"]["config"]["Cmd"] == list(multilayer_image.cmd)
    both = json.loads(b("inspect", busybox_image.ref, "127.0.0.1:1/other/box").out)
    assert [d["target"]["digest"] for d in both] == [digest, digest]
    # rmi: normalized names find the image; a missing one is one line and exit 1.
    assert b("rmi", "mybox:1", "127.0.0.1:1/other/box").out.split() == [
        "docker.io/library/mybox:1", "127.0.0.1:1/other/box:latest"]
    one_error_line(b("rmi", "mybox:1", ok=False), "no such image", "mybox:1")
    one_error_line(b("inspect", "nothing-here", ok=False), "no such image")
    one_error_line(b("tag", "nothing-here", "x", ok=False), "no such image")
    # the originals are untouched
    assert busybox_image.ref in b("images", "-q").out.split()


def _save(b: Berth, tmp_path: Path, fmt: str, *refs: str) -> Path:
    out = tmp_path / f"saved-{fmt}.tar"
    b("save", "--format", fmt, "-o", str(out), *refs)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    return out


@needs_daemon
def test_save_docker_archive_reads_with_skopeo(b: Berth, busybox_image: ImageInfo,
                                               multilayer_image: ImageInfo,
                                               tmp_path: Path) -> None:
    archive = _save(b, tmp_path, "docker", busybox_image.ref, multilayer_image.ref)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    assert {"manifest.json", "repositories", "index.json", "oci-layout"} <= names
    assert sorted(e["RepoTags"][0] for e in manifest) == sorted([busybox_image.ref,
                                                                 multilayer_image.ref])
    multi = next(e for e in manifest if e["RepoTags"] == [multilayer_image.ref])
    assert len(multi["Layers"]) == multilayer_image.layer_count
    assert all(p in names for p in multi["Layers"] + [multi["Config"]])
    assert multilayer_image.ref.rsplit(":", 1)[0] in repositories
    for info in (busybox_image, multilayer_image):
        seen = json.loads(skopeo("inspect", f"docker-archive:{archive}:{info.ref}"))
        assert len(seen["Layers"]) == info.layer_count
        oci_dir = tmp_path / f"oci-{info.repo.replace('/', '-')}"
        skopeo("copy", "--quiet", f"docker-archive:{archive}:{info.ref}", f"oci:{oci_dir}:x")
        assert (oci_dir / "index.json").exists()
        assert len(json.loads(skopeo("inspect", f"oci:{oci_dir}:x"))["Layers"]) == \
            info.layer_count


@needs_daemon
def test_save_oci_layout_reads_with_skopeo(b: Berth, busybox_image: ImageInfo,
                                           tmp_path: Path) -> None:
    archive = _save(b, tmp_path, "oci", busybox_image.ref)
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        assert "manifest.json" not in tar.getnames()
        for m in tar.getmembers():
            if m.name.startswith("blobs/sha256/") and m.isfile():
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                assert "sha256:" + hashlib.sha256(data).hexdigest() == \
                    "sha256:" + m.name.rpartition("/")[2]
    [entry] = index["manifests"]
    assert entry["digest"] == layout_sizes(busybox_image)[0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert entry["annotations"]["io.containerd.image.name"] == busybox_image.ref
    seen = json.loads(skopeo("inspect", f"oci-archive:{archive}"))
    assert seen["Digest"] == layout_sizes(busybox_image)[0]


@needs_daemon
def test_save_errors(b: Berth, tmp_path: Path, busybox_image: ImageInfo) -> None:
    one_error_line(b("save", "-o", str(tmp_path / "x.tar"), "nothing-here", ok=False),
                   "no such image")
    one_error_line(b("save", "--all-platforms", "-o", str(tmp_path / "x.tar"),
                     busybox_image.ref, ok=False), "--format oci")
    one_error_line(b("save", "-o", str(tmp_path / "no" / "dir" / "x.tar"), busybox_image.ref,
                     ok=False), "No such file or directory")
    assert list(tmp_path.iterdir()) == []


@needs_daemon
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_load_skopeo_archive_then_mount(b: Berth, pulled: Berthd, multilayer_image: ImageInfo,
                                        tmp_path: Path, transport: str) -> None:
    archive = tmp_path / "image.tar"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{multilayer_image.ref}",
           f"{transport}:{archive}:{multilayer_image.ref}")
    ns = f"load-{transport}"
    loaded = b.ns(ns)("load", "-i", str(archive))
    assert loaded.out.splitlines() == [f"Loaded image: {multilayer_image.ref}"]
    c = Ctr(pulled.address, ns)
    assert c("images", "ls", "-q").stdout.split() == [multilayer_image.ref]
    # Unpacked by the load itself: the chain of snapshots is there before any mount.
    snapshots = c("snapshots", "ls").stdout.splitlines()[1:]
    assert len([s for s in snapshots if "Committed" in s]) == multilayer_image.layer_count
    # The lease is gone, yet garbage collection keeps everything the image needs.
    assert c("leases", "ls", "-q").stdout.split() == []
    c("content", "prune", "references", check=False)
    assert mounted_rootfs_problems(c, multilayer_image.ref, tmp_path / "mnt",
                                   multilayer_image) == []
    # ... and rmi --sync takes it all away again.
    b.ns(ns)("rmi", "--sync", multilayer_image.ref)
    assert c("content", "ls", "-q").stdout.split() == []
    assert c("snapshots", "ls").stdout.splitlines()[1:] == []


@needs_daemon
@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_then_load_round_trip(b: Berth, pulled: Berthd, busybox_image: ImageInfo,
                                   tmp_path: Path, fmt: str) -> None:
    if fmt == "oci":
        archive = _save(b, tmp_path, fmt, busybox_image.ref)
    else:  # to standard output, as `berth save busybox > FILE`
        archive = tmp_path / "stdout.tar"
        with open(archive, "wb") as f:
            r = subprocess.run([str(BERTH), "--address", pulled.address, "save",
                                busybox_image.ref], stdout=f, stderr=subprocess.PIPE,
                               env=loopback_env(), check=False, timeout=300)
        assert r.returncode == 0, r.stderr
    ns = f"round-trip-{fmt}"
    with open(archive, "rb") as f:  # through standard input, as `berth load < FILE`
        r = subprocess.run([str(BERTH), "--address", pulled.address, "--namespace", ns,
                            "load", "-q"], stdin=f, capture_output=True, text=True,
                           env=loopback_env(), check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [busybox_image.ref]
    images = json.loads(b.ns(ns)("images", "--format", "json").out)
    assert [i["digest"] for i in images] == [layout_sizes(busybox_image)[0]]
    c = Ctr(pulled.address, ns)
    assert mounted_rootfs_problems(c, busybox_image.ref, tmp_path / "mnt", busybox_image) == []
    b.ns(ns)("rmi", "--sync", busybox_image.ref)


@needs_daemon
def test_load_gzipped_docker_archive(b: Berth, pulled: Berthd, busybox_image: ImageInfo,
                                     tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{busybox_image.ref}",
           f"docker-archive:{archive}:{busybox_image.ref}")
    subprocess.run(["gzip", str(archive)], check=True)
    ns = "load-gzip"
    b.ns(ns)("load", "-i", f"{archive}.gz")
    c = Ctr(pulled.address, ns)
    assert mounted_rootfs_problems(c, busybox_image.ref, tmp_path / "mnt", busybox_image) == []
    b.ns(ns)("rmi", "--sync", busybox_image.ref)


@needs_daemon
def test_load_errors_are_one_line(b: Berth, pulled: Berthd, tmp_path: Path,
                                  busybox_image: ImageInfo) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    one_error_line(b("load", "-i", str(garbage), ok=False), "not a tar archive")
    one_error_line(b("load", "-i", str(tmp_path / "missing.tar"), ok=False), "cannot read")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info, io.BytesIO(b""))
    one_error_line(b("load", "-i", str(empty), ok=False), "neither a docker archive")
    # Layers the daemon has never seen (so the archive's bytes are what gets checked).
    good_layer = make_tar({"/hello": os.urandom(64)})
    layout = tmp_path / "layout"
    manifest = write_layout(layout, "latest", [good_layer, make_tar({"/x": os.urandom(64)})])
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"][ANNOTATION_IMAGE_NAME] = "example.com/tampered:1"
    (layout / "index.json").write_text(json.dumps(index))
    # A blob that does not match its digest: the daemon refuses it on commit.
    blob = layout / "blobs/sha256" / manifest["layers"][1]["digest"][7:]  # type: ignore[index]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as tar:
        tar.add(layout, arcname=".")
    ns = "tampered"
    one_error_line(b.ns(ns)("load", "-i", str(tampered), ok=False), "digest")
    c = Ctr(pulled.address, ns)
    assert c("images", "ls", "-q").stdout.split() == []
    assert c("snapshots", "ls").stdout.splitlines()[1:] == []
    # A config whose diff IDs do not match the layers: nothing is committed or named.
    lying = tmp_path / "lying"
    write_layout(lying, "latest", [make_tar({"/y": os.urandom(64)})])
    index = json.loads((lying / "index.json").read_text())
    index["manifests"][0]["annotations"][ANNOTATION_IMAGE_NAME] = "example.com/lying:1"
    (lying / "index.json").write_text(json.dumps(index))
    m_path = lying / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    m = json.loads(m_path.read_text())
    c_path = lying / "blobs/sha256" / m["config"]["digest"][7:]
    config = json.loads(c_path.read_text())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    c_data = json.dumps(config).encode()
    c_path.unlink()
    m["config"]["digest"] = "sha256:" + hashlib.sha256(c_data).hexdigest()
    m["config"]["size"] = len(c_data)
    (lying / "blobs/sha256" / m["config"]["digest"][7:]).write_bytes(c_data)
    m_data = json.dumps(m).encode()
    m_path.unlink()
    index["manifests"][0].update(digest="sha256:" + hashlib.sha256(m_data).hexdigest(),
                                 size=len(m_data))
    (lying / "blobs/sha256" / index["manifests"][0]["digest"][7:]).write_bytes(m_data)
    (lying / "index.json").write_text(json.dumps(index))
    lying_tar = tmp_path / "lying.tar"
    with tarfile.open(lying_tar, "w") as tar:
        tar.add(lying, arcname=".")
    one_error_line(b.ns(ns)("load", "-i", str(lying_tar), ok=False), "diff ID")
    assert c("images", "ls", "-q").stdout.split() == []
    assert c("snapshots", "ls").stdout.splitlines()[1:] == []


# -- pull / push (the daemon's Transfer service) --------------------------------------------

@needs_daemon
def test_pull_plain_progress_then_mount(berthd: Berthd, multilayer_image: ImageInfo,
                                        tmp_path: Path) -> None:
    r = berth_process(berthd.address, "pull", "--plain-http", multilayer_image.ref)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith(f"Pulled {multilayer_image.ref} sha256:")
    last: dict[str, str] = {}  # each layer's last status
    for ln in lines:
        if ln.startswith("layer sha256:"):
            _kind, digest, status = ln.split()[:3]
            last[digest] = status
    assert list(last.values()) == ["done"] * multilayer_image.layer_count, r.stdout
    assert any(ln.endswith(" extracting") for ln in lines), r.stdout
    assert "\x1b[" not in r.stdout  # no terminal codes when not on a terminal
    c = Ctr(berthd.address)
    assert mounted_rootfs_problems(c, multilayer_image.ref, tmp_path / "mnt",
                                   multilayer_image) == []


@needs_daemon
def test_pull_quiet_prints_name_and_digest(berthd: Berthd, busybox_image: ImageInfo) -> None:
    r = berth_process(berthd.address, "pull", "-q", "--plain-http", busybox_image.ref)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{busybox_image.ref}@{layout_sizes(busybox_image)[0]}"]


@needs_daemon
def test_pull_missing_image_is_one_line(berthd: Berthd, registry: Registry) -> None:
    r = berth_process(berthd.address, "pull", "--plain-http", f"{registry.host}/no/such:tag")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r
    assert "not found" in r.stderr


@needs_daemon
def test_pull_and_push_with_login(berthd: Berthd, auth_registry: Registry,
                                  busybox_image: ImageInfo, tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    c = Ctr(berthd.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    target = f"{auth_registry.host}/private/box:1"
    denied = berth_process(berthd.address, "push", "--plain-http", "--ref", target,
                           busybox_image.ref, env=env)
    assert denied.returncode == 1 and "berth login" in denied.stderr, denied
    login = berth_process(berthd.address, "login", auth_registry.host, "-u", "berth",
                          "--password-stdin", input="s3cret\n", env=env)
    assert login.returncode == 0, login.stderr
    pushed = berth_process(berthd.address, "push", "-q", "--plain-http", "--ref", target,
                           busybox_image.ref, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip().endswith(layout_sizes(busybox_image)[0])
    c("images", "rm", "--sync", busybox_image.ref)
    pulled = berth_process(berthd.address, "pull", "--plain-http", target, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert target in c("images", "ls", "-q").stdout.split()


@pytest.mark.parametrize(("argv", "named"), [
    (["run", "--rm", "busybox", "true"], "run"),
    (["-a", "/x.sock", "-n", "ns", "pull", "busybox"], "pull"),
    (["--address", "/x.sock", "--snapshotter", "native", "image", "ls"], "image"),
    (["--namespace=ns", "ps"], "ps"),
    (["--help"], None),
    ([], None),
    (["bogus"], None),
    (["-a", "run"], None),  # "run" is the address here; no command follows
])
def test_only_the_named_command_is_built(argv: list[str], named: str | None) -> None:
    """The CLI builds the command it runs, not all of them (typer reads every command's
    parameters when it builds one: about 100 ms for all of berth's)."""
    from berth.cli.app import build, command_named

    assert command_named(argv) == named
    if named is not None:
        names = {c.name for c in build(named).registered_commands} \
            | {g.name for g in build(named).registered_groups}
        assert names == {named}
