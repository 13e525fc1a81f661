"""The content store contract (``berth.content.content``), as tests any implementation must pass.

Use it by subclassing :class:`ContentStoreSuite` in a ``test_*.py`` module and providing a
``store`` fixture (a fresh, empty store); provide ``reopen`` too if the store can be reopened on
the same data (a daemon restart), otherwise those tests skip::

    class TestMyStore(ContentStoreSuite):
        @pytest.fixture
        def store(self, tmp_path): return MyStore(tmp_path)

        @pytest.fixture
        def reopen(self, tmp_path): return lambda: MyStore(tmp_path)
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import pytest

from berth import errdefs
from berth.content import Store

ReopenStore = Callable[[], Store]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(store: Store, ref: str, data: bytes, *, chunk: int = 7) -> str:
    """Ingest ``data`` under ``ref`` in small writes and commit it with both checks."""
    with store.writer(ref, total=len(data), expected=digest_of(data)) as w:
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])
        return w.commit(len(data), digest_of(data))


def read_all(store: Store, digest: str) -> bytes:
    with store.reader(digest) as r:
        return r.read_at(0, r.size)


class ContentStoreSuite:
    """Subclass and provide a ``store`` fixture (and optionally ``reopen``)."""

    @pytest.fixture
    def reopen(self) -> ReopenStore:
        pytest.skip("this store cannot be reopened on the same data")

    # --- ingest and commit -----------------------------------------------------------------------

    def test_write_commit_read(self, store: Store) -> None:
        data = b"hello, berth\n" * 100
        before = time.time_ns()
        digest = put(store, "ref-1", data)
        after = time.time_ns()
        assert digest == digest_of(data)
        info = store.info(digest)
        assert (info.digest, info.size) == (digest, len(data))
        assert before - 2_000_000_000 <= info.created_at <= after + 2_000_000_000
        assert read_all(store, digest) == data
        assert [i.digest for i in store.walk()] == [digest]
        with pytest.raises(errdefs.NotFound):
            store.status("ref-1")  # a committed ingest is gone

    def test_commit_without_checks(self, store: Store) -> None:
        w = store.writer("ref")
        w.write(b"abc")
        assert w.digest() == digest_of(b"abc")
        assert w.commit(0, "") == digest_of(b"abc")
        assert read_all(store, digest_of(b"abc")) == b"abc"

    def test_empty_blob(self, store: Store) -> None:
        digest = put(store, "empty", b"")
        assert store.info(digest).size == 0
        with store.reader(digest) as r:
            assert r.size == 0
            assert r.read_at(0, 10) == b""

    def test_large_blob_in_big_writes(self, store: Store) -> None:
        data = bytes(range(256)) * 4096 * 8  # 8 MiB
        digest = put(store, "large", data, chunk=1 << 20)
        assert digest == digest_of(data)
        with store.reader(digest) as r:
            assert r.read_at(len(data) - 5, 100) == data[-5:]

    def test_digest_mismatch_stores_nothing(self, store: Store) -> None:
        wrong = digest_of(b"something else")
        w = store.writer("ref", expected=wrong)
        w.write(b"actual bytes")
        with pytest.raises(errdefs.FailedPrecondition) as err:
            w.commit(0, wrong)
        assert digest_of(b"actual bytes") in str(err.value)
        assert wrong in str(err.value)
        for digest in (wrong, digest_of(b"actual bytes")):
            with pytest.raises(errdefs.NotFound):
                store.info(digest)
        assert list(store.walk()) == []
        with pytest.raises(errdefs.NotFound):
            store.status("ref")  # the ingest was discarded...
        with store.writer("ref") as again:  # ...and the ref released
            assert again.status().offset == 0

    def test_size_mismatch_stores_nothing(self, store: Store) -> None:
        w = store.writer("ref")
        w.write(b"12345")
        with pytest.raises(errdefs.FailedPrecondition, match="size"):
            w.commit(4, digest_of(b"12345"))
        assert list(store.walk()) == []
        with pytest.raises(errdefs.NotFound):
            store.status("ref")

    def test_commit_of_existing_blob(self, store: Store) -> None:
        digest = put(store, "first", b"same")
        w = store.writer("second")  # no expected given, so the writer opens
        w.write(b"same")
        with pytest.raises(errdefs.AlreadyExists):
            w.commit(4, digest)
        assert read_all(store, digest) == b"same"
        with pytest.raises(errdefs.NotFound):
            store.status("second")

    def test_writer_for_existing_blob(self, store: Store) -> None:
        digest = put(store, "first", b"same")
        with pytest.raises(errdefs.AlreadyExists):
            store.writer("second", expected=digest)
        assert [s.ref for s in store.list_statuses()] == []

    def test_ref_is_released_after_commit(self, store: Store) -> None:
        put(store, "ref", b"one")
        assert put(store, "ref", b"two") == digest_of(b"two")

    def test_truncate_to_zero(self, store: Store) -> None:
        w = store.writer("ref")
        w.write(b"garbage")
        w.truncate(0)
        assert w.status().offset == 0
        assert w.digest() == digest_of(b"")
        w.write(b"good")
        assert w.commit(4, digest_of(b"good")) == digest_of(b"good")

    # --- resume, one writer per ref ------------------------------------------------------------

    def test_resume_after_close(self, store: Store) -> None:
        data = b"0123456789" * 10
        w = store.writer("ref", total=len(data))
        w.write(data[:37])
        w.close()
        w = store.writer("ref", total=len(data))
        assert w.status().offset == 37
        assert w.digest() == digest_of(data[:37])
        w.write(data[37:])
        assert w.commit(len(data), digest_of(data)) == digest_of(data)

    def test_resume_after_restart(self, store: Store, reopen: ReopenStore) -> None:
        data = b"layer bytes " * 50
        w = store.writer("ref", total=len(data), expected=digest_of(data))
        w.write(data[:100])
        w.close()
        restarted = reopen()
        status = restarted.status("ref")
        assert (status.offset, status.total, status.expected) == (100, len(data), digest_of(data))
        w = restarted.writer("ref", total=len(data))
        assert w.status().offset == 100
        w.write(data[100:])
        assert w.commit(len(data), digest_of(data)) == digest_of(data)
        assert read_all(reopen(), digest_of(data)) == data

    def test_one_writer_per_ref(self, store: Store) -> None:
        w = store.writer("ref")
        with pytest.raises(errdefs.Unavailable, match="ref"):
            store.writer("ref")
        other = store.writer("other-ref")  # other refs are not affected
        other.close()
        w.close()
        store.writer("ref").close()

    def test_one_writer_per_ref_across_threads(self, store: Store) -> None:
        results: list[BaseException | None] = []
        w = store.writer("ref")

        def second() -> None:
            try:
                store.writer("ref").close()
                results.append(None)
            except errdefs.Unavailable as err:
                results.append(err)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        w.close()
        assert isinstance(results[0], errdefs.Unavailable)

    def test_abort(self, store: Store) -> None:
        w = store.writer("ref")
        w.write(b"partial")
        w.close()
        store.abort("ref")
        with pytest.raises(errdefs.NotFound):
            store.status("ref")
        with pytest.raises(errdefs.NotFound):
            store.abort("ref")
        with store.writer("ref") as w:
            assert w.status().offset == 0

    # --- status ---------------------------------------------------------------------------------

    def test_status(self, store: Store) -> None:
        before = time.time_ns()
        w = store.writer("ref", total=10, expected=digest_of(b"0123456789"))
        w.write(b"0123")
        s = w.status()
        assert (s.ref, s.offset, s.total, s.expected) == ("ref", 4, 10, digest_of(b"0123456789"))
        assert before <= s.started_at <= s.updated_at <= time.time_ns()
        assert store.status("ref").offset == 4
        w.close()
        s = store.status("ref")
        assert (s.ref, s.offset, s.total) == ("ref", 4, 10)
        with pytest.raises(errdefs.NotFound):
            store.status("no-such-ref")

    def test_list_statuses(self, store: Store) -> None:
        for ref in ("pull-a", "pull-b", "push-c"):
            with store.writer(ref) as w:
                w.write(ref.encode())
        assert sorted(s.ref for s in store.list_statuses()) == ["pull-a", "pull-b", "push-c"]
        assert [s.ref for s in store.list_statuses(["ref==pull-b"])] == ["pull-b"]
        assert sorted(s.ref for s in store.list_statuses(["ref~=^pull-"])) == ["pull-a", "pull-b"]
        assert sorted(s.ref for s in store.list_statuses(["ref==push-c", "ref==pull-a"])) == [
            "pull-a",
            "push-c",
        ]
        assert [s.offset for s in store.list_statuses(["ref==push-c"])] == [6]
        with pytest.raises(errdefs.InvalidArgument):
            store.list_statuses(["ref=="])

    # --- walk, delete ---------------------------------------------------------------------------

    def test_walk_filters(self, store: Store) -> None:
        a, b = put(store, "a", b"aaa"), put(store, "b", b"bbbb")
        assert sorted(i.digest for i in store.walk()) == sorted([a, b])
        assert [i.digest for i in store.walk([f"digest=={a}"])] == [a]
        assert [i.digest for i in store.walk([f"digest!={a}"])] == [b]
        assert list(store.walk(["digest==sha256:" + "0" * 64])) == []
        with pytest.raises(errdefs.InvalidArgument):
            store.walk(["digest=="])

    def test_delete(self, store: Store) -> None:
        digest = put(store, "ref", b"doomed")
        store.delete(digest)
        with pytest.raises(errdefs.NotFound):
            store.info(digest)
        with pytest.raises(errdefs.NotFound):
            store.reader(digest)
        with pytest.raises(errdefs.NotFound):
            store.delete(digest)
        assert list(store.walk()) == []

    def test_open_reader_survives_delete(self, store: Store) -> None:
        digest = put(store, "ref", b"still readable")
        with store.reader(digest) as r:
            store.delete(digest)
            assert r.read_at(0, 100) == b"still readable"

    def test_missing_blob(self, store: Store) -> None:
        missing = digest_of(b"never written")
        with pytest.raises(errdefs.NotFound):
            store.info(missing)
        with pytest.raises(errdefs.NotFound):
            store.reader(missing)

    # --- bad input ------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "sha256:" + "A" * 64,
            "sha256:" + "g" * 64,
            "sha512:" + "a" * 128,
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "a" * 64,
            "sha256:" + "a" * 64 + "\n",
        ],
    )
    def test_malformed_digest(self, store: Store, bad: str) -> None:
        with pytest.raises(errdefs.InvalidArgument):
            store.info(bad)
        with pytest.raises(errdefs.InvalidArgument):
            store.reader(bad)
        with pytest.raises(errdefs.InvalidArgument):
            store.delete(bad)
        if bad:  # an empty expected means "no check"
            with pytest.raises(errdefs.InvalidArgument):
                store.writer("ref", expected=bad)
            w = store.writer("ref")
            w.write(b"x")
            with pytest.raises(errdefs.InvalidArgument):
                w.commit(1, bad)
            assert list(store.walk()) == []

    def test_empty_ref(self, store: Store) -> None:
        with pytest.raises(errdefs.InvalidArgument):
            store.writer("")

    def test_read_at_edges(self, store: Store) -> None:
        data = b"0123456789"
        digest = put(store, "ref", data)
        with store.reader(digest) as r:
            assert r.size == 10
            assert r.read_at(0, 0) == b""
            assert r.read_at(0, 10) == data
            assert r.read_at(3, 4) == b"3456"
            assert r.read_at(8, 100) == b"89"
            assert r.read_at(9, 1) == b"9"
            assert r.read_at(10, 1) == b""
            assert r.read_at(11, 1) == b""
            with pytest.raises(errdefs.InvalidArgument):
                r.read_at(-1, 1)
            with pytest.raises(errdefs.InvalidArgument):
                r.read_at(0, -1)
