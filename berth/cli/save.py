"""Writing stored images into an archive (``berth save``); the layouts are described in
:mod:`berth.cli.archive`.

Every blob is read through the Content service and checked against its digest on the way, so
a damaged content store fails the save instead of producing a bad archive. A file is written
beside its destination and renamed into place at the end: a failed save leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from berth import errdefs
from berth.cli import archive, documents
from berth.cli.archive import TarWriter, blob_path
from berth.cli.documents import ImageDocuments, descriptor_json
from berth.client import Client
from berth.images import Image, manifest
from berth.images.platforms import Platform
from berth.oci import image as oci
from berth.oci.image import Descriptor
from berth.remotes import reference


@dataclass
class Export:
    """What an archive will hold: blobs in writing order and the top-level files' entries."""

    fmt: str
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)
    index: list[dict[str, Any]] = field(default_factory=list)
    docker: dict[str, dict[str, Any]] = field(default_factory=dict)
    repositories: dict[str, dict[str, str]] = field(default_factory=dict)

    def _document(self, desc: Descriptor, data: bytes) -> None:
        self.blobs.setdefault(desc.digest, desc)
        self.documents[desc.digest] = data

    def add_image_documents(self, docs: ImageDocuments) -> None:
        for layer in docs.manifest.layers:
            self.blobs.setdefault(layer.digest, layer)
        self._document(docs.manifest.config, docs.config_data)
        self._document(docs.manifest_descriptor, docs.manifest_data)

    def name(self, image_name: str, desc: Descriptor) -> None:
        """An ``index.json`` entry naming ``desc`` ``image_name``."""
        entry = descriptor_json(desc)
        annotations = dict(entry.get("annotations", {}))
        annotations[archive.ANNOTATION_IMAGE_NAME] = image_name
        ref = _parse(image_name)
        if ref is not None and ref.tag:
            annotations[archive.ANNOTATION_REF_NAME] = ref.tag
        entry["annotations"] = annotations
        self.index.append(entry)


def _parse(name: str) -> reference.Reference | None:
    try:
        return reference.parse(name, default_tag=False)
    except errdefs.InvalidArgument:
        return None  # a name stored by another client that is not a reference: keep it as is


def plan(client: Client, images: list[Image], fmt: str, want: Platform | None,
         all_platforms: bool) -> Export:
    if fmt not in archive.FORMATS:
        raise errdefs.InvalidArgument(f"--format must be one of {', '.join(archive.FORMATS)}")
    if fmt == "docker" and all_platforms:
        raise errdefs.InvalidArgument(
            "a docker archive holds one platform per image; use --format oci with "
            "--all-platforms")
    export = Export(fmt)
    for image in images:
        target = image.target
        if fmt == "docker":
            _plan_docker(client, export, image.name, target, want)
        else:
            _plan_oci(client, export, image.name, target, want, all_platforms)
    return export


def _plan_docker(client: Client, export: Export, name: str, target: Descriptor,
                 want: Platform | None) -> None:
    docs = documents.load(client, target, want)
    export.add_image_documents(docs)
    export.name(name, docs.manifest_descriptor)
    entry = export.docker.setdefault(docs.manifest_descriptor.digest, {
        "Config": blob_path(docs.manifest.config.digest),
        "RepoTags": [],
        "Layers": [blob_path(layer.digest) for layer in docs.manifest.layers],
    })
    ref = _parse(name)
    if ref is not None and ref.tag:
        tagged = reference.Reference(ref.host, ref.repository, ref.tag)
        entry["RepoTags"].append(tagged.familiar())
        top = docs.manifest.layers[-1].digest.partition(":")[2] if docs.manifest.layers else ""
        repo = tagged.familiar().rpartition(":")[0]
        export.repositories.setdefault(repo, {})[ref.tag] = top


def _plan_oci(client: Client, export: Export, name: str, target: Descriptor,
              want: Platform | None, all_platforms: bool) -> None:
    if target.media_type in manifest.INDEX_TYPES and all_platforms:
        data = documents.read_document(client, target)
        for entry in manifest.unique_entries(manifest.parse_index(data)):
            if entry.descriptor.media_type in manifest.MANIFEST_TYPES:
                export.add_image_documents(documents.load(client, entry.descriptor))
        export._document(target, data)
    else:
        docs = documents.load(client, target, want)
        export.add_image_documents(docs)
        if docs.index is not None:
            # The index as it is: other platforms' manifests it lists are left out, as
            # containerd's exporter does; readers pick the platform that is there.
            export._document(target, docs.index_data)
    export.name(name, target)


def write(client: Client, export: Export, tar: tarfile.TarFile) -> None:
    w = TarWriter(tar)
    w.add_bytes(archive.OCI_LAYOUT, archive.OCI_LAYOUT_VERSION)
    for digest, desc in export.blobs.items():
        path = blob_path(digest)
        data = export.documents.get(digest)
        if data is not None:
            w.add_bytes(path, data)
        else:
            w.add(path, desc.size, archive.ChunkReader(
                documents.blob_chunks(client.content, digest, desc.size)))
    index = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX,
             "manifests": export.index}
    w.add_bytes(archive.INDEX_JSON, json.dumps(index).encode())
    if export.fmt == "docker":
        w.add_bytes(archive.MANIFEST_JSON, json.dumps(list(export.docker.values())).encode())
        w.add_bytes(archive.REPOSITORIES, json.dumps(export.repositories).encode())


def save_to_file(client: Client, export: Export, path: Path) -> None:
    """Write the archive to ``path`` all or nothing (a temporary file renamed into place)."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                    format=tarfile.PAX_FORMAT) as tar:
            write(client, export, tar)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_to_stream(client: Client, export: Export, out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        write(client, export, tar)
    out.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
