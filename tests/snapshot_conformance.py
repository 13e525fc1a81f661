"""The Snapshotter conformance suite: the lifecycle contract, checked against any implementation.

Subclass :class:`SnapshotterConformance` in a ``test_*.py`` module and provide one fixture::

    class TestMySnapshotter(SnapshotterConformance):
        @pytest.fixture
        def open_snapshotter(self, tmp_path: Path) -> Callable[[], Snapshotter]:
            return lambda: MySnapshotter(str(tmp_path / "root"))

``open_snapshotter`` returns a function that opens a *new* instance on the same persistent state
each time it is called (the persistence test closes one and opens another). The suite closes what
it opens. It uses only the :class:`Snapshotter` interface and :mod:`berth.mount`; it needs root
(tests mount what the snapshotter returns) and unmounts everything it mounts, even on failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from berth import errdefs
from berth.mount import Mount, temp_mount, unmount
from berth.snapshots.snapshotter import Info, Kind, Snapshotter

Opener = Callable[[], Snapshotter]


class _Instances:
    """The snapshotters a test opened, each closed exactly once."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self._open: list[Snapshotter] = []

    def open(self) -> Snapshotter:
        s = self._opener()
        self._open.append(s)
        return s

    def close(self, s: Snapshotter) -> None:
        if s in self._open:
            self._open.remove(s)
            s.close()

    def close_all(self) -> None:
        while self._open:
            self.close(self._open[-1])


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _names(infos: Iterator[Info]) -> set[str]:
    return {i.name for i in infos}


