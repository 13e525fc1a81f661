"""A snapshotter as a namespace sees it.

Each namespace has its own key space; the backend snapshotter (overlayfs, native) holds every
namespace's snapshots under backend keys ``<namespace>/<seq>/<key>``, where ``seq`` is unique so a
key removed and made again never meets its old self. Backend work happens outside the metadata
transaction: the row is checked, the backend acts, then the row is written; if the row can't be
written the backend work is undone. Anything a crash leaves behind in the backend has no row and is
swept by the garbage collector.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence

from berth import errdefs, filters, labels, namespaces
from berth.api.events import snapshot_pb2
from berth.clock import now_ns
from berth.events import Publisher
from berth.leases import Resource
from berth.metadata.db import DB, dumps, loads
from berth.metadata.leases import add_to_current_lease, remove_from_current_lease
from berth.mount import Mount
from berth.snapshots.snapshotter import Info, Kind, Reparenting, Snapshotter, Usage

log = logging.getLogger(__name__)

_KIND_NAMES = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "committed"}


def _row_to_info(row: sqlite3.Row) -> Info:
    return Info(row["key"], Kind(row["kind"]), row["parent"], loads(row["labels"]),
                row["created_at"], row["updated_at"])


def _adapt(info: Info, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    if path[0] == "name":
        return info.name, True
    if path[0] == "parent":
        return info.parent, True
    if path[0] == "kind":
        return _KIND_NAMES.get(info.kind, "unknown"), True
    if path[0] == "labels":
        return filters.adapt_labels(info.labels, path)
    return "", False


class NamespacedSnapshotter(Snapshotter):
    def __init__(self, db: DB, name: str, backend: Snapshotter, publisher: Publisher,
                 on_delete: Callable[[bool], None] = lambda sync: None) -> None:
        self._db = db
        self.name = name
        self.backend = backend
        self._publisher = publisher
        self._on_delete = on_delete
        self._resource_type = f"snapshots/{name}"

    # -- rows --------------------------------------------------------------------------------

    def _get(self, c: sqlite3.Connection, ns: str, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = c.execute(
            "SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (ns, self.name, key)).fetchone()
        return row

    def _require(self, c: sqlite3.Connection, ns: str, key: str) -> sqlite3.Row:
        row = self._get(c, ns, key)
        if row is None:
            raise errdefs.NotFound(f"snapshot {key!r} does not exist in snapshotter {self.name!r}")
        return row

    def _next_backend_key(self, c: sqlite3.Connection, ns: str, key: str) -> str:
        c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('snapshot_seq', '0')")
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'snapshot_seq'")
        seq = c.execute("SELECT value FROM meta WHERE key = 'snapshot_seq'").fetchone()[0]
        return f"{ns}/{seq}/{key}"

    # -- Snapshotter -------------------------------------------------------------------------

    def stat(self, key: str) -> Info:
        ns = namespaces.current()
        with self._db.tx() as c:
            return _row_to_info(self._require(c, ns, key))

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        ns = namespaces.current()
        with self._db.tx() as c:
            current = _row_to_info(self._require(c, ns, info.name))
            new_labels, _ = labels.apply_update(current.labels, info.labels, fieldpaths)
            now = now_ns()
            c.execute("UPDATE snapshots SET labels = ?, updated_at = ? WHERE namespace = ? AND "
                      "snapshotter = ? AND key = ?",
                      (dumps(new_labels), now, ns, self.name, info.name))
        current.labels = new_labels
        current.updated_at = now
        return current

    def usage(self, key: str) -> Usage:
        ns = namespaces.current()
        with self._db.tx() as c:
            row = self._require(c, ns, key)
        return self.backend.usage(row["backend_key"])

    def mounts(self, key: str) -> list[Mount]:
        ns = namespaces.current()
        with self._db.tx() as c:
            row = self._require(c, ns, key)
        if row["kind"] == Kind.COMMITTED:
            raise errdefs.FailedPrecondition(
                f"snapshot {key!r} is committed: mount a view or an active snapshot of it")
        return self.backend.mounts(row["backend_key"])

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels or {})

    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels or {})

    def _create(self, kind: Kind, key: str, parent: str, lbls: dict[str, str]) -> list[Mount]:
        with self._db.gc_lock.shared():
            return self._create_locked(kind, key, parent, lbls)

    def _create_locked(self, kind: Kind, key: str, parent: str,
                       lbls: dict[str, str]) -> list[Mount]:
        if not key:
            raise errdefs.InvalidArgument("snapshot key must not be empty")
        labels.validate(lbls)
        ns = namespaces.current()
        with self._db.tx() as c:
            if self._get(c, ns, key) is not None:
                raise errdefs.AlreadyExists(f"snapshot {key!r} already exists")
            parent_backend = ""
            if parent:
                prow = self._get(c, ns, parent)
                if prow is None:
                    raise errdefs.NotFound(f"parent snapshot {parent!r} does not exist")
                if prow["kind"] != Kind.COMMITTED:
                    raise errdefs.FailedPrecondition(
                        f"parent {parent!r} is not committed: commit it before using it as a "
                        "parent")
                parent_backend = prow["backend_key"]
            backend_key = self._next_backend_key(c, ns, key)
        if kind == Kind.ACTIVE:
            mounts = self.backend.prepare(backend_key, parent_backend, lbls)
        else:
            mounts = self.backend.view(backend_key, parent_backend, lbls)
        try:
            now = now_ns()
            with self._db.tx() as c:
                if self._get(c, ns, key) is not None:
                    raise errdefs.AlreadyExists(f"snapshot {key!r} already exists")
                if parent and self._get(c, ns, parent) is None:
                    raise errdefs.NotFound(f"parent snapshot {parent!r} was removed")
                self._db.ensure_namespace(c, ns)
                c.execute(
                    "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent,"
                    " kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, self.name, key, backend_key, parent, int(kind), dumps(lbls), now, now),
                )
                add_to_current_lease(c, ns, Resource(key, self._resource_type))
        except BaseException:
            self._undo(backend_key)
            raise
        self._publisher.publish("/snapshot/prepare", snapshot_pb2.SnapshotPrepare(
            key=key, parent=parent))
        return mounts

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        with self._db.gc_lock.shared():
            self._commit_locked(name, key, dict(labels or {}))

    def _commit_locked(self, name: str, key: str, lbls: dict[str, str]) -> None:
        if not name:
            raise errdefs.InvalidArgument("snapshot name must not be empty")
        labels.validate(lbls)
        ns = namespaces.current()
        with self._db.tx() as c:
            row = self._require(c, ns, key)
            if row["kind"] != Kind.ACTIVE:
                raise errdefs.FailedPrecondition(
                    f"snapshot {key!r} is not active ({_KIND_NAMES[Kind(row['kind'])]}): only "
                    "active snapshots can be committed")
            if self._get(c, ns, name) is not None:
                raise errdefs.AlreadyExists(f"snapshot {name!r} already exists")
            backend_key = self._next_backend_key(c, ns, name)
        self.backend.commit(backend_key, row["backend_key"], lbls)
        try:
            now = now_ns()
            with self._db.tx() as c:
                if self._get(c, ns, name) is not None:
                    raise errdefs.AlreadyExists(f"snapshot {name!r} already exists")
                c.execute("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND "
                          "key = ?", (ns, self.name, key))
                c.execute(
                    "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent,"
                    " kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, self.name, name, backend_key, row["parent"], int(Kind.COMMITTED),
                     dumps(lbls), now, now),
                )
                add_to_current_lease(c, ns, Resource(name, self._resource_type))
                remove_from_current_lease(c, ns, Resource(key, self._resource_type))
        except BaseException:
            self._undo(backend_key)
            raise
        self._publisher.publish("/snapshot/commit", snapshot_pb2.SnapshotCommit(
            key=key, name=name))

    def remove(self, key: str) -> None:
        ns = namespaces.current()
        with self._db.tx() as c:
            row = self._require(c, ns, key)
            child = c.execute(
                "SELECT key FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ?"
                " LIMIT 1", (ns, self.name, key)).fetchone()
            if child is not None:
                raise errdefs.FailedPrecondition(
                    f"cannot remove snapshot {key!r}: snapshot {child['key']!r} is based on it; "
                    "remove its children first")
            c.execute("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                      (ns, self.name, key))
        self._undo(row["backend_key"])
        self._publisher.publish("/snapshot/remove", snapshot_pb2.SnapshotRemove(
            key=key))

    def _undo(self, backend_key: str) -> None:
        """Remove a backend snapshot that has no row; if that fails, the collector will."""
        try:
            self.backend.remove(backend_key)
        except errdefs.BerthError as err:
            log.warning("snapshot %s: backend removal deferred to garbage collection: %s",
                        backend_key, err)
            self._on_delete(False)

    def walk(self, filter_strings: Sequence[str] = ()) -> Iterator[Info]:
        ns = namespaces.current()
        flt = filters.parse(filter_strings)
        with self._db.tx() as c:
            rows = c.execute("SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? "
                             "ORDER BY key", (ns, self.name)).fetchall()
        infos = [_row_to_info(row) for row in rows]
        return iter([i for i in infos if flt.match(functools.partial(_adapt, i))])

    def cleanup(self) -> None:
        self.backend.cleanup()

    def close(self) -> None:
        self.backend.close()


class ReparentingNamespacedSnapshotter(NamespacedSnapshotter, Reparenting):
    """A namespaced snapshotter over a :class:`Reparenting` backend, reparenting too."""

    def __init__(self, db: DB, name: str, backend: Snapshotter, publisher: Publisher,
                 on_delete: Callable[[bool], None] = lambda sync: None) -> None:
        if not isinstance(backend, Reparenting):
            raise TypeError(f"snapshotter {name!r} cannot reparent")
        super().__init__(db, name, backend, publisher, on_delete)
        self._reparenting: Reparenting = backend

    def reparent(self, key: str, parent: str) -> list[Mount]:
        """Give the parentless active snapshot ``key`` the committed ``parent``."""
        ns = namespaces.current()
        with self._db.tx() as c:
            row = self._require(c, ns, key)
            if row["kind"] != Kind.ACTIVE or row["parent"]:
                raise errdefs.FailedPrecondition(
                    f"snapshot {key!r} must be active and without a parent to be given one")
            prow = self._require(c, ns, parent)
            if prow["kind"] != Kind.COMMITTED:
                raise errdefs.FailedPrecondition(f"parent {parent!r} is not committed")
            mounts = self._reparenting.reparent(row["backend_key"], prow["backend_key"])
            c.execute("UPDATE snapshots SET parent = ?, updated_at = ? WHERE namespace = ? AND "
                      "snapshotter = ? AND key = ?", (parent, now_ns(), ns, self.name, key))
        return mounts


def namespaced(db: DB, name: str, backend: Snapshotter, publisher: Publisher,
               on_delete: Callable[[bool], None] = lambda sync: None) -> NamespacedSnapshotter:
    """The namespaced view of ``backend``, with its capabilities (:class:`Reparenting`)."""
    if isinstance(backend, Reparenting):
        return ReparentingNamespacedSnapshotter(db, name, backend, publisher, on_delete)
    return NamespacedSnapshotter(db, name, backend, publisher, on_delete)
