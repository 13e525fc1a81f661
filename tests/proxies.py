"""Connections for tests of the proxies against a real berthd: each in a namespace of its own,
under a lease, as a real client works (berthd's collector takes what no lease, image or
container keeps, at any moment another client deletes something)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from daemon import Berthd

from berth.proxy.connection import Connection
from berth.proxy.content import ContentProxy
from berth.proxy.leases import LeasesProxy


@contextlib.contextmanager
def leased_connection(daemon: Berthd, prefix: str = "proxy") -> Iterator[Connection]:
    """A connection in a fresh namespace under a fresh lease. Afterwards the namespace's blobs
    and ingests are removed and the lease deleted, and the collector has run: berthd's blobs are
    shared between namespaces (a blob another namespace wrote is "already there"), so the next
    test's content store starts empty only once they are gone."""
    conn = Connection(daemon.address, namespace=f"{prefix}-{uuid.uuid4().hex[:12]}")
    leases = LeasesProxy(conn)
    conn.lease_id = leases.create().id
    try:
        yield conn
    finally:
        try:
            store = ContentProxy(conn)
            for status in store.list_statuses():
                store.abort(status.ref)
            for info in store.walk():
                store.delete(info.digest)
            lease, conn.lease_id = conn.lease_id, None
            leases.delete(lease, sync=True)
        finally:
            conn.close()