class SnapshotterConformance:
    """The contract of :class:`berth.snapshots.snapshotter.Snapshotter`; see the module doc."""

    pytestmark = pytest.mark.needs_root  # the tests mount what the snapshotter returns

    @pytest.fixture
    def open_snapshotter(self) -> Opener:
        raise NotImplementedError("a conformance subclass must provide open_snapshotter")

    @pytest.fixture
    def instances(self, open_snapshotter: Opener) -> Iterator[_Instances]:
        inst = _Instances(open_snapshotter)
        try:
            yield inst
        finally:
            inst.close_all()

    @pytest.fixture
    def snapshotter(self, instances: _Instances) -> Snapshotter:
        return instances.open()

    @pytest.fixture
    def mount_dir(self) -> Iterator[str]:
        """Where this test mounts; afterwards nothing may be left mounted there."""
        directory = tempfile.mkdtemp(prefix="berth-conformance-")
        try:
            yield directory
        finally:
            leftovers = sorted(p for p in _mount_points() if p.startswith(directory + "/"))
            for point in reversed(leftovers):
                unmount(point, detach=True)
            for entry in os.listdir(directory):
                os.rmdir(os.path.join(directory, entry))
            os.rmdir(directory)
            assert not leftovers, f"test left mounts behind: {leftovers}"

    @pytest.fixture
    def mounted(self, mount_dir: str) -> Callable[[Sequence[Mount]],
                                                  contextlib.AbstractContextManager[str]]:
        def mount(mounts: Sequence[Mount]) -> contextlib.AbstractContextManager[str]:
            return temp_mount(mounts, parent=mount_dir)
        return mount

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _committed(s: Snapshotter, name: str, parent: str = "",
                   files: dict[str, bytes] | None = None,
                   labels: dict[str, str] | None = None) -> None:
        """Commit ``name`` on ``parent`` holding ``files`` (written through a real mount)."""
        key = f"{name}-active"
        mounts = s.prepare(key, parent)
        if files:
            with temp_mount(mounts) as root:
                for rel, data in files.items():
                    Path(root, rel).parent.mkdir(parents=True, exist_ok=True)
                    Path(root, rel).write_bytes(data)
        s.commit(name, key, labels=labels)

    # --- lifecycle and errors ---------------------------------------------------------------

    def test_prepare_stat_mounts(self, snapshotter: Snapshotter) -> None:
        mounts = snapshotter.prepare("a", labels={"k": "v"})
        assert mounts and all(isinstance(m, Mount) for m in mounts)
        assert snapshotter.mounts("a") == mounts
        info = snapshotter.stat("a")
        assert (info.name, info.kind, info.parent) == ("a", Kind.ACTIVE, "")
        assert info.labels == {"k": "v"}
        assert info.created_at > 0 and info.updated_at == info.created_at

    def test_commit(self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("a", labels={"from": "prepare"})
        snapshotter.commit("A", "a", labels={"from": "commit"})
        info = snapshotter.stat("A")
        assert (info.name, info.kind, info.parent) == ("A", Kind.COMMITTED, "")
        # containerd replaces the labels on commit, it does not inherit them.
        assert info.labels == {"from": "commit"}
        with pytest.raises(errdefs.NotFound):
            snapshotter.stat("a")
        with pytest.raises(errdefs.FailedPrecondition):
            snapshotter.mounts("A")

    def test_parents_and_views(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        self._committed(snapshotter, "B", parent="A")
        snapshotter.prepare("c", "B")
        view_mounts = snapshotter.view("v", "B")
        snapshotter.view("empty-view")
        assert snapshotter.stat("B").parent == "A"
        assert (snapshotter.stat("c").kind, snapshotter.stat("c").parent) == (Kind.ACTIVE, "B")
        assert (snapshotter.stat("v").kind, snapshotter.stat("v").parent) == (Kind.VIEW, "B")
        assert snapshotter.stat("empty-view").parent == ""
        assert snapshotter.mounts("v") == view_mounts

    def test_names_are_one_space(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        snapshotter.prepare("a")
        snapshotter.view("v", "A")
        for make in (snapshotter.prepare, snapshotter.view):
            for taken in ("a", "v", "A"):
                with pytest.raises(errdefs.AlreadyExists):
                    make(taken)
        snapshotter.prepare("b")
        for taken in ("a", "v", "A"):
            with pytest.raises(errdefs.AlreadyExists):
                snapshotter.commit(taken, "b")
        # Failed attempts changed nothing.
        assert snapshotter.stat("a").kind == Kind.ACTIVE
        assert snapshotter.stat("b").kind == Kind.ACTIVE
        assert snapshotter.stat("v").kind == Kind.VIEW
        assert _names(snapshotter.walk()) == {"A", "a", "b", "v"}

    def test_unknown_keys(self, snapshotter: Snapshotter) -> None:
        with pytest.raises(errdefs.NotFound):
            snapshotter.stat("nope")
        with pytest.raises(errdefs.NotFound):
            snapshotter.mounts("nope")
        with pytest.raises(errdefs.NotFound):
            snapshotter.usage("nope")
        with pytest.raises(errdefs.NotFound):
            snapshotter.remove("nope")
        with pytest.raises(errdefs.NotFound):
            snapshotter.commit("N", "nope")
        with pytest.raises(errdefs.NotFound):
            snapshotter.update(Info("nope", Kind.ACTIVE, labels={"a": "b"}))
        for make in (snapshotter.prepare, snapshotter.view):
            with pytest.raises(errdefs.NotFound):
                make("child", "nope")
        assert list(snapshotter.walk()) == []

    def test_parent_must_be_committed(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        snapshotter.prepare("a", "A")
        snapshotter.view("v", "A")
        for parent in ("a", "v"):
            for make in (snapshotter.prepare, snapshotter.view):
                with pytest.raises(errdefs.FailedPrecondition):
                    make("child", parent)
        with pytest.raises(errdefs.NotFound):
            snapshotter.stat("child")

    def test_only_active_snapshots_commit(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        snapshotter.view("v", "A")
        with pytest.raises(errdefs.FailedPrecondition):
            snapshotter.commit("V", "v")
        with pytest.raises(errdefs.FailedPrecondition):
            snapshotter.commit("AA", "A")
        assert snapshotter.stat("v").kind == Kind.VIEW
        for name in ("V", "AA"):
            with pytest.raises(errdefs.NotFound):
                snapshotter.stat(name)

    def test_remove(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        self._committed(snapshotter, "B", parent="A")
        snapshotter.prepare("b", "B")
        snapshotter.view("v", "B")
        for busy in ("A", "B"):
            with pytest.raises(errdefs.FailedPrecondition):
                snapshotter.remove(busy)
        snapshotter.remove("b")
        with pytest.raises(errdefs.FailedPrecondition):
            snapshotter.remove("B")  # the view still holds it
        snapshotter.remove("v")
        snapshotter.remove("B")
        snapshotter.remove("A")
        assert list(snapshotter.walk()) == []
        # A removed key can be used again.
        snapshotter.prepare("b")
        assert snapshotter.stat("b").parent == ""

    def test_update_labels(self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("a", labels={"keep": "1", "drop": "2"})
        before = snapshotter.stat("a")

        got = snapshotter.update(Info("a", Kind.ACTIVE, labels={"keep": "one", "new": "3"}),
                                 ["labels.keep"])
        assert got.labels == {"keep": "one", "drop": "2"}
        assert got.created_at == before.created_at and got.updated_at >= before.updated_at
        assert (got.kind, got.parent) == (Kind.ACTIVE, "")

        got = snapshotter.update(Info("a", Kind.ACTIVE, labels={}), ["labels.drop"])
        assert got.labels == {"keep": "one"}  # a path with no value removes the label

        got = snapshotter.update(Info("a", Kind.ACTIVE, labels={"x": "y"}), ["labels"])
        assert got.labels == {"x": "y"}

        got = snapshotter.update(Info("a", Kind.ACTIVE, labels={"only": "this"}))
        assert got.labels == {"only": "this"}  # no paths: replace all
        assert snapshotter.stat("a").labels == {"only": "this"}

    def test_update_immutable_fields(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A")
        snapshotter.prepare("a", "A")
        for path in ("name", "parent", "kind", "created_at"):
            with pytest.raises(errdefs.InvalidArgument):
                snapshotter.update(Info("a", Kind.COMMITTED, parent=""), [path])
        info = snapshotter.stat("a")
        assert (info.kind, info.parent) == (Kind.ACTIVE, "A")

    def test_walk_filters(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "base", labels={"tier": "base"})
        snapshotter.prepare("work", "base",
                            labels={"tier": "top", "containerd.io/gc.root": "x"})
        snapshotter.view("look", "base")

        def walk(*filters: str) -> set[str]:
            return _names(snapshotter.walk(filters))

        assert walk() == {"base", "work", "look"}
        assert walk("kind==active") == {"work"}
        assert walk("kind==view") == {"look"}
        assert walk("kind==committed") == {"base"}
        assert walk("parent==base") == {"work", "look"}
        assert walk("name==work") == {"work"}
        assert walk("labels.tier==top") == {"work"}
        assert walk("labels.tier") == {"base", "work"}
        assert walk('labels."containerd.io/gc.root"') == {"work"}
        assert walk("labels.tier!=top") == {"base", "look"}
        assert walk("name~=^b") == {"base"}
        assert walk("kind==view", "name==base") == {"look", "base"}  # OR across strings
        assert walk("kind==active,labels.tier==base") == set()  # AND within one
        info = next(snapshotter.walk(["name==work"]))
        assert info == snapshotter.stat("work")

    def test_walk_bad_filter(self, snapshotter: Snapshotter) -> None:
        with pytest.raises(errdefs.InvalidArgument):
            list(snapshotter.walk(["==x"]))

    def test_usage(self, snapshotter: Snapshotter,
                   mounted: Callable[[Sequence[Mount]],
                                     contextlib.AbstractContextManager[str]]) -> None:
        mounts = snapshotter.prepare("a")
        empty = snapshotter.usage("a")
        with mounted(mounts) as root:
            Path(root, "blob").write_bytes(os.urandom(256 * 1024))
            Path(root, "dir").mkdir()
        grown = snapshotter.usage("a")
        assert grown.size >= empty.size + 256 * 1024
        assert grown.inodes >= empty.inodes + 2
        snapshotter.commit("A", "a")
        assert snapshotter.usage("A") == grown  # measured once committed, then kept
        assert snapshotter.usage("A") == grown
        snapshotter.view("v", "A")
        assert snapshotter.usage("v").size >= 0

    def test_persistence(self, instances: _Instances) -> None:
        first = instances.open()
        self._committed(first, "A", files={"etc/hostname": b"berth\n"}, labels={"l": "A"})
        first.prepare("b", "A", labels={"l": "b"})
        first.view("v", "A")
        first.update(Info("v", Kind.VIEW, labels={"l": "v"}), ["labels.l"])
        infos = {i.name: i for i in first.walk()}
        mounts = {k: first.mounts(k) for k in ("b", "v")}
        usage = first.usage("A")
        instances.close(first)

        second = instances.open()
        assert {i.name: i for i in second.walk()} == infos
        assert {k: second.mounts(k) for k in ("b", "v")} == mounts
        assert second.usage("A") == usage
        with temp_mount(second.mounts("b")) as root:
            assert Path(root, "etc/hostname").read_bytes() == b"berth\n"
        second.commit("B", "b")
        with pytest.raises(errdefs.FailedPrecondition):
            second.remove("A")

    def test_cleanup_keeps_live_snapshots(self, snapshotter: Snapshotter) -> None:
        self._committed(snapshotter, "A", files={"a": b"A"})
        self._committed(snapshotter, "gone", files={"g": b"G"})
        snapshotter.prepare("b", "A")
        snapshotter.view("v", "A")
        snapshotter.remove("gone")
        snapshotter.cleanup()
        snapshotter.cleanup()
        assert _names(snapshotter.walk()) == {"A", "b", "v"}
        for key in ("b", "v"):
            with temp_mount(snapshotter.mounts(key)) as root:
                assert Path(root, "a").read_bytes() == b"A"

    def test_concurrent_use(self, snapshotter: Snapshotter) -> None:
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(5):
                    snapshotter.prepare(f"t{n}-{i}")
                    snapshotter.commit(f"T{n}-{i}", f"t{n}-{i}")
                    snapshotter.view(f"v{n}-{i}", f"T{n}-{i}")
                    assert snapshotter.stat(f"v{n}-{i}").parent == f"T{n}-{i}"
                    snapshotter.remove(f"v{n}-{i}")
                    snapshotter.remove(f"T{n}-{i}")
            except BaseException as err:  # reported by the main thread below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert list(snapshotter.walk()) == []

    # --- real mounts ------------------------------------------------------------------------

    def test_layers_through_mounts(
            self, snapshotter: Snapshotter,
            mounted: Callable[[Sequence[Mount]], contextlib.AbstractContextManager[str]],
    ) -> None:
        with mounted(snapshotter.prepare("base")) as root:
            assert os.listdir(root) == []
            Path(root, "etc").mkdir()
            Path(root, "etc/os-release").write_text("ID=berth\n")
            Path(root, "etc/motd").write_text("hello\n")
            Path(root, "old").mkdir()
            Path(root, "old/file").write_text("old\n")
        snapshotter.commit("L1", "base")

        with mounted(snapshotter.prepare("top", "L1")) as root:
            assert Path(root, "etc/os-release").read_text() == "ID=berth\n"
            Path(root, "etc/os-release").write_text("ID=changed\n")
            Path(root, "etc/motd").unlink()
            Path(root, "old/file").unlink()
            Path(root, "old").rmdir()
            Path(root, "new").write_text("new\n")
        snapshotter.commit("L2", "top")

        with mounted(snapshotter.view("view-L2", "L2")) as root:
            assert sorted(os.listdir(root)) == ["etc", "new"]
            assert os.listdir(Path(root, "etc")) == ["os-release"]  # the deletion shows
            assert Path(root, "etc/os-release").read_text() == "ID=changed\n"
            with pytest.raises(OSError) as caught:
                Path(root, "etc/other").write_text("no\n")
            assert caught.value.errno == errno.EROFS
        with mounted(snapshotter.view("view-L1", "L1")) as root:
            # The parent is untouched by what its child did.
            assert Path(root, "etc/os-release").read_text() == "ID=berth\n"
            assert Path(root, "etc/motd").read_text() == "hello\n"
            assert Path(root, "old/file").read_text() == "old\n"

        self._committed(snapshotter, "L3", parent="L2", files={"third": b"3"})
        with mounted(snapshotter.view("view-L3", "L3")) as root:
            assert sorted(os.listdir(root)) == ["etc", "new", "third"]
            assert Path(root, "new").read_text() == "new\n"
        with mounted(snapshotter.prepare("work", "L3")) as root:
            assert sorted(os.listdir(root)) == ["etc", "new", "third"]

    def test_empty_view_is_readonly(
            self, snapshotter: Snapshotter,
            mounted: Callable[[Sequence[Mount]], contextlib.AbstractContextManager[str]],
    ) -> None:
        with mounted(snapshotter.view("v")) as root:
            assert os.listdir(root) == []
            with pytest.raises(OSError) as caught:
                Path(root, "x").write_text("no")
            assert caught.value.errno == errno.EROFS

    def test_file_attributes_carry_to_children(
            self, snapshotter: Snapshotter,
            mounted: Callable[[Sequence[Mount]], contextlib.AbstractContextManager[str]],
    ) -> None:
        times = (1_000_000_123, 1_500_000_456_789_000)
        with mounted(snapshotter.prepare("base")) as root:
            f = Path(root, "tool")
            f.write_bytes(b"#!/bin/sh\n")
            os.chown(f, 1234, 5678)
            os.chmod(f, 0o4750)
            os.setxattr(f, "user.berth", b"kept")
            os.link(f, Path(root, "tool-link"))
            os.symlink("tool", Path(root, "tool-symlink"))
            os.mknod(Path(root, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.mkfifo(Path(root, "fifo"), 0o600)
            os.utime(f, ns=times)
        snapshotter.commit("A", "base")

        with mounted(snapshotter.prepare("child", "A")) as root:
            st = os.lstat(Path(root, "tool"))
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
            assert st.st_mtime_ns == times[1]
            assert os.getxattr(Path(root, "tool"), "user.berth") == b"kept"
            assert os.path.samefile(Path(root, "tool"), Path(root, "tool-link"))
            assert os.readlink(Path(root, "tool-symlink")) == "tool"
            dev = os.lstat(Path(root, "null"))
            assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
            assert stat.S_ISFIFO(os.lstat(Path(root, "fifo")).st_mode)
