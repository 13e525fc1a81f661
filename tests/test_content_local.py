"""LocalStore: the content store conformance suite, plus what only the local layout can show
(files on disk, locks across processes, crash leftovers)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from content_conformance import ContentStoreSuite, ReopenStore, digest_of, put, read_all

import berth
from berth import errdefs
from berth.content import Info
from berth.content.local import LocalStore


class TestLocalStoreConformance(ContentStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(str(tmp_path / "content"))

    @pytest.fixture
    def reopen(self, tmp_path: Path) -> ReopenStore:
        return lambda: LocalStore(str(tmp_path / "content"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "content"


@pytest.fixture
def store(root: Path) -> LocalStore:
    return LocalStore(str(root))


def ingest_dir(root: Path, ref: str) -> Path:
    return root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()


def test_layout(store: LocalStore, root: Path) -> None:
    w = store.writer("my-ref", total=5, expected=digest_of(b"hello"))
    w.write(b"hel")
    path = ingest_dir(root, "my-ref")
    assert (path / "ref").read_text() == "my-ref"
    assert (path / "data").read_bytes() == b"hel"
    assert (path / "total").read_text() == "5"
    assert (path / "expected").read_text() == digest_of(b"hello")
    assert int((path / "startedat").read_text()) > 0
    w.write(b"lo")
    digest = w.commit(5, digest_of(b"hello"))
    blob = root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert blob.read_bytes() == b"hello"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert blob.stat().st_nlink == 1
    assert not path.exists()
    assert os.listdir(root / "blobs" / "sha256") == [blob.name]


def test_failed_commit_leaves_nothing_on_disk(store: LocalStore, root: Path) -> None:
    w = store.writer("ref")
    w.write(b"data")
    with pytest.raises(errdefs.FailedPrecondition):
        w.commit(0, digest_of(b"other"))
    assert os.listdir(root / "blobs" / "sha256") == []
    assert os.listdir(root / "ingest") == []


def test_labels_are_not_kept_here(store: LocalStore) -> None:
    digest = put(store, "ref", b"x")
    assert store.info(digest).labels == {}
    with pytest.raises(errdefs.FailedPrecondition, match="metadata"):
        store.update(Info(digest, 1, labels={"a": "b"}), ["labels.a"])


def test_walk_by_size(store: LocalStore) -> None:
    a, _ = put(store, "a", b"aaa"), put(store, "b", b"bbbb")
    assert [i.digest for i in store.walk(["size==3"])] == [a]


def test_list_statuses_by_expected(store: LocalStore) -> None:
    store.writer("with", expected=digest_of(b"x")).close()
    store.writer("without").close()
    assert [s.ref for s in store.list_statuses(["expected"])] == ["with"]
    assert [s.ref for s in store.list_statuses([f"expected=={digest_of(b'x')}"])] == ["with"]


def test_abort_while_written_is_unavailable(store: LocalStore) -> None:
    w = store.writer("ref")
    with pytest.raises(errdefs.Unavailable):
        store.abort("ref")
    w.close()
    store.abort("ref")


def test_resume_updates_total_and_expected(store: LocalStore) -> None:
    store.writer("ref", total=10).close()
    with store.writer("ref") as w:
        assert w.status().total == 10  # kept when not given
    with store.writer("ref", total=12, expected=digest_of(b"y")) as w:
        assert (w.status().total, w.status().expected) == (12, digest_of(b"y"))
    assert store.status("ref").total == 12


def test_truncate_partway(store: LocalStore) -> None:
    w = store.writer("ref")
    w.write(b"keep-drop")
    w.truncate(4)
    assert w.digest() == digest_of(b"keep")
    with pytest.raises(errdefs.InvalidArgument):
        w.truncate(5)
    assert w.commit(4, digest_of(b"keep")) == digest_of(b"keep")


def test_writer_closed_after_commit(store: LocalStore) -> None:
    w = store.writer("ref")
    w.commit(0, "")
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        w.write(b"late")
    w.close()  # closing twice is harmless


def test_second_store_on_same_root_is_locked_out(store: LocalStore, root: Path) -> None:
    w = store.writer("ref")
    other = LocalStore(str(root))
    with pytest.raises(errdefs.Unavailable, match="ref is locked"):
        other.writer("ref")
    w.close()
    other.writer("ref").close()


def test_second_process_is_locked_out(store: LocalStore, root: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from berth import errdefs
        from berth.content.local import LocalStore
        try:
            LocalStore(sys.argv[1]).writer("ref").close()
        except errdefs.Unavailable:
            sys.exit(75)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(berth.__file__).parent.parent))
    argv = [sys.executable, "-c", script, str(root)]
    w = store.writer("ref")
    assert subprocess.run(argv, env=env, check=False).returncode == 75
    w.close()
    assert subprocess.run(argv, env=env, check=False).returncode == 0


# --- crash leftovers ------------------------------------------------------------------------


def test_cleanup_keeps_resumable_ingests(store: LocalStore) -> None:
    with store.writer("ref") as w:
        w.write(b"partial")
    assert store.cleanup() == []
    assert store.status("ref").offset == 7


def test_cleanup_removes_debris(store: LocalStore, root: Path) -> None:
    with store.writer("ref") as w:
        w.write(b"partial")
    (ingest_dir(root, "ref") / "total.tmp").write_text("12")  # crash inside an atomic write
    debris = root / "ingest" / ("0" * 64)  # crash before the ref file was written
    debris.mkdir()
    (debris / "data").write_bytes(b"x")
    assert store.cleanup() == [str(debris)]
    assert not debris.exists()
    assert not (ingest_dir(root, "ref") / "total.tmp").exists()
    assert [s.ref for s in store.list_statuses()] == ["ref"]


def test_cleanup_skips_ingests_in_use(root: Path) -> None:
    store = LocalStore(str(root), ingest_expiry=0)
    w = store.writer("busy")
    assert store.cleanup() == []
    w.close()
    assert store.cleanup() == [str(ingest_dir(root, "busy"))]


def test_cleanup_expires_idle_ingests(root: Path) -> None:
    store = LocalStore(str(root), ingest_expiry=3600)
    store.writer("old").close()
    store.writer("new").close()
    (ingest_dir(root, "old") / "updatedat").write_text("1")
    assert store.cleanup() == [str(ingest_dir(root, "old"))]
    assert [s.ref for s in store.list_statuses()] == ["new"]


def crash_after_link(store: LocalStore, root: Path, ref: str, data: bytes) -> str:
    """Leave what a commit interrupted right after linking the blob leaves."""
    with store.writer(ref) as w:
        w.write(data)
    digest = digest_of(data)
    path = ingest_dir(root, ref)
    os.link(path / "data", root / "blobs" / "sha256" / digest.removeprefix("sha256:"))
    return digest


def test_resume_never_writes_into_a_committed_blob(store: LocalStore, root: Path) -> None:
    digest = crash_after_link(store, root, "ref", b"committed")
    w = LocalStore(str(root)).writer("ref")
    assert w.status().offset == 0  # restarted, not resumed
    w.truncate(0)
    w.write(b"new bytes")
    w.close()
    assert read_all(store, digest) == b"committed"


def test_cleanup_removes_ingest_of_interrupted_commit(store: LocalStore, root: Path) -> None:
    digest = crash_after_link(store, root, "ref", b"committed")
    assert store.cleanup() == [str(ingest_dir(root, "ref"))]
    assert read_all(store, digest) == b"committed"
    assert (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).stat().st_nlink == 1


def test_unreadable_ingest_number_reads_as_zero(
    store: LocalStore, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.writer("ref", total=9).close()
    (ingest_dir(root, "ref") / "total").write_text("garbage")
    with caplog.at_level(logging.WARNING):
        assert store.status("ref").total == 0
    assert "not a number" in caplog.text


def test_stray_files_in_blobs_are_not_walked(store: LocalStore, root: Path) -> None:
    digest = put(store, "ref", b"real")
    (root / "blobs" / "sha256" / "README").write_text("not a blob")
    assert [i.digest for i in store.walk()] == [digest]


def test_failed_write_keeps_hash_in_step_with_data(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = store.writer("ref")
    real_write = os.write
    calls: list[int] = []

    def short_then_full_disk(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full_disk)
    with pytest.raises(OSError):
        w.write(b"abcdef")
    monkeypatch.undo()
    assert (w.status().offset, w.digest()) == (3, digest_of(b"abc"))
    w.write(b"def")
    assert w.commit(6, digest_of(b"abcdef")) == digest_of(b"abcdef")


def test_commit_refuses_data_changed_behind_the_writer(store: LocalStore, root: Path) -> None:
    w = store.writer("ref")
    w.write(b"mine")
    with open(ingest_dir(root, "ref") / "data", "ab") as f:
        f.write(b"theirs")
    with pytest.raises(errdefs.FailedPrecondition, match="changed"):
        w.commit(0, "")
    assert list(store.walk()) == []
