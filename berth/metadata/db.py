"""The embedded metadata database (SQLite in WAL mode).

Everything a namespace owns lives here; blobs and snapshot trees live in their own stores and are
referenced by digest and key. The schema, as a tree:

    namespaces(name) ─ labels
    └── <namespace>
        ├── images(name) ─ target descriptor, labels, created/updated
        ├── content(digest) ─ size, labels      (a shared blob, visible in this namespace)
        ├── snapshots(snapshotter, key) ─ backend key, parent, kind, labels
        ├── containers(id) ─ image, runtime (name, options Any), spec Any, snapshotter and
        │                    snapshot key, extensions (name → Any), labels, created/updated
        └── leases(id) ─ labels
            └── lease_resources(type, id)           (content / ingests / snapshots/<snapshotter>)

Writes happen in short transactions under one lock (:meth:`DB.tx`); SQLite's WAL lets readers on
other connections proceed, but Berth keeps a single connection and a lock for simplicity: every
statement here is small.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping

from berth import fsmode
from berth.clock import now_ns

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS content (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, digest)
);
CREATE INDEX IF NOT EXISTS content_by_digest ON content (digest);
CREATE TABLE IF NOT EXISTS snapshots (
    namespace TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    key TEXT NOT NULL,
    backend_key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, snapshotter, key)
);
CREATE TABLE IF NOT EXISTS containers (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    image TEXT NOT NULL DEFAULT '',
    runtime_name TEXT NOT NULL,
    runtime_options_type TEXT,
    runtime_options BLOB,
    spec_type TEXT NOT NULL,
    spec BLOB NOT NULL,
    snapshotter TEXT NOT NULL DEFAULT '',
    snapshot_key TEXT NOT NULL DEFAULT '',
    extensions TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE IF NOT EXISTS leases (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE IF NOT EXISTS lease_resources (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id)
);
"""


def dumps(labels: Mapping[str, str] | None) -> str:
    return json.dumps(dict(labels or {}), sort_keys=True, separators=(",", ":"))


def loads(text: str) -> dict[str, str]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return {str(k): str(v) for k, v in value.items()}


class SharedExclusiveLock:
    """Many holders of the shared side at once, or one of the exclusive side."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class DB:
    """The metadata database at ``path``. Thread-safe; use :meth:`tx` for every access."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        # Held shared by work that puts something on disk before its row exists (a blob
        # committed, a backend snapshot made), exclusively by the collector's sweep, so the
        # sweep never takes such a thing for garbage.
        self.gc_lock = SharedExclusiveLock()
        # 0600 (and restricted if an older Berth made it 0644): it holds every container's spec,
        # whose environment often carries secrets.
        fsmode.private_database(path)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises. Nested
        calls join the outer transaction."""
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def ensure_namespace(self, c: sqlite3.Connection, namespace: str) -> None:
        """Namespaces come into being on first write, as in containerd."""
        c.execute(
            "INSERT OR IGNORE INTO namespaces (name, labels, created_at) VALUES (?, '{}', ?)",
            (namespace, now_ns()),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
