"""How a local snapshotter keeps its snapshots' metadata: rows in a SQLite database.

:class:`MetaStore` is the snapshotter's own metadata (not the daemon's): one SQLite database
(WAL, synchronous=FULL) at ``<root>/metadata.db``::

    snapshots
    ├── id          INTEGER PRIMARY KEY AUTOINCREMENT   -- names the snapshot's directory
    ├── name        TEXT UNIQUE                         -- the key, or the committed name
    ├── kind        INTEGER                             -- Kind (view, active, committed)
    ├── parent_id   INTEGER -> snapshots.id             -- NULL: no parent; always a committed one
    ├── labels      TEXT                                -- JSON object, string -> string
    ├── created_ns  INTEGER, updated_ns INTEGER         -- nanoseconds since the epoch
    └── size, inodes INTEGER                            -- usage of a committed snapshot:
                                                           -1 until first asked for, then kept

Ids are never reused once a row holding them has been committed (AUTOINCREMENT), so a
directory named after an id that has no row is always a leftover. An id handed out inside a
transaction that then rolled back *can* come back;
:func:`berth.snapshots.local.place_directory` copes with that.

Every operation runs inside :meth:`MetaStore.transaction`, which serialises callers of one store
(a lock around a single connection) and commits or rolls back as a whole. The snapshotter
(:class:`berth.snapshots.local.LocalSnapshotter`) puts its filesystem step (rename a prepared
directory into place) inside the same transaction, so a crash leaves either the old or the new
state plus, at worst, a directory that ``cleanup`` removes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from berth import errdefs, filters, fsmode
from berth.snapshots.snapshotter import Info, Kind, Usage

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""

UNMEASURED = Usage(size=-1, inodes=-1)
"""The usage a snapshot is committed with: measured when first asked for (its files no longer
change), which keeps the walk over its files off the path of a pull."""

_KIND_NAMES = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}


@dataclass(frozen=True)
class Snapshot:
    """What a snapshotter needs to mount an active snapshot or a view."""

    id: int
    kind: Kind
    parent_ids: tuple[int, ...]  # nearest parent first


def adapt_info(info: Info) -> filters.Adaptor:
    """The filter adaptor for snapshot fields: name, parent, kind, labels.<key>."""

    def adaptor(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        field = fieldpath[0]
        if field == "name":
            return info.name, True
        if field == "parent":
            # containerd reports the parent as present even when empty.
            return info.parent, True
        if field == "kind":
            name = _KIND_NAMES.get(info.kind)
            return (name, True) if name else ("", False)
        if field == "labels":
            return filters.adapt_labels(info.labels, fieldpath)
        return "", False

    return adaptor


def _clean_labels(labels: dict[str, str] | None) -> dict[str, str]:
    # An empty value means "no such label", as in containerd's label buckets.
    return {k: v for k, v in (labels or {}).items() if v}


class Transaction:
    """The operations on the store; only valid inside :meth:`MetaStore.transaction`."""

    def __init__(self, conn: sqlite3.Connection, write: bool) -> None:
        self._conn = conn
        self._write = write

    def _need_write(self) -> None:
        if not self._write:
            raise errdefs.Internal("snapshot metadata: write inside a read-only transaction")

    def _row(self, key: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT s.*, p.name AS parent_name FROM snapshots s "
            "LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.name = ?",
            (key,),
        ).fetchone()
        if row is None:
            raise errdefs.NotFound(f"snapshot {key!r} does not exist")
        return row

    @staticmethod
    def _info(row: sqlite3.Row) -> Info:
        return Info(
            name=row["name"],
            kind=Kind(row["kind"]),
            parent=row["parent_name"] or "",
            labels=json.loads(row["labels"]),
            created_at=row["created_ns"],
            updated_at=row["updated_ns"],
        )

    def _parent_chain(self, first: int | None) -> tuple[int, ...]:
        if first is None:
            return ()
        rows = self._conn.execute(
            "WITH RECURSIVE chain(id, parent_id, depth) AS ("
            " SELECT id, parent_id, 0 FROM snapshots WHERE id = ?"
            " UNION ALL SELECT s.id, s.parent_id, c.depth + 1"
            " FROM snapshots s JOIN chain c ON s.id = c.parent_id)"
            " SELECT id FROM chain ORDER BY depth",
            (first,),
        ).fetchall()
        return tuple(r["id"] for r in rows)

    def get_info(self, key: str) -> tuple[int, Info, Usage]:
        """The id, info and cached usage of ``key``; NotFound if there is no such snapshot.

        The usage is only meaningful for committed snapshots (zero for the others, and
        :data:`UNMEASURED` until :meth:`set_usage` records it).
        """
        row = self._row(key)
        return row["id"], self._info(row), Usage(size=row["size"], inodes=row["inodes"])

    def get_snapshot(self, key: str) -> Snapshot:
        """The active snapshot or view ``key``; FailedPrecondition for a committed one."""
        row = self._row(key)
        kind = Kind(row["kind"])
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise errdefs.FailedPrecondition(f"snapshot {key!r} is not active or a view")
        return Snapshot(row["id"], kind, self._parent_chain(row["parent_id"]))

    def parent_ids(self, key: str) -> tuple[int, ...]:
        """The ids of ``key``'s ancestors, nearest first (empty without a parent)."""
        return self._parent_chain(self._row(key)["parent_id"])

    def create(self, kind: Kind, key: str, parent: str = "",
               labels: dict[str, str] | None = None) -> Snapshot:
        """Record a new active snapshot or view of the committed snapshot ``parent``.

        AlreadyExists if ``key`` is taken (by any kind), NotFound for an unknown parent,
        FailedPrecondition for a parent that is not committed.
        """
        self._need_write()
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise errdefs.InvalidArgument(f"cannot create a snapshot of kind {kind.name}")
        if not key:
            raise errdefs.InvalidArgument("snapshot key must not be empty")
        parent_id: int | None = None
        if parent:
            try:
                prow = self._row(parent)
            except errdefs.NotFound:
                raise errdefs.NotFound(f"parent snapshot {parent!r} does not exist") from None
            if prow["kind"] != Kind.COMMITTED:
                raise errdefs.FailedPrecondition(
                    f"parent {parent!r} is not a committed snapshot")
            parent_id = prow["id"]
        now = time.time_ns()
        try:
            cur = self._conn.execute(
                "INSERT INTO snapshots (name, kind, parent_id, labels, created_ns, updated_ns)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, int(kind), parent_id, json.dumps(_clean_labels(labels)), now, now),
            )
        except sqlite3.IntegrityError:
            raise errdefs.AlreadyExists(f"snapshot {key!r} already exists") from None
        assert cur.lastrowid is not None
        return Snapshot(cur.lastrowid, kind, self._parent_chain(parent_id))

    def commit(self, key: str, name: str, usage: Usage,
               labels: dict[str, str] | None = None) -> int:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``; its id.

        The id is kept (so is the directory); the labels are replaced by ``labels``, not
        inherited, and the timestamps restart, as containerd does. AlreadyExists if ``name`` is
        taken, NotFound for an unknown key, FailedPrecondition if ``key`` is not active.
        """
        self._need_write()
        if not name:
            raise errdefs.InvalidArgument("committed snapshot name must not be empty")
        if self._conn.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone():
            raise errdefs.AlreadyExists(f"snapshot {name!r} already exists")
        row = self._row(key)
        if row["kind"] != Kind.ACTIVE:
            raise errdefs.FailedPrecondition(f"snapshot {key!r} is not active")
        now = time.time_ns()
        self._conn.execute(
            "UPDATE snapshots SET name = ?, kind = ?, labels = ?, created_ns = ?, updated_ns = ?,"
            " size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), json.dumps(_clean_labels(labels)), now, now,
             usage.size, usage.inodes, row["id"]),
        )
        return int(row["id"])

    def set_usage(self, snapshot_id: int, usage: Usage) -> None:
        """Record the measured usage of the committed snapshot ``snapshot_id`` (nothing if it
        was removed meanwhile)."""
        self._need_write()
        self._conn.execute(
            "UPDATE snapshots SET size = ?, inodes = ? WHERE id = ? AND kind = ?",
            (usage.size, usage.inodes, snapshot_id, int(Kind.COMMITTED)))

    def reparent(self, key: str, parent: str) -> Snapshot:
        """Give the parentless active snapshot ``key`` the committed parent ``parent``."""
        self._need_write()
        row = self._row(key)
        if row["kind"] != Kind.ACTIVE or row["parent_id"] is not None:
            raise errdefs.FailedPrecondition(
                f"snapshot {key!r} must be active and without a parent to be given one")
        try:
            prow = self._row(parent)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"parent snapshot {parent!r} does not exist") from None
        if prow["kind"] != Kind.COMMITTED:
            raise errdefs.FailedPrecondition(f"parent {parent!r} is not a committed snapshot")
        self._conn.execute("UPDATE snapshots SET parent_id = ?, updated_ns = ? WHERE id = ?",
                           (prow["id"], time.time_ns(), row["id"]))
        return Snapshot(row["id"], Kind.ACTIVE, self._parent_chain(prow["id"]))

    def remove(self, key: str) -> tuple[int, Kind]:
        """Delete ``key``'s row; its id and kind. FailedPrecondition while it has children."""
        self._need_write()
        row = self._row(key)
        if self._conn.execute("SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1",
                              (row["id"],)).fetchone():
            raise errdefs.FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        return int(row["id"]), Kind(row["kind"])

    def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Update ``info.name``'s labels; the snapshot as stored afterwards.

        No field paths replace all labels; ``labels`` does too; ``labels.<key>`` sets one label
        from ``info.labels`` (removing it when absent or empty). Any other path is
        InvalidArgument: the rest of a snapshot's info is immutable.
        """
        self._need_write()
        row = self._row(info.name)
        current = self._info(row)
        labels = dict(current.labels)
        if not fieldpaths:
            labels = dict(info.labels)
        for path in fieldpaths:
            if path == "labels":
                labels = dict(info.labels)
            elif path.startswith("labels.") and len(path) > len("labels."):
                label = path[len("labels."):]
                labels[label] = info.labels.get(label, "")
            else:
                raise errdefs.InvalidArgument(
                    f"cannot update field {path!r} of snapshot {info.name!r}")
        current.labels = _clean_labels(labels)
        current.updated_at = time.time_ns()
        self._conn.execute("UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                           (json.dumps(current.labels), current.updated_at, row["id"]))
        return current

    def walk(self, filter_strings: Sequence[str] = ()) -> list[Info]:
        """Every snapshot matching any of the filters (all of them without filters)."""
        flt = filters.parse(filter_strings)
        rows = self._conn.execute(
            "SELECT s.*, p.name AS parent_name FROM snapshots s "
            "LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.name").fetchall()
        infos = (self._info(r) for r in rows)
        return [i for i in infos if flt.match(adapt_info(i))]

    def ids(self) -> dict[int, str]:
        """Every id in use, mapped to its snapshot's name."""
        return {r["id"]: r["name"] for r in self._conn.execute("SELECT id, name FROM snapshots")}


