"""Mark and sweep over the metadata database, as containerd's garbage collector does it (the
scheduler that decides when to run it is :mod:`berth.gc`).

Roots, per namespace:
  * every image's target blob (and the ``containerd.io/gc.ref.*`` labels of the image);
  * every lease that has not expired (label ``containerd.io/gc.expire``, RFC 3339): its content,
    snapshots and ingests; a lease labelled ``containerd.io/gc.flat`` protects only those, not
    what they reference;
  * blobs and snapshots labelled ``containerd.io/gc.root``;
  * whatever other subsystems report through ``extra_roots`` (containers, for instance).

Edges: a blob's or snapshot's labels ``containerd.io/gc.ref.content[.*]`` name blobs and
``containerd.io/gc.ref.snapshot.<snapshotter>[.*]`` name snapshots; a snapshot refers to its parent.

Sweep: expired leases, then unmarked snapshot rows (children before parents) and their backend
snapshots, unmarked content rows, backend snapshots that have no row (left by a crash), and blobs
on disk no namespace records.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from berth import errdefs, labels
from berth.content.content import Store
from berth.metadata.db import DB, loads
from berth.snapshots.snapshotter import Snapshotter

log = logging.getLogger(__name__)

# (namespace, "content", digest) or (namespace, "snapshots/<name>", key)
Node = tuple[str, str, str]
RootSource = Callable[[], Iterable[Node]]


@dataclass
class Stats:
    leases: int = 0
    content: int = 0
    snapshots: int = 0
    blobs: int = 0
    backend_snapshots: int = 0
    seconds: float = 0.0


def _expired(lbls: Mapping[str, str], now: datetime.datetime) -> bool:
    value = lbls.get(labels.GC_EXPIRE)
    if not value:
        return False
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        log.warning("lease label %s=%r is not RFC 3339; ignoring it", labels.GC_EXPIRE, value)
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when < now


def label_refs(ns: str, lbls: Mapping[str, str]) -> Iterable[Node]:
    """The resources that ``containerd.io/gc.ref.content[.<name>]`` and
    ``containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`` labels name."""
    for key, value in lbls.items():
        if key.startswith(labels.GC_REF_CONTENT):
            rest = key[len(labels.GC_REF_CONTENT):]
            if not rest or rest[0] in "./":
                yield (ns, "content", value)
        elif key.startswith(labels.GC_REF_SNAPSHOT):
            name = key[len(labels.GC_REF_SNAPSHOT):].split("/", 1)[0]
            if name:
                yield (ns, f"snapshots/{name}", value)


class Collector:
    def __init__(self, db: DB, content: Store, snapshotters: Mapping[str, Snapshotter]) -> None:
        self._db = db
        self._content = content
        self._snapshotters = snapshotters
        self._extra_roots: list[RootSource] = []
        self._lock = threading.Lock()

    def add_root_source(self, source: RootSource) -> None:
        self._extra_roots.append(source)

    def collect(self) -> Stats:
        """One full collection. Runs one at a time."""
        with self._lock, self._db.gc_lock.exclusive():
            start = time.monotonic()
            stats = Stats()
            self._sweep_db(stats)
            self._sweep_backends(stats)
            self._sweep_blobs(stats)
            stats.seconds = time.monotonic() - start
        if stats.content or stats.snapshots or stats.blobs or stats.leases:
            log.info("gc: removed %d leases, %d content records, %d snapshots, %d blobs in %.3fs",
                     stats.leases, stats.content, stats.snapshots, stats.blobs, stats.seconds)
        return stats

    def _sweep_db(self, stats: Stats) -> None:
        now = datetime.datetime.now(datetime.UTC)
        with self._db.tx() as c:
            for row in c.execute("SELECT namespace, id, labels FROM leases").fetchall():
                if _expired(loads(row["labels"]), now):
                    c.execute("DELETE FROM leases WHERE namespace = ? AND id = ?",
                              (row["namespace"], row["id"]))
                    c.execute("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?",
                              (row["namespace"], row["id"]))
                    stats.leases += 1

            content_labels: dict[Node, dict[str, str]] = {
                (r["namespace"], "content", r["digest"]): loads(r["labels"])
                for r in c.execute("SELECT namespace, digest, labels FROM content")
            }
            snapshots: dict[Node, tuple[str, dict[str, str], str]] = {
                (r["namespace"], f"snapshots/{r['snapshotter']}", r["key"]):
                    (r["parent"], loads(r["labels"]), r["backend_key"])
                for r in c.execute(
                    "SELECT namespace, snapshotter, key, parent, labels, backend_key "
                    "FROM snapshots")
            }

            roots: list[Node] = []
            flat: list[Node] = []
            for r in c.execute("SELECT namespace, digest, labels FROM images"):
                roots.append((r["namespace"], "content", r["digest"]))
                roots.extend(label_refs(r["namespace"], loads(r["labels"])))
            lease_flat = {
                (r["namespace"], r["id"]): labels.GC_FLAT in loads(r["labels"])
                for r in c.execute("SELECT namespace, id, labels FROM leases")
            }
            for r in c.execute("SELECT namespace, lease, type, id FROM lease_resources"):
                if r["type"] == "ingests":
                    continue
                node = (r["namespace"], r["type"], r["id"])
                (flat if lease_flat.get((r["namespace"], r["lease"])) else roots).append(node)
            roots.extend(n for n, lbls in content_labels.items() if labels.GC_ROOT in lbls)
            roots.extend(n for n, (_, lbls, _) in snapshots.items() if labels.GC_ROOT in lbls)
            for source in self._extra_roots:
                roots.extend(source())

            marked: set[Node] = set()
            stack = list(roots)
            while stack:
                node = stack.pop()
                if node in marked:
                    continue
                marked.add(node)
                ns, kind, _ = node
                if kind == "content":
                    stack.extend(label_refs(ns, content_labels.get(node, {})))
                elif node in snapshots:
                    parent, lbls, _ = snapshots[node]
                    if parent:
                        stack.append((ns, kind, parent))
                    stack.extend(label_refs(ns, lbls))
            # A flat lease keeps its resources but not what they reference; a snapshot still
            # needs its parents to exist, so those are kept too.
            for node in flat:
                while node not in marked:
                    marked.add(node)
                    parent = snapshots[node][0] if node in snapshots else ""
                    if not parent:
                        break
                    node = (node[0], node[1], parent)

            for node in content_labels:
                if node not in marked:
                    c.execute("DELETE FROM content WHERE namespace = ? AND digest = ?",
                              (node[0], node[2]))
                    stats.content += 1
            for node in snapshots:
                if node not in marked:
                    c.execute("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? "
                              "AND key = ?", (node[0], node[1][len("snapshots/"):], node[2]))
                    stats.snapshots += 1
        # The backend snapshots of removed rows are now orphans: _sweep_backends takes them.

    def _sweep_backends(self, stats: Stats) -> None:
        for name, backend in self._snapshotters.items():
            with self._db.tx() as c:
                known = {r["backend_key"] for r in c.execute(
                    "SELECT backend_key FROM snapshots WHERE snapshotter = ?", (name,))}
            infos = {i.name: i for i in backend.walk()}
            orphans = {k for k in infos if k not in known}
            # Remove leaves first: a snapshot can go once no orphan names it as parent.
            while orphans:
                parents = {infos[k].parent for k in orphans}
                leaves = [k for k in orphans if k not in parents]
                if not leaves:
                    log.error("gc: snapshotter %s has a parent cycle among %s", name, orphans)
                    break
                for key in leaves:
                    try:
                        backend.remove(key)
                        stats.backend_snapshots += 1
                    except errdefs.BerthError as err:
                        log.warning("gc: could not remove snapshot %s from %s: %s", key, name,
                                    err)
                    orphans.discard(key)
            backend.cleanup()

    def _sweep_blobs(self, stats: Stats) -> None:
        with self._db.tx() as c:
            known = {r["digest"] for r in c.execute("SELECT DISTINCT digest FROM content")}
        for info in list(self._content.walk()):
            if info.digest in known:
                continue
            try:
                self._content.delete(info.digest)
                stats.blobs += 1
            except errdefs.NotFound:
                pass  # removed by someone else meanwhile: the goal is reached

