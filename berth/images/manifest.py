"""Manifests, indexes and image configs: parsing them strictly and walking an image's graph.

Every document is parsed from bytes whose digest the caller already verified (or will verify)
and whose size was bounded by the caller. Anything malformed raises ``InvalidArgument`` naming
the document and what is wrong, so a bad registry answer never becomes a stored image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs
from berth.digest import validate_digest
from berth.images import platforms
from berth.images.platforms import Platform
from berth.oci import image as oci
from berth.oci.image import Descriptor

INDEX_TYPES = (oci.MEDIA_TYPE_INDEX, oci.DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (oci.MEDIA_TYPE_MANIFEST, oci.DOCKER_MANIFEST)
CONFIG_TYPES = (oci.MEDIA_TYPE_CONFIG, oci.DOCKER_CONFIG)
LAYER_TYPES = (
    oci.MEDIA_TYPE_LAYER, oci.MEDIA_TYPE_LAYER_GZIP, oci.MEDIA_TYPE_LAYER_ZSTD,
    oci.MEDIA_TYPE_LAYER_NONDIST, oci.MEDIA_TYPE_LAYER_NONDIST_GZIP,
    oci.MEDIA_TYPE_LAYER_NONDIST_ZSTD, oci.DOCKER_LAYER, oci.DOCKER_LAYER_GZIP,
    oci.DOCKER_LAYER_FOREIGN_GZIP,
)
MAX_LAYERS = 1024


@dataclass
class IndexEntry:
    descriptor: Descriptor
    platform: Platform | None


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageConfig:
    platform: Platform
    diff_ids: list[str]
    raw: dict[str, Any]


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errdefs.InvalidArgument(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        # json's decoder recurses per nesting level: "[[[[..." runs out of stack.
        raise errdefs.InvalidArgument(f"{what} is nested too deeply to be valid") from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"{what} must be a JSON object")
    return doc


def _descriptor(value: object, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise errdefs.InvalidArgument(f"{what}: descriptor must be an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise errdefs.InvalidArgument(f"{what}: descriptor has no mediaType")
    if not isinstance(digest, str):
        raise errdefs.InvalidArgument(f"{what}: descriptor has no digest")
    try:
        validate_digest(digest)
    except errdefs.InvalidArgument as err:
        raise errdefs.InvalidArgument(f"{what}: {err}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errdefs.InvalidArgument(f"{what}: descriptor size must be a non-negative integer")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise errdefs.InvalidArgument(f"{what}: annotations must be an object")
    return Descriptor(media_type, digest, size,
                      {str(k): str(v) for k, v in annotations.items()})


def _one_kind(doc: dict[str, Any], what: str, *, index: bool) -> None:
    """Refuse a document that is also (or claims to be) the other kind: one digest approved as
    a manifest must never be readable as an index, nor the other way round (CVE-2021-41190, the
    check containerd runs since 1.4.12 and 1.5.8). Schema 1 documents are refused too."""
    if "fsLayers" in doc:
        raise errdefs.InvalidArgument(f"{what} is a schema 1 manifest, which is not supported")
    media_type = doc.get("mediaType")
    if index and ("config" in doc or "layers" in doc or media_type in MANIFEST_TYPES):
        raise errdefs.InvalidArgument(
            f"{what} holds a manifest's config, layers or media type ({media_type!r}): "
            "a document must be an index or a manifest, not both")
    if not index and ("manifests" in doc or media_type in INDEX_TYPES):
        raise errdefs.InvalidArgument(
            f"{what} holds an index's manifests or media type ({media_type!r}): "
            "a document must be a manifest or an index, not both")


def parse_index(data: bytes) -> list[IndexEntry]:
    doc = _load(data, "image index")
    _one_kind(doc, "image index", index=True)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise errdefs.InvalidArgument("image index has no manifests list")
    out = []
    for i, m in enumerate(manifests):
        desc = _descriptor(m, f"image index manifest {i}")
        out.append(IndexEntry(desc, platforms.from_json(m.get("platform"))))
    return out


def unique_entries(entries: Sequence[IndexEntry]) -> list[IndexEntry]:
    """``entries`` with each digest once (its first entry). An index may list one manifest any
    number of times; work done per listed manifest must not multiply with that."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.descriptor.digest not in seen:
            seen.add(e.descriptor.digest)
            out.append(e)
    return out


def parse_manifest(data: bytes) -> Manifest:
    doc = _load(data, "image manifest")
    _one_kind(doc, "image manifest", index=False)
    if doc.get("schemaVersion") != 2:
        raise errdefs.InvalidArgument(
            f"image manifest schemaVersion {doc.get('schemaVersion')!r} is not supported "
            "(only schema 2)")
    config = _descriptor(doc.get("config"), "image manifest config")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise errdefs.InvalidArgument("image manifest has no layers list")
    if len(layers_doc) > MAX_LAYERS:
        raise errdefs.InvalidArgument(
            f"image manifest has {len(layers_doc)} layers; at most {MAX_LAYERS} are supported")
    layers = [_descriptor(x, f"image manifest layer {i}") for i, x in enumerate(layers_doc)]
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise errdefs.InvalidArgument(
                f"image manifest layer {i} has unsupported media type {layer.media_type!r}")
    annotations = doc.get("annotations") or {}
    return Manifest(config, layers, {str(k): str(v) for k, v in dict(annotations).items()})


def parse_config(data: bytes) -> ImageConfig:
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise errdefs.InvalidArgument("image config has no rootfs.diff_ids")
    diff_ids = []
    for i, d in enumerate(rootfs["diff_ids"]):
        if not isinstance(d, str):
            raise errdefs.InvalidArgument(f"image config diff_id {i} is not a string")
        diff_ids.append(validate_digest(d))
    plat = Platform(str(doc.get("os", "")), str(doc.get("architecture", "")),
                    str(doc.get("variant", "")))
    return ImageConfig(plat, diff_ids, doc)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The snapshot names of a layer stack: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            h = hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
            out.append("sha256:" + h)
    return out


def select_manifest(entries: Sequence[IndexEntry], want: Platform) -> Descriptor:
    """The first manifest of the index for platform ``want``; NotFound naming what there is."""
    for e in entries:
        if e.descriptor.media_type in MANIFEST_TYPES and e.platform is not None \
                and platforms.matches(want, e.platform):
            return e.descriptor
    available = ", ".join(str(e.platform) for e in entries if e.platform) or "none"
    raise errdefs.NotFound(
        f"no image for platform {want} in the index (it has: {available}); choose one with "
        "--platform")
