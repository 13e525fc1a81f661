"""The overlay and native snapshotters: the conformance suite, their layouts and crash recovery."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from snapshot_conformance import SnapshotterConformance

from berth import errdefs
from berth.mount import Mount, temp_mount
from berth.snapshots.local import LocalSnapshotter
from berth.snapshots.native import NativeSnapshotter
from berth.snapshots.overlay import OverlaySnapshotter, overlay_dirs, supported
from berth.snapshots.snapshotter import Snapshotter

pytestmark = pytest.mark.needs_root

INDEX_OFF = ("index=off",) if os.path.exists("/sys/module/overlay/parameters/index") else ()


class TestOverlayConformance(SnapshotterConformance):
    @pytest.fixture
    def open_snapshotter(self, tmp_path: Path) -> Callable[[], Snapshotter]:
        return lambda: OverlaySnapshotter(str(tmp_path / "overlay"))


class TestNativeConformance(SnapshotterConformance):
    @pytest.fixture
    def open_snapshotter(self, tmp_path: Path) -> Callable[[], Snapshotter]:
        return lambda: NativeSnapshotter(str(tmp_path / "native"))


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[OverlaySnapshotter]:
    s = OverlaySnapshotter(str(tmp_path / "root"))
    yield s
    s.close()


@pytest.fixture
def native(tmp_path: Path) -> Iterator[NativeSnapshotter]:
    s = NativeSnapshotter(str(tmp_path / "root"))
    yield s
    s.close()


@pytest.fixture(params=[OverlaySnapshotter, NativeSnapshotter])
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalSnapshotter]:
    s: LocalSnapshotter = request.param(str(tmp_path / "root"))
    yield s
    s.close()


# --- the mounts containerd emits -------------------------------------------------------------


def test_overlay_mount_shapes(overlay: OverlaySnapshotter, tmp_path: Path) -> None:
    snaps = tmp_path / "root" / "snapshots"
    assert overlay.prepare("a") == [Mount("bind", f"{snaps}/1/fs", ("rw", "rbind"))]
    overlay.commit("A", "a")
    assert overlay.view("v0") == [Mount("bind", f"{snaps}/2/fs", ("ro", "rbind"))]
    assert overlay.prepare("b", "A") == [Mount("overlay", "overlay", (
        *INDEX_OFF, f"workdir={snaps}/3/work", f"upperdir={snaps}/3/fs",
        f"lowerdir={snaps}/1/fs"))]
    overlay.commit("B", "b")
    assert overlay.view("v1", "A") == [Mount("bind", f"{snaps}/1/fs", ("ro", "rbind"))]
    assert overlay.view("v2", "B") == [Mount("overlay", "overlay", (
        *INDEX_OFF, f"lowerdir={snaps}/3/fs:{snaps}/1/fs"))]
    assert overlay.prepare("c", "B") == [Mount("overlay", "overlay", (
        *INDEX_OFF, f"workdir={snaps}/6/work", f"upperdir={snaps}/6/fs",
        f"lowerdir={snaps}/3/fs:{snaps}/1/fs"))]
    assert not (snaps / "4" / "work").exists()  # views get no work directory


def test_native_mount_shapes(native: NativeSnapshotter, tmp_path: Path) -> None:
    snaps = tmp_path / "root" / "snapshots"
    assert native.prepare("a") == [Mount("bind", f"{snaps}/1", ("rw", "rbind"))]
    native.commit("A", "a")
    assert native.view("v0") == [Mount("bind", f"{snaps}/2", ("ro", "rbind"))]
    assert native.prepare("b", "A") == [Mount("bind", f"{snaps}/3", ("rw", "rbind"))]
    native.commit("B", "b")
    # A view binds its parent's directory: nothing is copied.
    assert native.view("v1", "B") == [Mount("bind", f"{snaps}/3", ("ro", "rbind"))]


def test_overlay_dirs_for_the_diff_applier(overlay: OverlaySnapshotter) -> None:
    a = overlay.prepare("a")
    assert overlay_dirs(a).upper == overlay.upper_dir("a") and overlay_dirs(a).lowers == ()
    overlay.commit("A", "a")
    overlay.prepare("b", "A")
    overlay.commit("B", "b")
    c = overlay.prepare("c", "B")
    assert overlay_dirs(c).upper == overlay.upper_dir("c")
    assert overlay_dirs(c).lowers == (overlay.upper_dir("B"), overlay.upper_dir("A"))
    assert overlay_dirs(overlay.view("v", "A")).upper is None
    assert overlay_dirs(overlay.view("w", "A")).lowers == (overlay.upper_dir("A"),)
    with pytest.raises(errdefs.InvalidArgument):
        overlay_dirs([Mount("tmpfs", "tmpfs")])


def test_overlay_child_keeps_parent_root_owner(overlay: OverlaySnapshotter) -> None:
    with temp_mount(overlay.prepare("a")) as root:
        os.chown(root, 4321, 8765)
    overlay.commit("A", "a")
    with temp_mount(overlay.prepare("b", "A")) as root:
        st = os.stat(root)
        assert (st.st_uid, st.st_gid) == (4321, 8765)


def test_overlay_root_with_separator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        OverlaySnapshotter(str(tmp_path / "a:b"))


# --- overlayfs support check -----------------------------------------------------------------


def test_supported_here(tmp_path: Path) -> None:
    supported(str(tmp_path / "new-root"))
    assert os.listdir(tmp_path / "new-root") == []  # the check leaves nothing behind


def test_not_supported_on_overlayfs(tmp_path: Path) -> None:
    # overlayfs cannot be the upper layer of another overlay mount.
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    outer = Mount("overlay", "overlay", (f"lowerdir={tmp_path}/lower",
                                         f"upperdir={tmp_path}/upper",
                                         f"workdir={tmp_path}/work"))
    with temp_mount([outer], parent=str(tmp_path)) as merged:
        with pytest.raises(errdefs.FailedPrecondition, match="overlayfs cannot be used"):
            supported(os.path.join(merged, "root"))
        # The native snapshotter is the fallback there, and works.
        native = NativeSnapshotter(os.path.join(merged, "native"))
        try:
            native.prepare("a")
            native.commit("A", "a")
            native.prepare("b", "A")
        finally:
            native.close()


# --- crash recovery and failures -------------------------------------------------------------


def test_cleanup_removes_leftovers(local: LocalSnapshotter, tmp_path: Path) -> None:
    snaps = tmp_path / "root" / "snapshots"
    local.prepare("a")
    local.commit("A", "a")
    local.prepare("b", "A")
    for leftover in ("new-123abc/fs", "rm-77/fs/etc", "99/fs"):
        (snaps / leftover).mkdir(parents=True)
    (snaps / "stray-file").write_text("x")
    local.cleanup()
    assert sorted(os.listdir(snaps)) == ["1", "2"]
    assert [i.name for i in local.walk()] == ["A", "b"]


def test_cleanup_restores_an_uncommitted_removal(local: LocalSnapshotter,
                                                 tmp_path: Path) -> None:
    # A crash between renaming the directory away and committing the removal leaves rm-<id>
    # while the snapshot still exists: cleanup must put it back, not delete it.
    snaps = tmp_path / "root" / "snapshots"
    with temp_mount(local.prepare("a")) as root:
        Path(root, "kept").write_text("yes")
    local.commit("A", "a")
    os.rename(snaps / "1", snaps / "rm-1")
    local.cleanup()
    with temp_mount(local.view("v", "A")) as root:
        assert Path(root, "kept").read_text() == "yes"


def test_prepare_replaces_a_rolled_back_directory(local: LocalSnapshotter,
                                                  tmp_path: Path) -> None:
    # A prepare whose transaction rolled back after the rename leaves snapshots/<id>, and the id
    # comes back for the next prepare: it must start empty, not with the leftover.
    snaps = tmp_path / "root" / "snapshots"
    (snaps / "1" / "fs").mkdir(parents=True)
    (snaps / "1" / "fs" / "junk").write_text("old")
    with temp_mount(local.prepare("a")) as root:
        assert os.listdir(root) == []


def test_failed_prepare_leaves_nothing(local: LocalSnapshotter, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(directory: str, snapshot: object) -> None:
        raise errdefs.Internal("populate failed")

    monkeypatch.setattr(local, "_populate", broken)
    with pytest.raises(errdefs.Internal, match="populate failed"):
        local.prepare("a")
    assert list(local.walk()) == []
    assert os.listdir(tmp_path / "root" / "snapshots") == []


def test_remove_frees_the_directory(local: LocalSnapshotter, tmp_path: Path) -> None:
    local.prepare("a")
    local.remove("a")
    assert os.listdir(tmp_path / "root" / "snapshots") == []


def test_native_copy_failure_is_internal(native: NativeSnapshotter, tmp_path: Path) -> None:
    native.prepare("a")
    native.commit("A", "a")
    shutil.rmtree(tmp_path / "root" / "snapshots" / "1")
    with pytest.raises(errdefs.Internal, match="copying parent snapshot"):
        native.prepare("b", "A")
    with pytest.raises(errdefs.NotFound):
        native.stat("b")


def test_closed_snapshotter_refuses(overlay: OverlaySnapshotter) -> None:
    overlay.close()
    with pytest.raises(errdefs.FailedPrecondition):
        overlay.stat("a")
