"""Image archives (``berth save`` / ``berth load``): the two tar layouts and their names.

``oci``: an OCI image layout in a tar (``skopeo ... oci-archive:``, ``ctr images import``)::

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 {"schemaVersion": 2, "manifests": [<descriptor>, ...]}
    blobs/sha256/<hex>         every index, manifest, config and layer, named by digest

Each ``index.json`` descriptor names its image with the annotations
``io.containerd.image.name`` (the full name) and ``org.opencontainers.image.ref.name`` (its
tag, as containerd writes it; a full reference when other tools such as skopeo write it).

``docker``: what ``docker save`` writes since Docker 25, loadable by ``docker load``, skopeo's
``docker-archive:`` and ``ctr images import``: the OCI layout above plus::

    manifest.json              [{"Config": "blobs/sha256/<c>", "RepoTags": ["busybox:latest"],
                                 "Layers": ["blobs/sha256/<l0>", ...]}, ...]
    repositories               {"busybox": {"latest": "<hex of the top layer>"}}

A docker archive holds one platform's image per entry; older docker archives (``<id>/layer.tar``,
``<hex>.json``, symlinked layers) are read too, by following ``manifest.json``'s paths.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator

from berth import errdefs

FORMATS = ("docker", "oci")

OCI_LAYOUT = "oci-layout"
OCI_LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
INDEX_JSON = "index.json"
MANIFEST_JSON = "manifest.json"
REPOSITORIES = "repositories"

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

CHUNK = 1 << 20


def blob_path(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"blobs/{algorithm}/{hex_}"


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (tarfile copies members from one)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class TarWriter:
    """Members of an archive being written: regular files and directories, root-owned."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.mtime = int(time.time())
        self._dirs: set[str] = set()

    def _dir(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if not parent or parent in self._dirs:
            return
        self._dir(parent)
        info = tarfile.TarInfo(parent + "/")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, self.mtime
        self.tar.addfile(info)
        self._dirs.add(parent)

    def add(self, path: str, size: int, data: io.RawIOBase | io.BytesIO) -> None:
        """Add a file of ``size`` bytes read from ``data``, which must then be at its end
        (reading on lets a checking source, like a blob reader, finish its checks)."""
        self._dir(path)
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = size, 0o644, self.mtime
        reader = io.BufferedReader(data, CHUNK) if isinstance(data, io.RawIOBase) else data
        self.tar.addfile(info, reader)
        if reader.read(1):
            raise errdefs.FailedPrecondition(f"{path} has more than the {size} bytes expected")

    def add_bytes(self, path: str, data: bytes) -> None:
        self.add(path, len(data), io.BytesIO(data))
