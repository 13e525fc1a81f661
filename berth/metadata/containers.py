"""Containers in the metadata database (the :class:`berth.containers.Store` contract).

Publishes ``/containers/create``, ``/containers/update`` and ``/containers/delete`` after the
change is committed (a failed call publishes nothing). Deletions call ``on_delete`` (the GC
scheduler). :meth:`ContainerStore.gc_roots` is the collector's root source: each container's
snapshot and its ``containerd.io/gc.ref.*`` labels.

Filters (containerd's adaptor, plus ``snapshotter`` and ``snapshotkey``, which containerd lacks):
``id``, ``image``, ``runtime.name``, ``snapshotter``, ``snapshotkey``, ``labels.<key>``; the
string fields count as present only when not empty.
"""

from __future__ import annotations

import base64
import builtins
import functools
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence

from berth import errdefs, filters, labels, namespaces
from berth.api.events import container_pb2
from berth.clock import now_ns
from berth.containers import AnyValue, Container, RuntimeInfo, validate, validate_id
from berth.events import Publisher
from berth.metadata.db import DB, dumps, loads
from berth.metadata.gc import Node, label_refs

# With no field paths an update replaces these; snapshotter and runtime.name must not differ.
_FULL_UPDATE = ("labels", "spec", "extensions", "image", "snapshotkey")
_IMMUTABLE = {"runtime": "runtime", "runtime.name": "runtime", "runtime.options": "runtime",
              "snapshotter": "snapshotter"}


def _dump_extensions(extensions: Mapping[str, AnyValue]) -> str:
    return json.dumps({k: [v.type_url, base64.b64encode(v.value).decode()]
                       for k, v in sorted(extensions.items())}, separators=(",", ":"))


def _load_extensions(text: str) -> dict[str, AnyValue]:
    return {k: AnyValue(t, base64.b64decode(v)) for k, (t, v) in json.loads(text).items()}


