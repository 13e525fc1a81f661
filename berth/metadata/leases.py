"""Leases in the metadata database (see :mod:`berth.leases` for what they mean)."""

from __future__ import annotations

import builtins
import sqlite3
import uuid
from collections.abc import Sequence

from berth import errdefs, filters, leases, namespaces
from berth.clock import now_ns
from berth.leases import Lease, Resource
from berth.metadata.db import DB, dumps, loads

_RESOURCE_TYPES = ("content", "ingests")


def _check_resource(r: Resource) -> None:
    if r.type in _RESOURCE_TYPES:
        return
    if r.type.startswith("snapshots/") and len(r.type) > len("snapshots/"):
        return
    raise errdefs.InvalidArgument(
        f"unsupported lease resource type {r.type!r}: use content, ingests or snapshots/<name>"
    )


class LeaseManager:
    def __init__(self, db: DB) -> None:
        self._db = db

    def create(self, lease_id: str = "", labels: dict[str, str] | None = None) -> Lease:
        ns = namespaces.current()
        lease_id = lease_id or uuid.uuid4().hex
        created = now_ns()
        with self._db.tx() as c:
            self._db.ensure_namespace(c, ns)
            try:
                c.execute(
                    "INSERT INTO leases (namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (ns, lease_id, dumps(labels), created),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(f"lease {lease_id!r} already exists") from None
        return Lease(lease_id, created, dict(labels or {}))

    def delete(self, lease_id: str) -> None:
        ns = namespaces.current()
        with self._db.tx() as c:
            cur = c.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (ns, lease_id))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"lease {lease_id!r} not found")
            c.execute("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?",
                      (ns, lease_id))

    def list(self, filter_strings: Sequence[str] = ()) -> list[Lease]:
        ns = namespaces.current()
        flt = filters.parse(filter_strings)
        with self._db.tx() as c:
            rows = c.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace = ? ORDER BY id", (ns,)
            ).fetchall()
        out = []
        for row in rows:
            lease = Lease(row["id"], row["created_at"], loads(row["labels"]))

            def adapt(path: Sequence[str], lease: Lease = lease) -> tuple[str, bool]:
                if not path:
                    return "", False
                if path[0] == "id":
                    return lease.id, True
                if path[0] == "labels":
                    return filters.adapt_labels(lease.labels, path)
                return "", False

            if flt.match(adapt):
                out.append(lease)
        return out

    def _require(self, c: sqlite3.Connection, ns: str, lease_id: str) -> None:
        row = c.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?",
                        (ns, lease_id)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"lease {lease_id!r} not found")

    def add_resource(self, lease_id: str, resource: Resource) -> None:
        _check_resource(resource)
        ns = namespaces.current()
        with self._db.tx() as c:
            self._require(c, ns, lease_id)
            add_resource(c, ns, lease_id, resource)

    def delete_resource(self, lease_id: str, resource: Resource) -> None:
        _check_resource(resource)
        ns = namespaces.current()
        with self._db.tx() as c:
            self._require(c, ns, lease_id)
            c.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? "
                "AND id = ?", (ns, lease_id, resource.type, resource.id),
            )

    def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        ns = namespaces.current()
        with self._db.tx() as c:
            self._require(c, ns, lease_id)
            rows = c.execute(
                "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ? "
                "ORDER BY type, id", (ns, lease_id),
            ).fetchall()
        return [Resource(row["id"], row["type"]) for row in rows]


def add_resource(c: sqlite3.Connection, ns: str, lease_id: str, resource: Resource) -> None:
    c.execute(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
        (ns, lease_id, resource.type, resource.id),
    )


def remove_from_current_lease(c: sqlite3.Connection, ns: str, resource: Resource) -> None:
    lease_id = leases.current()
    if lease_id is not None:
        c.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
            (ns, lease_id, resource.type, resource.id),
        )


def add_to_current_lease(c: sqlite3.Connection, ns: str, resource: Resource) -> None:
    """Record ``resource`` in the request's lease, if it has one. NotFound if the lease the
    client named does not exist (containerd refuses the write then, too)."""
    lease_id = leases.current()
    if lease_id is None:
        return
    row = c.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?",
                    (ns, lease_id)).fetchone()
    if row is None:
        raise errdefs.NotFound(f"lease {lease_id!r} not found: create it first (ctr leases create)")
    add_resource(c, ns, lease_id, resource)
