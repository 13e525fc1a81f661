"""Temporary mounts live where only root can reach them, and none outlives a berthd crash.

A temporary mount shows a snapshot (setuid binaries and all), and its mount point takes the
mounted root's mode (0755), so it must sit in a directory only root can traverse: berthd uses
``<root>/tmpmounts`` (0700), as containerd does. A berthd that dies while one is mounted leaves
it behind; the next berthd takes it off and removes its mount point at start-up (containerd's
``mount.CleanupTempMounts``), never deleting anything through a mount it could not take off.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd, mounts_under, unmount_under
from images import ImageInfo

from berth import mount as mountlib
from berth.diff import WalkingDiff
from berth.mount import Mount

pytestmark = pytest.mark.needs_root

LEGACY = "io.containerd.differ.v1.walking"  # where older Berths made the differ's mount points


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _bind(source: Path, target: Path, *, readonly: bool = True) -> None:
    target.mkdir(parents=True, exist_ok=True)
    options = ("rbind", "ro") if readonly else ("rbind", "rw")
    mountlib.mount(Mount("bind", str(source), options), str(target))


@pytest.fixture
def no_location(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process starts without a temporary mount location, and gets its own back."""
    monkeypatch.setattr(mountlib, "_temp_location", None)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        unmount_under(str(tmp_path))


def _snapshot(base: Path) -> Path:
    """A directory standing for a snapshot: what leftovers show, and what must survive."""
    snapshot = base / "snapshot"
    (snapshot / "bin").mkdir(parents=True)
    (snapshot / "bin" / "tool").write_text("keep me\n")
    return snapshot


# -- start-up clean-up -----------------------------------------------------------------------


def test_berthd_takes_off_leftover_temp_mounts_at_start(base: Path) -> None:
    d = Berthd(base / "d")
    snapshot = _snapshot(base)
    tmpmounts = d.root / "tmpmounts"
    legacy = d.state / LEGACY
    # What a berthd killed mid-apply leaves: a mount point in use, a stacked one, one made but
    # never mounted; and the same where older versions of Berth made them.
    _bind(snapshot, tmpmounts / "berth-apply-crashed")
    _bind(snapshot, tmpmounts / "berth-diff-stacked")
    _bind(snapshot, tmpmounts / "berth-diff-stacked")
    (tmpmounts / "berth-mount-unmounted").mkdir()
    _bind(snapshot, legacy / "berth-apply-old")
    os.chmod(tmpmounts, 0o755)
    assert len(mounts_under(str(d.base))) == 4

    with d:
        assert mounts_under(str(d.base)) == []
        assert os.listdir(tmpmounts) == []
        assert not legacy.exists()
        assert _mode(tmpmounts) == 0o700
    assert (snapshot / "bin" / "tool").read_text() == "keep me\n"  # unmounted, not deleted


def test_cleanup_never_deletes_through_a_mount(base: Path, no_location: None) -> None:
    location = Path(mountlib.set_temp_location(str(base / "tmpmounts")))
    snapshot = _snapshot(base)
    busy = location / "berth-apply-busy"
    _bind(snapshot, busy, readonly=False)
    debris = location / "not-a-mount"
    (debris / "sub").mkdir(parents=True)
    (debris / "sub" / "file").write_text("x")
    # A process working in the mount keeps it busy: it cannot be taken off.
    holder = subprocess.Popen(["sleep", "60"], cwd=busy)
    try:
        warnings = mountlib.cleanup_temp_mounts(str(location))
    finally:
        holder.kill()
        holder.wait()
    assert str(busy) in mounts_under(str(location))
    assert len(warnings) == 3, warnings  # the busy unmount, its rmdir, the non-empty directory
    assert (snapshot / "bin" / "tool").read_text() == "keep me\n"
    assert (debris / "sub" / "file").read_text() == "x"
    assert mountlib.cleanup_temp_mounts(str(location)) == [f"cannot remove {debris}: "
                                                           "Directory not empty"]
    assert mounts_under(str(location)) == []


# -- where temporary mounts go ---------------------------------------------------------------


def test_temp_mounts_go_under_the_set_location(base: Path, no_location: None) -> None:
    location = base / "tmpmounts"
    location.mkdir(mode=0o755)
    os.chmod(location, 0o755)  # as an older root had it: restricted when set
    assert mountlib.set_temp_location(str(location)) == str(location)
    assert _mode(location) == 0o700
    snapshot = _snapshot(base)
    with mountlib.temp_mount([Mount("bind", str(snapshot), ("rbind", "ro"))]) as target:
        assert Path(target).parent == location
        assert (Path(target) / "bin" / "tool").exists()
    assert os.listdir(location) == []


def test_temp_mounts_without_a_location_are_private(base: Path, no_location: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.setattr("tempfile.tempdir", None)
    snapshot = _snapshot(base)
    with mountlib.temp_mount([Mount("bind", str(snapshot), ("rbind", "ro"))]) as target:
        parent = Path(target).parent
        assert parent.parent == base and _mode(parent) == 0o700, (target, oct(_mode(parent)))
    assert not parent.exists()


class _Sink:
    """A layer sink that records, on its first write, the mounts under a directory: the
    walking differ's temporary mount is in place while it writes."""

    def __init__(self, watched: Path) -> None:
        self.watched = watched
        self.seen: list[str] | None = None
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        if self.seen is None:
            self.seen = mounts_under(str(self.watched))
        self.hash.update(data)
        return len(data)


def test_walking_differ_mounts_under_the_location(base: Path, no_location: None) -> None:
    location = Path(mountlib.set_temp_location(str(base / "tmpmounts")))
    lower = _snapshot(base)
    upper, work = base / "upper", base / "work"
    upper.mkdir()
    work.mkdir()
    (upper / "new").write_text("added\n")
    active = Mount("overlay", "overlay",
                   (f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}"))
    sink = _Sink(location)
    # As berthd builds it (builtins): no directory of its own; an overlay upper is read
    # through a read-only temporary mount.
    WalkingDiff().compare([Mount("bind", str(lower), ("rbind", "ro"))], [active], sink)
    assert sink.seen is not None and len(sink.seen) == 1, sink.seen
    assert Path(sink.seen[0]).parent == location
    assert os.listdir(location) == []


def test_ctr_snapshot_diff_leaves_no_temp_mount(busybox_image: ImageInfo, base: Path) -> None:
    with Berthd(base / "d") as d:
        c = Ctr(d.address)
        c("images", "pull", "--plain-http", busybox_image.ref)
        chain = c("snapshots", "ls").stdout.splitlines()[1].split()[0]
        c("snapshots", "prepare", "probe", chain)
        try:
            diff = c("snapshots", "diff", "probe", text=False)
            assert diff.returncode == 0
        finally:
            c("snapshots", "rm", "probe", check=False)
        assert _mode(d.root / "tmpmounts") == 0o700
        assert os.listdir(d.root / "tmpmounts") == []
        assert mounts_under(str(d.base)) == []
        assert not (d.state / LEGACY).exists()
