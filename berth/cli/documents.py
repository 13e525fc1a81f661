"""An image's documents (index, manifest, config) read back from berthd's content store.

An image record names only its target; for sizes, platforms, ``inspect`` and ``save`` the CLI
reads the target and what it references through the Content service, parsing each document with
:mod:`berth.images.manifest` (so a damaged document is an ``InvalidArgument``, never a crash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from berth import errdefs
from berth.client import Client
from berth.content.content import Provider, open_stream
from berth.images import manifest, platforms
from berth.images.manifest import ImageConfig, IndexEntry, Manifest
from berth.images.platforms import Platform
from berth.oci.image import Descriptor
from berth.remotes.remotes import MAX_MANIFEST_SIZE

READ_CHUNK = 1 << 20


def has_blob(content: Provider, digest: str) -> bool:
    try:
        content.info(digest)
    except errdefs.NotFound:
        return False
    return True


def blob_chunks(content: Provider, digest: str, size: int = -1) -> Iterator[bytes]:
    """The blob's bytes in chunks, checked against ``digest`` (and ``size`` when given) at
    the end, so a damaged store never passes silently into an archive."""
    h = hashlib.sha256() if digest.startswith("sha256:") else None
    n = 0
    with open_stream(content.reader(digest), READ_CHUNK) as blob:
        while data := blob.read(READ_CHUNK):
            if h is not None:
                h.update(data)
            n += len(data)
            yield data
    if size >= 0 and n != size:
        raise errdefs.FailedPrecondition(
            f"blob {digest} has {n} bytes in the content store, expected {size}")
    if h is not None and "sha256:" + h.hexdigest() != digest:
        raise errdefs.FailedPrecondition(
            f"blob {digest} in the content store does not match its digest")


def read_blob(content: Provider, digest: str, max_size: int) -> bytes:
    """A whole (small) blob: a manifest, index or config."""
    info = content.info(digest)
    if info.size > max_size:
        raise errdefs.InvalidArgument(
            f"blob {digest} is {info.size} bytes; documents over {max_size} are refused")
    return b"".join(blob_chunks(content, digest, info.size))


def descriptor_json(d: Descriptor) -> dict[str, Any]:
    """The OCI JSON form of a descriptor."""
    out: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.annotations:
        out["annotations"] = dict(d.annotations)
    return out


def read_document(client: Client, desc: Descriptor) -> bytes:
    data = read_blob(client.content, desc.digest, MAX_MANIFEST_SIZE)
    if len(data) != desc.size:
        raise errdefs.FailedPrecondition(
            f"{desc.digest} is {len(data)} bytes in the content store; its descriptor says "
            f"{desc.size}")
    return data


def _json(data: bytes) -> Any:
    return json.loads(data)


@dataclass
class ImageDocuments:
    """The documents of one platform's image; ``index`` is set when the target is an index."""

    target: Descriptor
    index: list[IndexEntry] | None
    index_data: bytes
    manifest_descriptor: Descriptor
    manifest: Manifest
    manifest_data: bytes
    config: ImageConfig
    config_data: bytes

    @property
    def size(self) -> int:
        """What the image's blobs take: config plus layers (compressed, as stored)."""
        return self.manifest.config.size + sum(layer.size for layer in self.manifest.layers)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.index is not None:
            out["index"] = _json(self.index_data)
        out["manifest_descriptor"] = descriptor_json(self.manifest_descriptor)
        out["manifest"] = _json(self.manifest_data)
        out["config"] = _json(self.config_data)
        return out


def choose_manifest(client: Client, entries: list[IndexEntry], want: Platform | None,
                    ) -> Descriptor:
    """The manifest of an index for ``want``; with no ``want``, the host's if it is stored,
    else the first stored manifest of the index (an image pulled for another platform)."""
    if want is not None:
        return manifest.select_manifest(entries, want)
    try:
        chosen = manifest.select_manifest(entries, platforms.host())
    except errdefs.NotFound:
        chosen = None
    if chosen is not None and has_blob(client.content, chosen.digest):
        return chosen
    for e in entries:
        if e.descriptor.media_type in manifest.MANIFEST_TYPES and \
                has_blob(client.content, e.descriptor.digest):
            return e.descriptor
    if chosen is not None:
        return chosen
    raise errdefs.NotFound("none of the index's manifests is in the content store")


def load(client: Client, target: Descriptor, want: Platform | None = None) -> ImageDocuments:
    """Read and parse the image ``target`` names, for platform ``want`` (see
    :func:`choose_manifest`)."""
    index: list[IndexEntry] | None = None
    index_data = b""
    if target.media_type in manifest.INDEX_TYPES:
        index_data = read_document(client, target)
        index = manifest.parse_index(index_data)
        manifest_desc = choose_manifest(client, index, want)
    elif target.media_type in manifest.MANIFEST_TYPES:
        manifest_desc = target
    else:
        raise errdefs.InvalidArgument(
            f"{target.digest} has media type {target.media_type!r}, which is not an image "
            "manifest or index")
    manifest_data = read_document(client, manifest_desc)
    parsed = manifest.parse_manifest(manifest_data)
    config_data = read_document(client, parsed.config)
    config = manifest.parse_config(config_data)
    return ImageDocuments(target, index, index_data, manifest_desc, parsed, manifest_data,
                          config, config_data)
