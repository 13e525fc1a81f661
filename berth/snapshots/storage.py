"""How a local snapshotter stores its snapshots: rows in a database, trees in directories.

:class:`MetaStore` is the snapshotter's own metadata (not the daemon's): one SQLite database
(WAL, synchronous=FULL) at ``<root>/metadata.db``::

    snapshots
    ├── id          INTEGER PRIMARY KEY AUTOINCREMENT   -- names the snapshot's directory
    ├── name        TEXT UNIQUE                         -- the key, or the committed name
    ├── kind        INTEGER                             -- Kind (view, active, committed)
    ├── parent_id   INTEGER -> snapshots.id             -- NULL: no parent; always a committed one
    ├── labels      TEXT                                -- JSON object, string -> string
    ├── created_ns  INTEGER, updated_ns INTEGER         -- nanoseconds since the epoch
    └── size, inodes INTEGER                            -- usage, cached when committed

Ids are never reused once a row holding them has been committed (AUTOINCREMENT), so a
directory named after an id that has no row is always a leftover. An id handed out inside a
transaction that then rolled back *can* come back; :func:`place_directory` copes with that.

Every operation runs inside :meth:`MetaStore.transaction`, which serialises callers of one store
(a lock around a single connection) and commits or rolls back as a whole. The snapshotter puts
its filesystem step (rename a prepared directory into place) inside the same transaction, so a
crash leaves either the old or the new state plus, at worst, a directory that ``cleanup`` removes.

:class:`LocalSnapshotter` is that lifecycle for snapshotters keeping snapshot ``<id>`` in
``<root>/snapshots/<id>`` (overlay, native); they add only the directory layout and the mounts.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from berth import errdefs, filters
from berth.mount import Mount
from berth.snapshots.snapshotter import Info, Kind, Snapshotter, Usage

log = logging.getLogger(__name__)

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

        The usage is only meaningful for committed snapshots (zero for the others).
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


def place_directory(tmp: str, final: str) -> None:
    """Rename the prepared directory ``tmp`` to ``final`` and make the rename durable.

    Call inside the write transaction that created ``final``'s id. A directory already at
    ``final`` can only be the leftover of a transaction that rolled back after its rename (the
    id was handed out again), so it is removed first.
    """
    try:
        os.rename(tmp, final)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(final)
        os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (renames, creations) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_usage(root: str) -> Usage:
    """The space and inodes used under ``root`` (itself included), each inode counted once.

    What containerd's ``fs.DiskUsage`` reports: ``st_blocks * 512`` per distinct inode. Entries
    that vanish during the walk (a container deleting files) simply do not count; a missing
    ``root`` is NotFound.
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise errdefs.NotFound(f"{root} does not exist") from None
    seen = {(st.st_dev, st.st_ino)}
    size = st.st_blocks * 512
    pending = [root] if stat.S_ISDIR(st.st_mode) else []
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return Usage(size=size, inodes=len(seen))


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Turn an OSError from the block into errdefs.Internal naming ``what`` failed."""
    try:
        yield
    except OSError as err:
        raise errdefs.Internal(f"{what}: {err}") from err


def _discard(path: str, cause: BaseException) -> None:
    # Undo a half-done step while ``cause`` propagates; if even that fails, say so on ``cause``
    # rather than hide it: cleanup() will remove the directory later.
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        cause.add_note(f"could not remove {path} ({err}); cleanup() will retry")


class LocalSnapshotter(Snapshotter):
    """The lifecycle of snapshotters that keep snapshot ``<id>`` in ``<root>/snapshots/<id>``.

    Subclasses fill a new directory (:meth:`_populate`), say how to mount a snapshot
    (:meth:`_mounts`) and which directory holds a snapshot's own data (:meth:`_data_dir`).

    Crash safety: a new directory is built as ``snapshots/new-*`` and renamed to its id inside
    the transaction that records it; a removal renames ``<id>`` to ``rm-<id>`` inside the
    transaction that deletes the row, then deletes it after the commit. After a crash, anything
    under ``snapshots/`` that is not a live id is a leftover, which :meth:`cleanup` deletes, except
    ``rm-<id>`` whose row still exists (a removal that never committed), which it puts back.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._snapshots_dir = os.path.join(self.root, "snapshots")
        with os_errors(f"cannot create snapshotter root {self.root}"):
            os.makedirs(self._snapshots_dir, mode=0o700, exist_ok=True)
        self._ms = MetaStore(os.path.join(self.root, "metadata.db"))
        # rm- directories being deleted outside the store's lock: cleanup() leaves them alone.
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    @abc.abstractmethod
    def _populate(self, directory: str, snapshot: Snapshot) -> None:
        """Fill the new, empty ``directory`` for ``snapshot``; runs inside its transaction."""

    @abc.abstractmethod
    def _mounts(self, snapshot: Snapshot) -> list[Mount]: ...

    @abc.abstractmethod
    def _data_dir(self, snapshot_id: int) -> str:
        """The directory whose usage is the snapshot's own."""

    def _dir(self, snapshot_id: int) -> str:
        return os.path.join(self._snapshots_dir, str(snapshot_id))

    def stat(self, key: str) -> Info:
        with self._ms.transaction() as tx:
            return tx.get_info(key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self._ms.transaction(write=True) as tx:
            return tx.update_info(info, fieldpaths)

    def usage(self, key: str) -> Usage:
        with self._ms.transaction() as tx:
            snapshot_id, info, usage = tx.get_info(key)
        if info.kind == Kind.ACTIVE:
            with os_errors(f"cannot measure snapshot {key!r}"):
                return disk_usage(self._data_dir(snapshot_id))
        return usage

    def mounts(self, key: str) -> list[Mount]:
        with self._ms.transaction() as tx:
            return self._mounts(tx.get_snapshot(key))

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str,
                labels: dict[str, str] | None) -> list[Mount]:
        tmp = final = ""
        try:
            # The temporary directory is made inside the transaction so that cleanup(), which
            # holds the same lock while it scans, never sees it half built.
            with self._ms.transaction(write=True) as tx, os_errors(f"cannot prepare {key!r}"):
                tmp = tempfile.mkdtemp(prefix="new-", dir=self._snapshots_dir)
                snapshot = tx.create(kind, key, parent, labels)
                self._populate(tmp, snapshot)
                final = self._dir(snapshot.id)
                place_directory(tmp, final)
                tmp = ""
        except BaseException as err:
            # Either the row was never committed or it rolled back: its directory must go too.
            for leftover in (tmp, final):
                if leftover:
                    _discard(leftover, err)
            raise
        return self._mounts(snapshot)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        with self._ms.transaction(write=True) as tx:
            snapshot_id, info, usage = tx.get_info(key)
            if info.kind == Kind.ACTIVE:
                with os_errors(f"cannot measure snapshot {key!r}"):
                    usage = disk_usage(self._data_dir(snapshot_id))
            tx.commit(key, name, usage, labels)

    def remove(self, key: str) -> None:
        """Remove ``key``; its disk space is freed before returning when possible.

        Once the removal is committed it is not reported as failed: a directory that cannot
        be deleted (say, something is still mounted in it) is logged and left to cleanup().
        """
        retired = ""
        snapshot_id = 0
        try:
            with self._ms.transaction(write=True) as tx, os_errors(f"cannot remove {key!r}"):
                snapshot_id, _ = tx.remove(key)
                retired = self._retire(snapshot_id)
        except BaseException as err:
            if retired:
                self._unretire(retired, snapshot_id, err)
            raise
        if retired:
            try:
                shutil.rmtree(retired)
            except OSError as err:
                log.warning("snapshot %r removed, but not its directory %s (%s); "
                            "cleanup() will retry", key, retired, err)
            finally:
                with self._busy_lock:
                    self._busy.discard(os.path.basename(retired))

    def _retire(self, snapshot_id: int) -> str:
        # Runs inside the removing transaction, so cleanup() cannot see rm-<id> before it is
        # marked busy.
        retired = os.path.join(self._snapshots_dir, f"rm-{snapshot_id}")
        try:
            os.rename(self._dir(snapshot_id), retired)
        except FileNotFoundError:
            return ""  # no directory: an interrupted earlier removal already took it
        with self._busy_lock:
            self._busy.add(os.path.basename(retired))
        return retired

    def _unretire(self, retired: str, snapshot_id: int, cause: BaseException) -> None:
        try:
            os.rename(retired, self._dir(snapshot_id))
        except OSError as err:
            cause.add_note(f"could not restore {retired} ({err}); cleanup() will")
        finally:
            with self._busy_lock:
                self._busy.discard(os.path.basename(retired))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        # Read everything first: the caller's loop body must not run under the store's lock.
        with self._ms.transaction() as tx:
            return iter(tx.walk(filters))

    def cleanup(self) -> None:
        doomed: list[str] = []
        with self._ms.transaction(write=True) as tx, os_errors("snapshot cleanup"):
            live = tx.ids()
            with self._busy_lock:
                busy = set(self._busy)
            for name in sorted(os.listdir(self._snapshots_dir)):
                if name in busy or (name.isdigit() and int(name) in live):
                    continue
                path = os.path.join(self._snapshots_dir, name)
                restore = name.removeprefix("rm-")
                if (name.startswith("rm-") and restore.isdigit() and int(restore) in live
                        and not os.path.lexists(self._dir(int(restore)))):
                    os.rename(path, self._dir(int(restore)))
                    continue
                doomed.append(name)
            with self._busy_lock:
                self._busy.update(doomed)
        failures = []
        for name in doomed:
            path = os.path.join(self._snapshots_dir, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                failures.append(f"{path}: {err}")
            finally:
                with self._busy_lock:
                    self._busy.discard(name)
        if failures:
            raise errdefs.Internal("snapshot cleanup left: " + "; ".join(failures))

    def close(self) -> None:
        self._ms.close()
