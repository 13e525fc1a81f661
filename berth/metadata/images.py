"""Images in the metadata database."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence

from berth import errdefs, filters, labels, namespaces
from berth.api.events import image_pb2
from berth.clock import now_ns
from berth.digest import validate_digest
from berth.events import Publisher
from berth.images import Image
from berth.metadata.db import DB, dumps, loads
from berth.oci.image import Descriptor


def _row_to_image(row: sqlite3.Row) -> Image:
    return Image(
        name=row["name"],
        target=Descriptor(row["media_type"], row["digest"], row["size"],
                          loads(row["annotations"])),
        labels=loads(row["labels"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _validate(image: Image) -> None:
    if not image.name:
        raise errdefs.InvalidArgument("image name must not be empty")
    if not image.target.media_type:
        raise errdefs.InvalidArgument(f"image {image.name!r}: target media type must be set")
    validate_digest(image.target.digest)
    if image.target.size < 0:
        raise errdefs.InvalidArgument(f"image {image.name!r}: target size must not be negative")
    labels.validate(image.labels)


def _adapt(image: Image, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    head = path[0]
    if head == "name":
        return image.name, True
    if head == "target" and len(path) > 1:
        if path[1] == "digest":
            return image.target.digest, True
        if path[1] in ("mediatype", "media_type"):
            return image.target.media_type, True
        return "", False
    if head == "labels":
        return filters.adapt_labels(image.labels, path)
    return "", False


class ImageStore:
    """Images per namespace. Publishes /images/* events; deletions call ``on_delete`` (the GC
    scheduler) so unreferenced content is collected."""

    def __init__(self, db: DB, publisher: Publisher,
                 on_delete: Callable[[bool], None] = lambda sync: None) -> None:
        self._db = db
        self._publisher = publisher
        self._on_delete = on_delete

    def get(self, name: str) -> Image:
        ns = namespaces.current()
        with self._db.tx() as c:
            row = c.execute("SELECT * FROM images WHERE namespace = ? AND name = ?",
                            (ns, name)).fetchone()
        if row is None:
            raise errdefs.NotFound(f"image {name!r} not found in namespace {ns!r}")
        return _row_to_image(row)

    def list(self, filter_strings: Sequence[str] = ()) -> list[Image]:
        ns = namespaces.current()
        flt = filters.parse(filter_strings)
        with self._db.tx() as c:
            rows = c.execute("SELECT * FROM images WHERE namespace = ? ORDER BY name",
                             (ns,)).fetchall()
        images = [_row_to_image(r) for r in rows]
        return [i for i in images if flt.match(functools.partial(_adapt, i))]

    def create(self, image: Image) -> Image:
        _validate(image)
        ns = namespaces.current()
        now = now_ns()
        with self._db.tx() as c:
            self._db.ensure_namespace(c, ns)
            t = image.target
            try:
                c.execute(
                    "INSERT INTO images (namespace, name, media_type, digest, size, annotations,"
                    " labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, image.name, t.media_type, t.digest, t.size, dumps(t.annotations),
                     dumps(image.labels), now, now),
                )
            except sqlite3.IntegrityError:
                raise errdefs.AlreadyExists(f"image {image.name!r} already exists") from None
        created = Image(image.name, image.target, dict(image.labels), now, now)
        self._publisher.publish("/images/create", image_pb2.ImageCreate(
            name=image.name, labels=image.labels))
        return created

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        if not image.name:
            raise errdefs.InvalidArgument("image name must not be empty")
        ns = namespaces.current()
        annotation_paths = [p for p in fieldpaths if p.startswith("annotations.")]
        other_paths = [p for p in fieldpaths if not p.startswith("annotations.")]
        with self._db.tx() as c:
            current = self.get(image.name)
            new_labels, rest = labels.apply_update(
                current.labels, image.labels, other_paths, allowed=("target", "annotations"))
            if fieldpaths and not other_paths:
                new_labels = current.labels  # only annotations were named
            target = current.target
            if not fieldpaths or "target" in rest:
                target = image.target
            annotations = dict(target.annotations)
            if "annotations" in rest:
                annotations = dict(image.target.annotations)
            for path in annotation_paths:
                key = path[len("annotations."):]
                value = image.target.annotations.get(key, "")
                if value:
                    annotations[key] = value
                else:
                    annotations.pop(key, None)
            target = Descriptor(target.media_type, target.digest, target.size, annotations)
            updated = Image(image.name, target, new_labels, current.created_at, now_ns())
            _validate(updated)
            c.execute(
                "UPDATE images SET media_type = ?, digest = ?, size = ?, annotations = ?,"
                " labels = ?, updated_at = ? WHERE namespace = ? AND name = ?",
                (target.media_type, target.digest, target.size, dumps(target.annotations),
                 dumps(new_labels), updated.updated_at, ns, image.name),
            )
        self._publisher.publish("/images/update", image_pb2.ImageUpdate(
            name=updated.name, labels=updated.labels))
        if target.digest != current.target.digest:
            self._on_delete(False)
        return updated

    def delete(self, name: str, *, sync: bool = False) -> None:
        ns = namespaces.current()
        with self._db.tx() as c:
            cur = c.execute("DELETE FROM images WHERE namespace = ? AND name = ?", (ns, name))
            if cur.rowcount == 0:
                raise errdefs.NotFound(f"image {name!r} not found in namespace {ns!r}")
        self._publisher.publish("/images/delete", image_pb2.ImageDelete(name=name))
        self._on_delete(sync)
