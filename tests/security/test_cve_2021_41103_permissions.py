"""Nothing berthd keeps under its root and state is open to other users (CVE-2021-41103 class).

containerd before 1.4.11/1.5.7 left its root and plugin directories traversable, so a local
unprivileged user could read container specs (their environment: secrets) and reach setuid
binaries in unpacked images by path. Berth must keep, as containerd 1.6 does: root 0700, state
0711, bundles 0700 with a 0600 ``config.json``, snapshot and content directories 0700, and its
databases 0600; and a root left open by an older Berth must be restricted when berthd starts.

Each test runs a real berthd on a base directory any user may traverse (pytest's own tmp_path is
0700, which would hide what Berth's modes allow), runs a busybox container with the real ``ctr``,
checks the modes, walks the trees for anything another user could list or read, and tries as
``nobody`` (setpriv) to read ``config.json`` and ``meta.db`` and to reach the container's files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Berthd, unmount_under
from images import ImageInfo
from test_ctr_tasks import Session

from berth import namespaces
from berth.runtime import bundle as bundles

pytestmark = pytest.mark.needs_root

NOBODY = 65534
TASKS = "io.containerd.runtime.v2.task"
CONTENT = "io.containerd.content.v1.content"
METADATA = "io.containerd.metadata.v1.sqlite"
OVERLAY = "io.containerd.snapshotter.v1.overlayfs"
NATIVE = "io.containerd.snapshotter.v1.native"


# -- what another user can do ----------------------------------------------------------------


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "--", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def assert_denied(*argv: str) -> None:
    done = as_nobody(*argv)
    assert done.returncode != 0 and "Permission denied" in done.stderr, \
        f"nobody could run {argv}: rc={done.returncode} {done.stdout!r} {done.stderr!r}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def exposed(top: Path) -> list[str]:
    """Entries at or below ``top`` that a user who is neither their owner nor in their group
    can list, read or write: every directory above them lets others through (o+x) and they
    themselves allow others r or w. Mount points are not entered (a rootfs is the snapshot)."""
    def reachable(path: Path) -> bool:
        return all(_mode(p) & stat.S_IXOTH for p in path.parents)

    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not os.path.ismount(here / d)]
        for path in [here, *(here / f for f in filenames)]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or not reachable(path):
                continue
            if stat.S_IMODE(st.st_mode) & (stat.S_IROTH | stat.S_IWOTH):
                found.append(f"{stat.filemode(st.st_mode)} {path}")
    return found


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory under /tmp that every user may traverse, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="berth-perms-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        control = base / "control"
        control.write_text("readable\n")
        os.chmod(control, 0o644)
        # The test can see a leak at all: nobody reads a 0644 file in the base.
        assert as_nobody("cat", str(control)).stdout == "readable\n"
        yield base
    finally:
        unmount_under(str(base))
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def berthd(open_base: Path) -> Iterator[Berthd]:
    with Berthd(open_base / "d") as daemon:
        yield daemon


@pytest.fixture
def session(berthd: Berthd, busybox_image: ImageInfo) -> Iterator[Session]:
    s = Session(berthd, "berth", busybox_image)
    try:
        s.pull()
        yield s
    finally:
        s.cleanup()


# -- checks ----------------------------------------------------------------------------------


def check_locked_down(s: Session, cid: str) -> None:
    d = s.berthd
    root, state, bundle = d.root, d.state, s.bundle(cid)
    expected = {
        root: 0o700,
        state: 0o711,
        root / "tmpmounts": 0o700,
        root / CONTENT: 0o700,
        root / CONTENT / "blobs": 0o700,
        root / CONTENT / "blobs" / "sha256": 0o700,
        root / CONTENT / "ingest": 0o700,
        root / METADATA: 0o700,
        root / METADATA / "meta.db": 0o600,
        root / OVERLAY: 0o700,
        root / OVERLAY / "snapshots": 0o700,
        root / OVERLAY / "metadata.db": 0o600,
        root / NATIVE: 0o700,
        root / NATIVE / "snapshots": 0o700,
        state / TASKS: 0o711,
        state / TASKS / s.namespace: 0o711,
        bundle: 0o700,
        bundle / "config.json": 0o600,
    }
    for name in ("-wal", "-shm"):  # SQLite's own files, when they exist, as the database
        for db in (root / METADATA / "meta.db", root / OVERLAY / "metadata.db"):
            if Path(f"{db}{name}").exists():
                expected[Path(f"{db}{name}")] = 0o600
    modes = {str(p): oct(_mode(p)) if p.exists() else "missing" for p in expected}
    assert modes == {str(p): oct(m) for p, m in expected.items()}

    assert exposed(root) == []
    assert exposed(state) == []

    # What the advisory is about, tried for real as another user.
    busybox = bundle / "rootfs" / "bin" / "busybox"
    assert busybox.exists()  # the rootfs is mounted: the file is there for root
    assert_denied("cat", str(bundle / "config.json"))
    assert_denied("cat", str(root / METADATA / "meta.db"))
    assert_denied("stat", str(busybox))
    layers = sorted((root / OVERLAY / "snapshots").glob("*/fs/bin/busybox"))
    assert layers
    assert_denied("stat", str(layers[0]))


def test_fresh_root_is_locked_down(session: Session) -> None:
    s = session
    cid = s.run_detached("perms", "sleep", "1000")
    check_locked_down(s, cid)
    # The task works from its locked bundle.
    assert s.c("tasks", "exec", "--exec-id", "probe", cid, "echo", "ok").stdout == "ok\n"


def _open_up(s: Session, cid: str) -> None:
    """Give root, state and a running task's bundle the modes Berth used to make them with."""
    d = s.berthd
    old_modes = {
        d.root: 0o711,
        d.root / CONTENT: 0o755,
        d.root / CONTENT / "blobs": 0o755,
        d.root / CONTENT / "blobs" / "sha256": 0o755,
        d.root / CONTENT / "ingest": 0o755,
        d.root / METADATA: 0o755,
        d.root / OVERLAY: 0o755,
        d.root / NATIVE: 0o755,
        d.root / "tmpmounts": 0o755,
        d.state / TASKS / s.namespace: 0o755,
        s.bundle(cid): 0o711,
        s.bundle(cid) / "config.json": 0o644,
    }
    for path, mode in old_modes.items():
        if path.exists():  # tmpmounts: not made by older versions
            os.chmod(path, mode)
    for db in (d.root / METADATA / "meta.db", d.root / OVERLAY / "metadata.db"):
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if path.exists():
                os.chmod(path, 0o644)


