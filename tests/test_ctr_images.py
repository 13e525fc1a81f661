"""The image store through the real `ctr` (containerd 1.6's client) against berthd.

One berthd serves the module; tests run in file order and build on each other the way a person
at a terminal would: pull, look, mount, export, import, remove, restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Ctr, protect, sha256_of
from daemon import Berthd, mounts_under
from images import ImageInfo, rootfs_mismatches

pytestmark = pytest.mark.needs_root


@pytest.fixture(scope="module")
def c(module_berthd: Berthd) -> Ctr:
    return Ctr(module_berthd.address)


def _column(out: str, index: int = 0) -> list[str]:
    return [line.split()[index] for line in out.splitlines()[1:] if line.strip()]


def test_version_and_plugins(c: Ctr) -> None:
    out = c("version").stdout
    assert "Server:" in out and "+berth." in out
    plugins = c("plugins", "ls").stdout
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in plugins.splitlines()[1:]}
    for key in [("io.containerd.content.v1", "content"),
                ("io.containerd.snapshotter.v1", "overlayfs"),
                ("io.containerd.snapshotter.v1", "native"),
                ("io.containerd.metadata.v1", "sqlite"),
                ("io.containerd.differ.v1", "walking"),
                ("io.containerd.grpc.v1", "images"),
                ("io.containerd.grpc.v1", "diff")]:
        assert rows.get(key) == "ok", plugins


def test_namespaces(c: Ctr) -> None:
    c("namespaces", "create", "team-a", "owner=alice")
    c("namespaces", "label", "team-a", "tier=gold")
    out = c("namespaces", "ls").stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("team-a"))
    assert "owner=alice" in line and "tier=gold" in line
    again = c("namespaces", "create", "team-a", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = c("namespaces", "create", "Bad_Name!", check=False)
    assert bad.returncode != 0
    c("namespaces", "rm", "team-a")
    assert "team-a" not in c("namespaces", "ls", "-q").stdout.split()


def test_events_stream(c: Ctr, module_berthd: Berthd) -> None:
    with subprocess.Popen(c.command("events"), stdout=subprocess.PIPE, text=True) as ev:
        try:
            time.sleep(0.5)
            c("namespaces", "create", "evt")
            c("namespaces", "rm", "evt")
            deadline = time.monotonic() + 10
            seen = ""
            assert ev.stdout is not None
            os.set_blocking(ev.stdout.fileno(), False)
            while time.monotonic() < deadline and "/namespaces/delete" not in seen:
                seen += ev.stdout.read() or ""
                time.sleep(0.1)
        finally:
            ev.terminate()
    assert "/namespaces/create" in seen and "/namespaces/delete" in seen, seen
    assert '"name":"evt"' in seen


def test_pull_busybox(c: Ctr, busybox_image: ImageInfo) -> None:
    c("images", "pull", "--plain-http", busybox_image.ref)
    out = c("images", "ls").stdout
    assert busybox_image.ref in out
    names = c("images", "ls", "-q").stdout.split()
    assert busybox_image.ref in names
    check = c("images", "check").stdout
    line = next(ln for ln in check.splitlines() if ln.startswith(busybox_image.ref))
    assert "complete" in line, check


def test_pull_multilayer_and_mount(c: Ctr, multilayer_image: ImageInfo, tmp_path: Path) -> None:
    c("images", "pull", "--plain-http", multilayer_image.ref)
    target = tmp_path / "mnt"
    target.mkdir()
    c("images", "mount", multilayer_image.ref, str(target))
    try:
        assert rootfs_mismatches(target, multilayer_image) == []
        known = target / multilayer_image.known_file.lstrip("/")
        assert hashlib.sha256(known.read_bytes()).hexdigest() == multilayer_image.known_file_sha256
    finally:
        c("images", "unmount", "--rm", str(target))
    assert str(target) not in mounts_under(str(target))
    # the snapshot ctr prepared for the mount is gone with --rm
    assert str(target) not in c("snapshots", "ls").stdout


def test_content_commands(c: Ctr, busybox_image: ImageInfo) -> None:
    out = c("content", "ls").stdout
    digests = _column(out)
    assert digests, out
    manifest = json.loads(c("content", "get", _manifest_digest(c, busybox_image.ref)).stdout)
    layer = manifest["layers"][0]
    blob = c("content", "get", layer["digest"], text=False).stdout
    assert len(blob) == layer["size"]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    missing = c("content", "get", "sha256:" + "0" * 64, check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def _manifest_digest(c: Ctr, ref: str) -> str:
    for line in c("images", "ls").stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == ref:
            return next(x for x in cols if x.startswith("sha256:"))
    raise AssertionError(f"{ref} not listed")


def test_content_active_and_rm(c: Ctr, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    digest = sha256_of(data)
    anchor = protect(c, digest)  # ctr content ingest takes no lease: keep the collector off
    proc = subprocess.Popen(
        c.command("content", "ingest", "--expected-size", str(len(data)),
                  "--expected-digest", digest, "half-done"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(data[: 1 << 20])
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        active = ""
        while time.monotonic() < deadline and "half-done" not in active:
            active = c("content", "active").stdout
            time.sleep(0.1)
        assert "half-done" in active, active
    finally:
        proc.kill()
        proc.wait()
    # resume: a new ingest under the same ref skips what was written and completes the blob
    # (ctr seeks its input to the offset berthd reports, so give it a file)
    src = tmp_path / "blob"
    src.write_bytes(data)
    with src.open("rb") as f:
        subprocess.run(c.command("content", "ingest", "--expected-size", str(len(data)),
                                 "--expected-digest", digest, "half-done"),
                       stdin=f, check=True, capture_output=True)
    assert digest in c("content", "ls", "-q").stdout.split()
    assert "half-done" not in c("content", "active").stdout
    c("content", "rm", digest, anchor)
    assert digest not in c("content", "ls", "-q").stdout.split()


def test_content_ingest_digest_mismatch_stores_nothing(c: Ctr) -> None:
    data = b"hello berth\n"
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = c("content", "ingest", "--expected-size", str(len(data)), "--expected-digest", wrong,
          "bad-ref", input=data, check=False, text=False)
    assert r.returncode != 0
    assert b"digest" in r.stderr
    assert wrong not in c("content", "ls", "-q").stdout.split()


def test_snapshot_commands(c: Ctr, tmp_path: Path) -> None:
    # ctr makes these snapshots under no lease: a collection (the one `snapshots diff` sets off
    # when it drops its lease, say) may remove them, as containerd's would. GC roots they are.
    root = "containerd.io/gc.root=test"
    c("snapshots", "prepare", "base-active")
    c("snapshots", "label", "base-active", root)
    mounts = c("snapshots", "mounts", str(tmp_path / "x"), "base-active").stdout
    assert mounts.startswith("mount -t bind"), mounts
    target = tmp_path / "m"
    target.mkdir()
    subprocess.run(["sh", "-c", f"{mounts.strip().replace(str(tmp_path / 'x'), str(target))}"],
                   check=True)
    try:
        (target / "greeting").write_text("hello\n")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    c("snapshots", "commit", "base", "base-active")
    c("snapshots", "label", "base", root)
    c("snapshots", "prepare", "child", "base")
    c("snapshots", "label", "child", root)
    child_mounts = c("snapshots", "mounts", str(target), "child").stdout
    assert "overlay" in child_mounts and "lowerdir=" in child_mounts
    c("snapshots", "view", "base-view", "base")
    c("snapshots", "label", "base-view", root)
    info = json.loads(c("snapshots", "info", "child").stdout)
    assert info["Parent"] == "base" and info["Kind"] == "Active"
    usage = c("snapshots", "usage").stdout
    assert "base" in usage
    tree = c("snapshots", "tree").stdout
    assert "base" in tree and "child" in tree
    ls = c("snapshots", "ls").stdout
    assert {"base", "child", "base-view"} <= set(_column(ls))
    busy = c("snapshots", "rm", "base", check=False)
    assert busy.returncode != 0
    # a diff of child against base (no changes yet) is a valid, empty layer
    diff = c("snapshots", "diff", "child", text=False)
    assert diff.returncode == 0
    c("snapshots", "rm", "child", "base-view")
    c("snapshots", "rm", "base")
    assert not {"base", "child", "base-view"} & set(_column(c("snapshots", "ls").stdout))


def test_leases(c: Ctr) -> None:
    out = c("leases", "create", "--id", "keep-me", "purpose=test").stdout
    assert "keep-me" in out
    assert "keep-me" in c("leases", "ls").stdout
    c("leases", "rm", "keep-me")
    assert "keep-me" not in c("leases", "ls").stdout
    assert c("leases", "rm", "keep-me", check=False).returncode != 0


def test_export_import(c: Ctr, busybox_image: ImageInfo, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    c("images", "export", str(archive), busybox_image.ref)
    assert archive.stat().st_size > 100_000
    ns = c.in_namespace("imported")
    ns("images", "import", str(archive))
    assert busybox_image.ref in ns("images", "ls", "-q").stdout.split()
    target = tmp_path / "mnt"
    target.mkdir()
    ns("images", "mount", busybox_image.ref, str(target))
    try:
        assert (target / "bin" / "busybox").stat().st_size > 100_000
    finally:
        ns("images", "unmount", "--rm", str(target))
    ns("images", "rm", "--sync", busybox_image.ref)
    assert ns("content", "ls", "-q").stdout.split() == []
    assert _column(ns("snapshots", "ls").stdout) == []


def test_restart_keeps_everything(c: Ctr, module_berthd: Berthd, busybox_image: ImageInfo,
                                  multilayer_image: ImageInfo, tmp_path: Path) -> None:
    before = (c("images", "ls", "-q").stdout, c("content", "ls", "-q").stdout,
              c("snapshots", "ls").stdout)
    module_berthd.restart()
    after = (c("images", "ls", "-q").stdout, c("content", "ls", "-q").stdout,
             c("snapshots", "ls").stdout)
    assert before == after
    module_berthd.restart(hard=True)
    assert (c("images", "ls", "-q").stdout, c("content", "ls", "-q").stdout,
            c("snapshots", "ls").stdout) == before
    target = tmp_path / "mnt"
    target.mkdir()
    c("images", "mount", multilayer_image.ref, str(target))
    try:
        assert rootfs_mismatches(target, multilayer_image) == []
    finally:
        c("images", "unmount", "--rm", str(target))


def test_rm_sync_removes_all_content_and_snapshots(c: Ctr, busybox_image: ImageInfo,
                                                   multilayer_image: ImageInfo) -> None:
    c("images", "rm", "--sync", busybox_image.ref, multilayer_image.ref)
    assert c("images", "ls", "-q").stdout.split() == []
    assert c("content", "ls", "-q").stdout.split() == []
    assert _column(c("snapshots", "ls").stdout) == []
    missing = c("images", "rm", busybox_image.ref, check=False)
    assert "not found" in (missing.stderr + missing.stdout)