class MetaStore:
    """A snapshotter's metadata database; thread-safe, one connection behind a lock."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        try:
            # 0600: the snapshots' labels are the clients' to fill, and nobody else's to read.
            fsmode.private_database(path)
        except OSError as err:
            raise errdefs.Internal(f"cannot create snapshot metadata {path}: {err}") from err
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit that returned survives a power loss, as the contract promises.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                conn.close()
                raise errdefs.FailedPrecondition(
                    f"{path}: snapshot metadata schema {version} is newer than this Berth "
                    f"understands ({_SCHEMA_VERSION})")
            conn.executescript(_SCHEMA + f"PRAGMA user_version = {_SCHEMA_VERSION};")
        except sqlite3.Error as err:
            raise errdefs.Internal(f"cannot open snapshot metadata {path}: {err}") from err
        self._conn: sqlite3.Connection | None = conn
        self.path = path

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Transaction]:
        """Run the block as one transaction: committed if it returns, rolled back if it raises.

        Blocks of one store never overlap. Do not yield control to other code that may use the
        same store (for example, by iterating lazily) inside the block.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                raise errdefs.FailedPrecondition(f"{self.path}: snapshot metadata is closed")
            try:
                # IMMEDIATE takes the write lock up front, so another process sharing the
                # file cannot make our commit fail half way.
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield Transaction(conn, write)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise errdefs.Internal(f"{self.path}: snapshot metadata: {err}") from err

    def close(self) -> None:
        """Close the database; later transactions fail with FailedPrecondition."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
