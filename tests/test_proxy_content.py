"""The content store contract over berthd's API: the conformance suite run against the content
proxy and a real berthd (each test in a namespace of its own), then what only the API adds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from content_conformance import ContentStoreSuite, ReopenStore, digest_of, put, read_all
from daemon import Berthd
from proxies import leased_connection

from berth import errdefs
from berth.content.content import open_stream
from berth.proxy.connection import Connection
from berth.proxy.content import ContentProxy

pytestmark = pytest.mark.needs_root


@pytest.fixture
def connection(module_berthd: Berthd) -> Iterator[Connection]:
    with leased_connection(module_berthd) as conn:
        yield conn


class TestContentProxy(ContentStoreSuite):
    @pytest.fixture
    def store(self, connection: Connection) -> ContentProxy:
        return ContentProxy(connection)

    @pytest.fixture
    def reopen(self, module_berthd: Berthd, connection: Connection) -> ReopenStore:
        def restart() -> ContentProxy:
            module_berthd.restart()
            return ContentProxy(connection)
        return restart


def test_namespaces_do_not_see_each_other(module_berthd: Berthd,
                                          connection: Connection) -> None:
    store = ContentProxy(connection)
    digest = put(store, "ref", b"mine")
    other = Connection(module_berthd.address, namespace=f"other-{uuid.uuid4().hex[:12]}")
    try:
        with pytest.raises(errdefs.NotFound):
            ContentProxy(other).info(digest)
        assert list(ContentProxy(other).walk()) == []
    finally:
        other.close()


def test_labels_on_commit_and_set_labels(connection: Connection) -> None:
    store = ContentProxy(connection)
    w = store.writer("ref", total=5, expected=digest_of(b"hello"))
    w.write(b"hello")
    digest = w.commit(5, digest_of(b"hello"), labels={"a": "1", "b": "2"})
    assert store.info(digest).labels == {"a": "1", "b": "2"}
    store.set_labels(digest, {"a": "", "c": "3"})
    assert store.info(digest).labels == {"b": "2", "c": "3"}


def test_sequential_and_random_reads_of_a_large_blob(connection: Connection) -> None:
    store = ContentProxy(connection)
    data = bytes(range(256)) * 4096 * 3 + b"tail"  # 3 MiB and a bit: several Read chunks
    digest = put(store, "large", data, chunk=1 << 20)
    with open_stream(store.reader(digest), 64 << 10) as f:
        assert f.read() == data
    with store.reader(digest) as r:
        assert r.read_at((2 << 20) + 3, 10) == data[(2 << 20) + 3:(2 << 20) + 13]
        assert r.read_at(5, 10) == data[5:15]  # backwards: a new stream
        assert r.read_at(len(data) - 4, 100) == b"tail"
    assert read_all(store, digest) == data


def test_no_namespace_is_failed_precondition(module_berthd: Berthd) -> None:
    conn = Connection(module_berthd.address)  # no namespace bound, none current
    try:
        with pytest.raises(errdefs.FailedPrecondition, match="namespace"):
            ContentProxy(conn).info(digest_of(b"x"))
    finally:
        conn.close()


def test_daemon_not_there_is_unavailable(tmp_path: object) -> None:
    conn = Connection(f"{tmp_path}/no-such.sock", namespace="default", timeout=5)
    try:
        with pytest.raises(errdefs.Unavailable, match="cannot reach berthd"):
            ContentProxy(conn).info(digest_of(b"x"))
    finally:
        conn.close()
