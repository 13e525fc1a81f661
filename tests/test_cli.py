"""The `berth` CLI: run in-process (`berth.cli.app.run`, output through capsys) or as the
installed `.venv/bin/berth`, against a real berthd, a real registry, the real `ctr` and skopeo.

Images for the image-store commands get into berthd with `ctr images pull`, so those tests do
not depend on `berth pull` (the daemon's Transfer service), which has tests of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from registry import loopback_env

from berth.cli import humanize
from berth.cli.app import run
from berth.cli.images import split_name

REPO = Path(__file__).resolve().parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"


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


def layout_sizes(info: ImageInfo) -> tuple[str, int]:
    """(manifest digest, config + layer bytes) of a test image's cached OCI layout."""
    index = json.loads((info.layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == info.tag)
    manifest = json.loads((info.layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    return desc["digest"], manifest["config"]["size"] + sum(x["size"] for x in manifest["layers"])


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
    one_error_line(b("tag", "x", "Not/A/Valid:Ref!", ok=False))


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
