"""The content store as a namespace sees it.

Blobs are stored once on disk (the local store) and shared: a namespace sees a blob when it holds
a record of it here, with its own labels. Ingests are kept in the local store under
``<namespace>/<ref>`` so each namespace has its own refs. Blobs and ingests written under a lease
are added to it. A blob whose last namespace record goes is removed from disk by the garbage
collector, never here, so a concurrent writer elsewhere cannot lose it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence

from berth import errdefs, filters, labels, namespaces
from berth.api.events import content_pb2
from berth.clock import now_ns
from berth.content.content import (
    Info,
    ReaderAt,
    Status,
    Store,
    Writer,
    info_adaptor,
    status_adaptor,
)
from berth.digest import validate_digest
from berth.events import Publisher
from berth.labels import validate as validate_labels
from berth.leases import Resource
from berth.metadata.db import DB, dumps, loads
from berth.metadata.leases import add_to_current_lease, remove_from_current_lease


def _row_to_info(row: sqlite3.Row) -> Info:
    return Info(row["digest"], row["size"], row["created_at"], row["updated_at"],
                loads(row["labels"]))


class NamespacedWriter(Writer):
    def __init__(self, store: NamespacedContentStore, ns: str, ref: str, inner: Writer) -> None:
        self._store = store
        self._ns = ns
        self._ref = ref
        self._inner = inner

    def write(self, data: bytes) -> int:
        return self._inner.write(data)

    def status(self) -> Status:
        st = self._inner.status()
        st.ref = self._ref
        return st

    def digest(self) -> str:
        return self._inner.digest()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def commit(self, size: int, expected: str,
               labels: Mapping[str, str] | None = None) -> str:
        """Commit and record the blob in this namespace with ``labels``."""
        lbls = labels or {}
        validate_labels(lbls)
        with self._store.db.gc_lock.shared():
            try:
                digest = self._inner.commit(size, expected)
            except errdefs.AlreadyExists:
                # Someone (maybe another namespace) stored the same bytes first: the blob on
                # disk is what we verified we wanted, so record it here.
                digest = expected or self._inner.digest()
            self._store._record(self._ns, digest, lbls, must_be_new=True,
                                committed_ref=self._ref)
        return digest

    def close(self) -> None:
        self._inner.close()


class NamespacedContentStore(Store):
    def __init__(self, db: DB, local: Store, publisher: Publisher,
                 on_delete: Callable[[bool], None] = lambda sync: None) -> None:
        self.db = db
        self.local = local
        self._publisher = publisher
        self._on_delete = on_delete

    # -- records -----------------------------------------------------------------------------

    def _record(self, ns: str, digest: str, lbls: Mapping[str, str], *,
                must_be_new: bool, committed_ref: str = "") -> None:
        """Record the blob ``digest`` (on disk) in ``ns`` and the current lease. The caller
        holds the GC lock's shared side, from before it saw the blob on disk."""
        size = self.local.info(digest).size
        now = now_ns()
        with self.db.tx() as c:
            self.db.ensure_namespace(c, ns)
            exists = c.execute("SELECT 1 FROM content WHERE namespace = ? AND digest = ?",
                               (ns, digest)).fetchone()
            if exists is None:
                c.execute(
                    "INSERT INTO content (namespace, digest, size, labels, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (ns, digest, size, dumps(lbls), now, now),
                )
            add_to_current_lease(c, ns, Resource(digest, "content"))
            if committed_ref:
                # The blob replaces the ingest in the lease, as in containerd.
                remove_from_current_lease(c, ns, Resource(committed_ref, "ingests"))
        if exists is not None and must_be_new:
            raise errdefs.AlreadyExists(f"content {digest} already exists")

    def _row(self, digest: str) -> sqlite3.Row:
        validate_digest(digest)
        ns = namespaces.current()
        with self.db.tx() as c:
            row: sqlite3.Row | None = c.execute(
                "SELECT * FROM content WHERE namespace = ? AND digest = ?", (ns, digest)
            ).fetchone()
        if row is None:
            raise errdefs.NotFound(f"content {digest} not found in namespace {ns!r}")
        return row

    # -- Provider ----------------------------------------------------------------------------

    def info(self, digest: str) -> Info:
        return _row_to_info(self._row(digest))

    def reader(self, digest: str) -> ReaderAt:
        self._row(digest)
        return self.local.reader(digest)

    # -- Ingester ----------------------------------------------------------------------------

    def _on_disk(self, digest: str) -> bool:
        try:
            self.local.info(digest)
        except errdefs.NotFound:
            return False
        return True

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> NamespacedWriter:
        if not ref:
            raise errdefs.InvalidArgument("ref must not be empty: name the upload")
        ns = namespaces.current()
        if expected:
            validate_digest(expected)
        # Seeing the blob on disk and recording it here is one step for the collector (the
        # shared GC lock): it cannot remove the blob in between and leave a record (and a
        # lease, an image) naming bytes that are gone.
        with self.db.gc_lock.shared():
            if expected and self._on_disk(expected):
                # Shared content: the blob is on disk already; make it visible here.
                self._record(ns, expected, {}, must_be_new=False)
                raise errdefs.AlreadyExists(f"content {expected} already exists")
            with self.db.tx() as c:
                self.db.ensure_namespace(c, ns)
                add_to_current_lease(c, ns, Resource(ref, "ingests"))
            try:
                inner = self.local.writer(f"{ns}/{ref}", total=total, expected=expected)
            except errdefs.AlreadyExists:
                # Committed by someone else since the check above: shared content all the same.
                self._record(ns, expected, {}, must_be_new=False)
                raise
        return NamespacedWriter(self, ns, ref, inner)

    # -- Manager -----------------------------------------------------------------------------

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        ns = namespaces.current()
        with self.db.tx() as c:
            current = _row_to_info(self._row(info.digest))
            new_labels, _ = labels.apply_update(current.labels, info.labels, fieldpaths)
            now = now_ns()
            c.execute("UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND "
                      "digest = ?", (dumps(new_labels), now, ns, info.digest))
        if any(k.startswith(labels.GC_REF_CONTENT) or k.startswith(labels.GC_REF_SNAPSHOT)
               for k in {**current.labels, **new_labels}):
            self._on_delete(False)  # references changed: something may be collectable
        return Info(current.digest, current.size, current.created_at, now, new_labels)

    def walk(self, filter_strings: Sequence[str] = ()) -> Iterator[Info]:
        ns = namespaces.current()
        flt = filters.parse(filter_strings)
        with self.db.tx() as c:
            rows = c.execute("SELECT * FROM content WHERE namespace = ? ORDER BY digest",
                             (ns,)).fetchall()
        infos = [_row_to_info(row) for row in rows]
        return iter([i for i in infos if flt.match(info_adaptor(i))])

    def delete(self, digest: str) -> None:
        validate_digest(digest)
        ns = namespaces.current()
        with self.db.tx() as c:
            cur = c.execute("DELETE FROM content WHERE namespace = ? AND digest = ?",
                            (ns, digest))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"content {digest} not found in namespace {ns!r}")
        self._publisher.publish("/content/delete", content_pb2.ContentDelete(digest=digest))
        self._on_delete(False)

    # -- IngestManager -----------------------------------------------------------------------

    def status(self, ref: str) -> Status:
        ns = namespaces.current()
        st = self.local.status(f"{ns}/{ref}")
        st.ref = ref
        return st

    def list_statuses(self, filter_strings: Sequence[str] = ()) -> list[Status]:
        prefix = namespaces.current() + "/"
        flt = filters.parse(filter_strings)
        out = []
        for st in self.local.list_statuses():
            if not st.ref.startswith(prefix):
                continue
            st.ref = st.ref[len(prefix):]

            if flt.match(status_adaptor(st)):
                out.append(st)
        return out

    def abort(self, ref: str) -> None:
        self.local.abort(f"{namespaces.current()}/{ref}")