def test_open_root_is_restricted_when_berthd_starts(session: Session) -> None:
    s = session
    cid = s.run_detached("upgrade", "sleep", "1000")
    pid = s.tasks()[cid][0]
    s.berthd.stop()  # SIGTERM: the task keeps running, as across an upgrade of berthd
    _open_up(s, cid)
    # As an older Berth left things: the container's spec is anyone's to read.
    assert "process" in as_nobody("cat", str(s.bundle(cid) / "config.json")).stdout

    s.berthd.start()
    check_locked_down(s, cid)
    assert s.tasks()[cid] == (pid, "RUNNING")  # recovered, from its restricted bundle


# -- bundles of user-namespaced containers ---------------------------------------------------


def _spec(gid_mappings: list[dict[str, int]] | None = None) -> bytes:
    linux: dict[str, object] = {"namespaces": [{"type": "mount"}]}
    if gid_mappings is not None:
        linux["gidMappings"] = gid_mappings
    return json.dumps({"ociVersion": "1.0.2", "linux": linux}).encode()


def test_userns_bundle_is_open_to_the_namespaces_root_group_only(tmp_path: Path) -> None:
    # runc reaches the rootfs from inside the user namespace: the bundle's group is the host
    # group of the container's root, with search permission only (containerd's 0710).
    with namespaces.use("perms"):
        plain = bundles.create(str(tmp_path), "plain", _spec())
        remapped = bundles.create(str(tmp_path), "remapped", _spec(
            [{"containerID": 0, "hostID": 100000, "size": 65536}]))
        broken = bundles.create(str(tmp_path), "broken", b"not json")
    assert (_mode(Path(plain.path)), os.stat(plain.path).st_gid) == (0o700, 0)
    assert (_mode(Path(remapped.path)), os.stat(remapped.path).st_gid) == (0o710, 100000)
    assert _mode(Path(broken.path)) == 0o700
    for b in (plain, remapped, broken):
        assert _mode(Path(b.path) / "config.json") == 0o600
    assert _mode(tmp_path / "perms") == 0o711


def test_load_all_restricts_bundles_an_older_berth_left_open(tmp_path: Path) -> None:
    with namespaces.use("perms"):
        old = bundles.create(str(tmp_path), "old", _spec())
        old_userns = bundles.create(str(tmp_path), "old-userns", _spec(
            [{"containerID": 0, "hostID": 200000, "size": 65536}]))
    for b in (old, old_userns):  # as Berth made them before
        os.chown(b.path, 0, 0)
        os.chmod(b.path, 0o711)
        os.chmod(Path(b.path) / "config.json", 0o644)
    os.chmod(tmp_path / "perms", 0o755)

    found = bundles.load_all(str(tmp_path))
    assert sorted(b.id for b in found) == ["old", "old-userns"]
    assert _mode(tmp_path / "perms") == 0o711
    assert _mode(Path(old.path)) == 0o700
    assert (_mode(Path(old_userns.path)), os.stat(old_userns.path).st_gid) == (0o710, 200000)
    for b in (old, old_userns):
        assert _mode(Path(b.path) / "config.json") == 0o600
