"""The Snapshotter contract over berthd's API: the conformance suite run against the snapshotter
proxy of each snapshotter berthd loads (each test in a namespace of its own), then what only
the API adds."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from daemon import Berthd
from proxies import leased_connection
from snapshot_conformance import SnapshotterConformance

from berth import errdefs
from berth.proxy.connection import Connection
from berth.proxy.snapshots import SnapshotterProxy
from berth.snapshots.snapshotter import Snapshotter

pytestmark = pytest.mark.needs_root


@pytest.fixture
def connection(module_berthd: Berthd) -> Iterator[Connection]:
    with leased_connection(module_berthd) as conn:
        yield conn


class TestOverlayProxy(SnapshotterConformance):
    @pytest.fixture
    def open_snapshotter(self, connection: Connection) -> Callable[[], Snapshotter]:
        return lambda: SnapshotterProxy(connection, "overlayfs")


class TestNativeProxy(SnapshotterConformance):
    @pytest.fixture
    def open_snapshotter(self, connection: Connection) -> Callable[[], Snapshotter]:
        return lambda: SnapshotterProxy(connection, "native")


def test_unknown_snapshotter_is_invalid_argument(connection: Connection) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="not loaded"):
        SnapshotterProxy(connection, "no-such").prepare("a")


def test_exists(connection: Connection) -> None:
    s = SnapshotterProxy(connection, "overlayfs")
    assert not s.exists("a")
    s.prepare("a")
    assert s.exists("a")


def test_namespaces_do_not_see_each_other(module_berthd: Berthd,
                                          connection: Connection) -> None:
    SnapshotterProxy(connection, "overlayfs").prepare("mine")
    other = Connection(module_berthd.address, namespace=f"other-{uuid.uuid4().hex[:12]}")
    try:
        theirs = SnapshotterProxy(other, "overlayfs")
        with pytest.raises(errdefs.NotFound):
            theirs.stat("mine")
        theirs.prepare("mine")  # the same key is another snapshot there
    finally:
        other.close()
