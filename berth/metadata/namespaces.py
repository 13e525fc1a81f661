"""Namespaces in the metadata database."""

from __future__ import annotations

from collections.abc import Sequence

from berth import errdefs, labels, namespaces
from berth.clock import now_ns
from berth.metadata.db import DB, dumps, loads
from berth.namespaces import Namespace

# Tables whose rows keep a namespace from being deleted, with the word a person reads.
_OWNED = (("images", "images"), ("content", "blobs"), ("snapshots", "snapshots"),
          ("leases", "leases"))


class NamespaceStore(namespaces.Store):
    def __init__(self, db: DB) -> None:
        self._db = db
        self._owned = list(_OWNED)

    def register_owner(self, table: str, what: str) -> None:
        """Let another subsystem's table (e.g. containers) keep namespaces from deletion."""
        self._owned.append((table, what))

    def create(self, name: str, lbls: dict[str, str] | None = None) -> Namespace:
        namespaces.validate(name)
        labels.validate(lbls or {})
        with self._db.tx() as c:
            if c.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone():
                raise errdefs.AlreadyExists(f"namespace {name!r} already exists")
            c.execute("INSERT INTO namespaces (name, labels, created_at) VALUES (?, ?, ?)",
                      (name, dumps(lbls), now_ns()))
        return Namespace(name, dict(lbls or {}))

    def get(self, name: str) -> Namespace:
        with self._db.tx() as c:
            row = c.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"namespace {name!r} not found")
        return Namespace(name, loads(row["labels"]))

    def list(self) -> list[Namespace]:
        with self._db.tx() as c:
            rows = c.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
        return [Namespace(r["name"], loads(r["labels"])) for r in rows]

    def update(self, ns: Namespace, fieldpaths: Sequence[str] = ()) -> Namespace:
        """Update labels. Setting single labels (``labels.<key>`` paths) on a namespace that
        does not exist creates it, as containerd's SetLabel does."""
        with self._db.tx() as c:
            try:
                current = self.get(ns.name)
            except errdefs.NotFound:
                if not fieldpaths or not all(p.startswith("labels.") for p in fieldpaths):
                    raise
                current = self.create(ns.name)
            new_labels, _ = labels.apply_update(current.labels, ns.labels, fieldpaths)
            c.execute("UPDATE namespaces SET labels = ? WHERE name = ?",
                      (dumps(new_labels), ns.name))
        return Namespace(ns.name, new_labels)

    def delete(self, name: str) -> None:
        with self._db.tx() as c:
            self.get(name)
            left = [what for table, what in self._owned
                    if c.execute(f"SELECT 1 FROM {table} WHERE namespace = ? LIMIT 1",
                                 (name,)).fetchone()]
            if left:
                raise errdefs.FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {', '.join(left)}: "
                    "remove them first"
                )
            c.execute("DELETE FROM namespaces WHERE name = ?", (name,))