def _row_to_container(row: sqlite3.Row) -> Container:
    options = None
    if row["runtime_options_type"] is not None:
        options = AnyValue(row["runtime_options_type"], bytes(row["runtime_options"] or b""))
    return Container(
        id=row["id"],
        runtime=RuntimeInfo(row["runtime_name"], options),
        spec=AnyValue(row["spec_type"], bytes(row["spec"])),
        labels=loads(row["labels"]),
        image=row["image"],
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        extensions=_load_extensions(row["extensions"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _adapt(c: Container, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    head = path[0]
    if head == "labels":
        return filters.adapt_labels(c.labels, path)
    if head == "runtime":
        if len(path) > 1 and path[1] == "name":
            return c.runtime.name, bool(c.runtime.name)
        return "", False
    value = {"id": c.id, "image": c.image, "snapshotter": c.snapshotter,
             "snapshotkey": c.snapshot_key}.get(head)
    if value is None:
        return "", False
    return value, bool(value)


class ContainerStore:
    """Containers per namespace, in the metadata database."""

    def __init__(self, db: DB, publisher: Publisher,
                 on_delete: Callable[[bool], None] = lambda sync: None) -> None:
        self._db = db
        self._publisher = publisher
        self._on_delete = on_delete

    def _row(self, c: sqlite3.Connection, ns: str, container_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = c.execute(
            "SELECT * FROM containers WHERE namespace = ? AND id = ?",
            (ns, container_id)).fetchone()
        if row is None:
            raise errdefs.NotFound(f'container "{container_id}" in namespace "{ns}": not found')
        return row

    def get(self, container_id: str) -> Container:
        ns = namespaces.current()
        with self._db.tx() as c:
            return _row_to_container(self._row(c, ns, container_id))

    def list(self, filter_strings: Sequence[str] = ()) -> list[Container]:
        ns = namespaces.current()
        flt = filters.parse(filter_strings)
        with self._db.tx() as c:
            rows = c.execute("SELECT * FROM containers WHERE namespace = ? ORDER BY id",
                             (ns,)).fetchall()
        found = (_row_to_container(r) for r in rows)
        return [x for x in found if flt.match(functools.partial(_adapt, x))]

    def create(self, container: Container) -> Container:
        validate(container)
        assert container.spec is not None  # validate() refuses None
        ns = namespaces.current()
        now = now_ns()
        options = container.runtime.options
        with self._db.tx() as c:
            self._db.ensure_namespace(c, ns)
            try:
                c.execute(
                    "INSERT INTO containers (namespace, id, labels, image, runtime_name,"
                    " runtime_options_type, runtime_options, spec_type, spec, snapshotter,"
                    " snapshot_key, extensions, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, container.id, dumps(container.labels), container.image,
                     container.runtime.name, options.type_url if options else None,
                     options.value if options else None, container.spec.type_url,
                     container.spec.value, container.snapshotter, container.snapshot_key,
                     _dump_extensions(container.extensions), now, now),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(
                    f'container "{container.id}" in namespace "{ns}": already exists') from None
            created = _row_to_container(self._row(c, ns, container.id))
        runtime = container_pb2.ContainerCreate.Runtime(name=created.runtime.name)
        if options is not None:
            runtime.options.type_url = options.type_url
            runtime.options.value = options.value
        self._publisher.publish("/containers/create", container_pb2.ContainerCreate(
            id=created.id, image=created.image, runtime=runtime))
        return created

    def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container:
        """Apply ``fieldpaths`` (``labels``, ``labels.<key>``, ``spec``, ``extensions``,
        ``extensions.<key>``, ``image``, ``snapshotkey``) from ``container``. A ``labels.<key>``
        or ``extensions.<key>`` path whose key ``container`` lacks (or, for labels, has empty)
        removes it. Naming ``runtime`` or ``snapshotter`` is InvalidArgument: they never
        change."""
        validate_id(container.id)
        ns = namespaces.current()
        with self._db.tx() as c:
            current = _row_to_container(self._row(c, ns, container.id))
            if not fieldpaths:
                if container.snapshotter != current.snapshotter:
                    raise errdefs.InvalidArgument(
                        f"container {container.id!r}: the snapshotter cannot change "
                        f"(it is {current.snapshotter!r})")
                if container.runtime.name != current.runtime.name:
                    raise errdefs.InvalidArgument(
                        f"container {container.id!r}: the runtime cannot change "
                        f"(it is {current.runtime.name!r})")
                fieldpaths = _FULL_UPDATE
            for path in fieldpaths:
                if path in _IMMUTABLE:
                    raise errdefs.InvalidArgument(
                        f"cannot update {path!r} of container {container.id!r}: the "
                        f"{_IMMUTABLE[path]} of a container is immutable")
            extension_paths = [p for p in fieldpaths if p.startswith("extensions.")]
            other_paths = [p for p in fieldpaths if not p.startswith("extensions.")]
            new_labels, rest = current.labels, builtins.list[str]()
            if other_paths:
                new_labels, rest = labels.apply_update(
                    current.labels, container.labels, other_paths,
                    allowed=("spec", "extensions", "image", "snapshotkey", "snapshot_key"))
            updated = Container(
                id=current.id, runtime=current.runtime, spec=current.spec, labels=new_labels,
                image=current.image, snapshotter=current.snapshotter,
                snapshot_key=current.snapshot_key, extensions=dict(current.extensions),
                created_at=current.created_at, updated_at=now_ns())
            for path in rest:
                if path == "spec":
                    updated.spec = container.spec
                elif path == "extensions":
                    updated.extensions = dict(container.extensions)
                elif path == "image":
                    updated.image = container.image
                else:
                    updated.snapshot_key = container.snapshot_key
            for path in extension_paths:
                key = path[len("extensions."):]
                if key in container.extensions:
                    updated.extensions[key] = container.extensions[key]
                else:
                    updated.extensions.pop(key, None)
            validate(updated)
            assert updated.spec is not None
            c.execute(
                "UPDATE containers SET labels = ?, image = ?, spec_type = ?, spec = ?,"
                " snapshot_key = ?, extensions = ?, updated_at = ?"
                " WHERE namespace = ? AND id = ?",
                (dumps(updated.labels), updated.image, updated.spec.type_url,
                 updated.spec.value, updated.snapshot_key, _dump_extensions(updated.extensions),
                 updated.updated_at, ns, updated.id),
            )
        self._publisher.publish("/containers/update", container_pb2.ContainerUpdate(
            id=updated.id, image=updated.image, labels=updated.labels,
            snapshot_key=updated.snapshot_key))
        if updated.snapshot_key != current.snapshot_key:
            self._on_delete(False)  # the old snapshot may have lost its last root
        return updated

    def delete(self, container_id: str) -> None:
        ns = namespaces.current()
        with self._db.tx() as c:
            cur = c.execute("DELETE FROM containers WHERE namespace = ? AND id = ?",
                            (ns, container_id))
            if cur.rowcount == 0:
                raise errdefs.NotFound(
                    f'container "{container_id}" in namespace "{ns}": not found')
        self._publisher.publish("/containers/delete",
                                container_pb2.ContainerDelete(id=container_id))
        self._on_delete(False)

    def gc_roots(self) -> builtins.list[Node]:
        """What containers keep from the collector, in every namespace: each one's snapshot
        (when it names a snapshotter and key) and what its reference labels name."""
        roots: builtins.list[Node] = []
        with self._db.tx() as c:
            rows = c.execute(
                "SELECT namespace, snapshotter, snapshot_key, labels FROM containers").fetchall()
        for r in rows:
            if r["snapshotter"] and r["snapshot_key"]:
                roots.append((r["namespace"], f"snapshots/{r['snapshotter']}",
                              r["snapshot_key"]))
            roots.extend(label_refs(r["namespace"], loads(r["labels"])))
        return roots
