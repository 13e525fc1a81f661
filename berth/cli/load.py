"""Reading an image archive into berthd (``berth load``), so that a loaded image is usable like a
pulled one: blobs in the content store (verified by the daemon on commit), image records, and
the layers unpacked into snapshots (:class:`berth.transfer.unpack.Unpacker` over the daemon's
snapshotter and differ). The layouts are described in
:mod:`berth.cli.archive`; an archive with ``index.json`` is read as an OCI layout (it keeps
the images' digests), else one with ``manifest.json`` as a docker archive (for which Berth
writes a Docker schema 2 manifest, as ``docker load`` and ``ctr images import`` do).

The archive is untrusted input: nothing is extracted to disk, documents are size-bounded and
parsed strictly, every blob is written with its expected digest and size, and a layer whose
uncompressed digest differs from the config's diff ID is never committed. Everything runs
under one lease, so an interrupted load leaves nothing the collector will not reclaim.

What the archive can make this process hold is bounded (CVE-2023-25153: containerd's importer
read ``index.json`` and ``manifest.json`` whole until 1.6.18 capped them at 20 MiB):

* documents (``index.json``, ``manifest.json``, indexes, manifests, configs) are read whole to
  be parsed: each at most ``MAX_MANIFEST_SIZE``, all of them together at most
  :data:`MAX_DOCUMENTS`; each is read and parsed once however often it is referenced, so an
  index naming one large manifest thousands of times costs one read. Layers are streamed;
* the tar's member headers: Python's tarfile reads an extended header's data (PAX, GNU long
  name) whole and keeps every member's header, so extended headers are capped as Go's
  archive/tar caps them (:data:`MAX_EXTENDED_HEADER` each, :data:`MAX_EXTENDED_HEADERS` in a
  row, :data:`MAX_EXTENDED_TOTAL` in all), PAX global headers are ignored (as containerd
  ignores them), sparse members (whose maps tarfile reads unbounded) are refused, and an
  archive has at most :data:`MAX_MEMBERS` members.

Each bound, when crossed, is an ``InvalidArgument`` naming the archive, what crossed it and
the limit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from berth import errdefs, labels
from berth.cli import archive, documents
from berth.client import Client
from berth.images import Image, manifest, platforms
from berth.images.manifest import ImageConfig, Manifest
from berth.images.platforms import Platform
from berth.oci import image as oci
from berth.oci.image import Descriptor
from berth.remotes import reference
from berth.remotes.remotes import MAX_MANIFEST_SIZE
from berth.transfer.unpack import Unpacker

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_COMPRESSED_TAR_MAGIC = (_GZIP_MAGIC, b"BZh", b"\xfd7zXZ\x00", _ZSTD_MAGIC)

# The documents read from one archive, together (see the module's description). A real
# archive's are kilobytes each: this is sixteen of the largest one manifest may be.
MAX_DOCUMENTS = 16 * MAX_MANIFEST_SIZE
# Go's archive/tar refuses extended headers over 1 MiB (maxSpecialFileSize); an honest writer
# puts at most a few before one member (a PAX header, a long name, a long link name).
MAX_EXTENDED_HEADER = 1 << 20
MAX_EXTENDED_HEADERS = 8
MAX_EXTENDED_TOTAL = 16 << 20
# tarfile keeps a header object (~120 bytes, more with a long name) for every member. Image
# archives have a few per blob or layer; a hundred thousand is far beyond any real one.
MAX_MEMBERS = 100_000
MAX_LINK_HOPS = 8  # links followed from one name (docker's archives link a layer once)
# A gzipped archive is inflated into a temporary file (members are read out of order). Image
# archives inflate 2-4 times; a bomb inflates a thousand times.
SPOOL_EXPANSION = 50
SPOOL_FLOOR = 1 << 30
_EXTENDED_TYPES = {
    tarfile.XHDTYPE: "PAX header", tarfile.SOLARIS_XHDTYPE: "PAX header",
    tarfile.XGLTYPE: "PAX global header", tarfile.GNUTYPE_LONGNAME: "GNU long name header",
    tarfile.GNUTYPE_LONGLINK: "GNU long link header",
}

Report = Callable[[str], None]


@dataclass
class _Image:
    """One platform's image in the archive, ready to unpack."""

    manifest: Manifest
    config: ImageConfig


@dataclass
class _Load:
    """What the archive holds, gathered before anything is written."""

    blobs: dict[str, tuple[Descriptor, str]] = field(default_factory=dict)  # -> archive path
    documents: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    names: list[tuple[str, Descriptor]] = field(default_factory=list)
    unpack: dict[str, _Image] = field(default_factory=dict)  # by image target digest
    skipped: list[str] = field(default_factory=list)
    # Each document and layer is read once however often the archive references it.
    manifests: dict[str, _Image] = field(default_factory=dict)  # by manifest digest
    targets: dict[str, _Image | None] = field(default_factory=dict)  # by index.json target
    configs: dict[str, bytes] = field(default_factory=dict)  # docker: by archive path
    layers: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # docker: by path


class _HeaderBounds:
    """What the archive's member headers have cost so far (see :func:`_bounded_tarinfo`)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.members = 0
        self.in_a_row = 0
        self.extended = 0


def _bounded_tarinfo(bounds: _HeaderBounds) -> type[tarfile.TarInfo]:
    """A TarInfo class for tarfile to read headers with, refusing what would make tarfile
    hold unbounded data: it checks each header as tarfile has read its 512 bytes and before
    it reads anything that follows (``_proc_member`` is where tarfile dispatches on the type;
    the extended headers it reads recursively come through here again)."""

    def invalid(message: str) -> errdefs.InvalidArgument:
        return errdefs.InvalidArgument(f"{bounds.source}: {message}; refused")

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            bounds.members += 1
            if bounds.members > MAX_MEMBERS:
                raise invalid(f"more than {MAX_MEMBERS} members (the limit)")
            # PAX global headers are ignored, as containerd ignores them: whatever one put
            # here is dropped before the next header is read. tarfile would otherwise merge
            # them into every later member's headers, copying them for each.
            tar.pax_headers = {}
            what = _EXTENDED_TYPES.get(self.type)
            if what is None:
                bounds.in_a_row = 0
            else:
                if self.size > MAX_EXTENDED_HEADER:
                    raise invalid(f"a {what} of {self.size} bytes is over the limit of "
                                  f"{MAX_EXTENDED_HEADER} bytes")
                bounds.in_a_row += 1
                if bounds.in_a_row > MAX_EXTENDED_HEADERS:
                    raise invalid(f"more than {MAX_EXTENDED_HEADERS} extended headers in a "
                                  "row (the limit)")
                bounds.extended += self.size
                if bounds.extended > MAX_EXTENDED_TOTAL:
                    raise invalid(f"extended headers of more than {MAX_EXTENDED_TOTAL} bytes "
                                  "in all (the limit)")
            member = super()._proc_member(tar)  # type: ignore[misc]
            # Applied to the member already; a member keeps no copy of them.
            member.pax_headers = {}
            return member  # type: ignore[no-any-return]

        # Sparse members: tarfile reads their maps without bound (the PAX 1.0 map runs on
        # for as many entries as its first line claims). No image tool writes them.
        def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            raise invalid(f"{self.name!r} is a sparse file, which image archives never hold")

        def _proc_gnusparse_00(self, *args: object) -> None:
            raise invalid("a PAX header describes a sparse file, which image archives never "
                          "hold")

        _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    return BoundedTarInfo


class ArchiveReader:
    """Members of an archive by normalized path (``./x`` is ``x``), links followed.

    A name is resolved once to the regular member it ends at (:meth:`resolve`): symbolic and
    hard links are followed within the archive, at most :data:`MAX_LINK_HOPS` of them (a loop or
    a longer chain is InvalidArgument), and never out of it. Work done per member (hashing a
    layer) is keyed by that member, so many names for one member cost one pass."""

    def __init__(self, tar: tarfile.TarFile, source: str) -> None:
        self.tar = tar
        self.source = source
        self.documents_read = 0
        self.members: dict[str, tarfile.TarInfo] = {}
        self._resolved: dict[str, str | None] = {}
        try:
            every = tar.getmembers()
        except tarfile.TarError as err:
            raise errdefs.InvalidArgument(f"{source} is not a valid tar archive: {err}") from None
        for m in every:
            if m.isfile() or m.issym() or m.islnk():
                self.members[_normalize(m.name)] = m

    def resolve(self, path: str) -> str | None:
        """The name of the regular member ``path`` ends at, None if it names nothing."""
        name = _normalize(path)
        if name in self._resolved:
            return self._resolved[name]
        current = name
        for _ in range(MAX_LINK_HOPS + 1):
            member = self.members.get(current)
            if member is None or member.isfile():
                break
            target = member.linkname
            if member.issym() and not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(current), target)
            current = posixpath.normpath("/" + target).lstrip("/")  # never above the archive
        else:
            raise errdefs.InvalidArgument(
                f"{self.source}: {path} is a chain of more than {MAX_LINK_HOPS} links, or a "
                "loop; refused")
        found = current if current in self.members else None
        self._resolved[name] = found
        return found

    def has(self, path: str) -> bool:
        return self.resolve(path) is not None

    def _member(self, path: str) -> tarfile.TarInfo:
        name = self.resolve(path)
        if name is None:
            raise errdefs.NotFound(f"{self.source} has no {path}")
        return self.members[name]

    def _open(self, path: str) -> IO[bytes]:
        member = self._member(path)
        try:
            f = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError) as err:
            raise errdefs.InvalidArgument(f"{self.source}: cannot read {path}: {err}") from None
        if f is None:
            raise errdefs.InvalidArgument(f"{self.source}: {path} is not a regular file")
        return f

    def size(self, path: str) -> int:
        return int(self._member(path).size)

    def read_small(self, path: str, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        """A document, read whole: InvalidArgument over ``limit`` bytes, or when the
        archive's documents together would pass :data:`MAX_DOCUMENTS`."""
        with self._open(path) as f:
            size = f.seek(0, 2)
            if size > limit:
                raise errdefs.InvalidArgument(
                    f"{self.source}: {path} is {size} bytes, larger than the {limit} bytes a "
                    "document may have; refused")
            self.charge(size, path)
            f.seek(0)
            return f.read(size)

    def charge(self, size: int, what: str) -> None:
        """Count ``size`` bytes of a document against :data:`MAX_DOCUMENTS`."""
        self.documents_read += size
        if self.documents_read > MAX_DOCUMENTS:
            raise errdefs.InvalidArgument(
                f"{self.source}: its documents (indexes, manifests, configs) come to more than "
                f"{MAX_DOCUMENTS} bytes in all, the limit, at {what}; refused")

    def chunks(self, path: str) -> Iterator[bytes]:
        with self._open(path) as f:
            while data := f.read(archive.CHUNK):
                yield data


def _normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _json(reader: ArchiveReader, path: str) -> Any:
    try:
        return json.loads(reader.read_small(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errdefs.InvalidArgument(f"{reader.source}: {path} is not valid JSON: {err}") from None
    except RecursionError:
        # json's decoder recurses per nesting level: "[[[[..." runs out of stack.
        raise errdefs.InvalidArgument(
            f"{reader.source}: {path} is nested too deeply to be an image document") from None


def _image_name(annotations: dict[str, str]) -> str:
    """The full name an ``index.json`` entry gives its image ("" if none): containerd's
    annotation, else an OCI ref.name that is a whole reference (skopeo writes those; a bare
    tag, as containerd and docker write beside their own annotation, names no repository)."""
    name = annotations.get(archive.ANNOTATION_IMAGE_NAME, "")
    if not name:
        ref_name = annotations.get(archive.ANNOTATION_REF_NAME, "")
        if any(c in ref_name for c in "/:@"):
            name = ref_name
    return str(reference.parse(name)) if name else ""


# -- reading the archive -------------------------------------------------------------------


def _add_blob(reader: ArchiveReader, load: _Load, client: Client, desc: Descriptor,
              what: str) -> None:
    """Note ``desc`` for writing; a blob the archive lacks must be in the store already."""
    known = load.blobs.get(desc.digest)
    if known is not None and known[0].size == desc.size:
        return  # checked when first listed
    path = archive.blob_path(desc.digest)
    if reader.has(path):
        size = reader.size(path)
        if size != desc.size:
            raise errdefs.InvalidArgument(
                f"{reader.source}: {what} {desc.digest} is {size} bytes; its descriptor says "
                f"{desc.size}")
        load.blobs.setdefault(desc.digest, (desc, path))
    elif not documents.has_blob(client.content, desc.digest):
        raise errdefs.InvalidArgument(f"{reader.source} lacks {what} {desc.digest}")


def _document(reader: ArchiveReader, client: Client, load: _Load, desc: Descriptor,
              what: str) -> bytes:
    known = load.documents.get(desc.digest)
    if known is not None:
        return known  # verified when it was read
    if desc.size > MAX_MANIFEST_SIZE:
        raise errdefs.InvalidArgument(
            f"{reader.source}: {what} {desc.digest} is {desc.size} bytes, larger than the "
            f"{MAX_MANIFEST_SIZE} bytes a document may have; refused")
    path = archive.blob_path(desc.digest)
    if reader.has(path):
        data = reader.read_small(path)
    elif documents.has_blob(client.content, desc.digest):
        reader.charge(desc.size, f"{what} {desc.digest}")
        data = documents.read_document(client, desc)
    else:
        raise errdefs.InvalidArgument(f"{reader.source} lacks {what} {desc.digest}")
    if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise errdefs.InvalidArgument(
            f"{reader.source}: {what} {desc.digest} does not match its descriptor")
    load.documents[desc.digest] = data
    load.blobs.setdefault(desc.digest, (desc, path))
    return data


def _read_manifest(reader: ArchiveReader, client: Client, load: _Load,
                   desc: Descriptor) -> _Image:
    known = load.manifests.get(desc.digest)
    if known is not None:
        return known
    m = manifest.parse_manifest(_document(reader, client, load, desc, "manifest"))
    config = manifest.parse_config(_document(reader, client, load, m.config, "config"))
    for layer in m.layers:
        _add_blob(reader, load, client, layer, "layer")
    labels_ = {f"{labels.GC_REF_CONTENT}.config": m.config.digest}
    labels_.update({f"{labels.GC_REF_CONTENT}.l.{i}": layer.digest
                    for i, layer in enumerate(m.layers)})
    load.labels[desc.digest] = labels_
    image = load.manifests[desc.digest] = _Image(m, config)
    return image


def _read_oci(reader: ArchiveReader, client: Client, want: Platform) -> _Load:
    load = _Load()
    entries = manifest.parse_index(reader.read_small(archive.INDEX_JSON))
    for entry in entries:
        desc = entry.descriptor
        name = _image_name(desc.annotations)
        if not name:
            load.skipped.append(desc.digest)
            continue
        target = Descriptor(desc.media_type, desc.digest, desc.size)
        if desc.digest not in load.targets:
            image = load.targets[desc.digest] = _read_target(reader, client, load, target, want)
            if image is not None:
                load.unpack[desc.digest] = image
        load.names.append((name, target))
    return load


def _read_target(reader: ArchiveReader, client: Client, load: _Load, target: Descriptor,
                 want: Platform) -> _Image | None:
    """Note an image's blobs; the image of platform ``want`` to unpack, if the archive has it."""
    if target.media_type in manifest.MANIFEST_TYPES:
        return _read_manifest(reader, client, load, target)
    if target.media_type not in manifest.INDEX_TYPES:
        raise errdefs.InvalidArgument(
            f"{reader.source}: {target.digest} has media type {target.media_type!r}, which is "
            "not an image manifest or index")
    entries = manifest.parse_index(_document(reader, client, load, target, "index"))
    chosen: _Image | None = None
    children: dict[str, str] = {}
    present: dict[str, bool] = {}  # by digest: whether the archive or the store has it
    for i, e in enumerate(entries):
        d = e.descriptor
        if d.media_type not in manifest.MANIFEST_TYPES:
            continue
        # A manifest the index lists again (for another platform, or a hostile thousand
        # times) is looked up, read and labelled once.
        if d.digest not in present:
            present[d.digest] = reader.has(archive.blob_path(d.digest)) or \
                documents.has_blob(client.content, d.digest)
            if present[d.digest]:
                children[f"{labels.GC_REF_CONTENT}.m.{i}"] = d.digest
        # Platforms the archive left out are fine: the index lists them, nothing needs them.
        if not present[d.digest]:
            continue
        image = _read_manifest(reader, client, load, d)
        if chosen is None and e.platform is not None and platforms.matches(want, e.platform):
            chosen = image
    load.labels[target.digest] = children
    return chosen


def _inspect_layer(reader: ArchiveReader, path: str) -> tuple[str, str, int]:
    """(digest, media type by the data's magic, size) of a docker archive's layer file."""
    h = hashlib.sha256()
    size = 0
    head = b""
    for data in reader.chunks(path):
        if len(head) < 4:
            head += data[:4]
        h.update(data)
        size += len(data)
    if head.startswith(_GZIP_MAGIC):
        media_type = oci.DOCKER_LAYER_GZIP
    elif head.startswith(_ZSTD_MAGIC):
        media_type = oci.MEDIA_TYPE_LAYER_ZSTD
    else:
        media_type = oci.DOCKER_LAYER
    return "sha256:" + h.hexdigest(), media_type, size


def _read_docker(reader: ArchiveReader, want: Platform) -> _Load:
    load = _Load()
    entries = _json(reader, archive.MANIFEST_JSON)
    if not isinstance(entries, list):
        raise errdefs.InvalidArgument(f"{reader.source}: manifest.json is not a list")
    for n, entry in enumerate(entries):
        where = f"{reader.source}: manifest.json entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or \
                not isinstance(entry.get("Layers"), list) or \
                not all(isinstance(x, str) for x in entry["Layers"]):
            raise errdefs.InvalidArgument(f"{where} needs Config and a list of Layers")
        if len(entry["Layers"]) > manifest.MAX_LAYERS:
            # Checked before any layer is hashed: the manifest made of them would be refused.
            raise errdefs.InvalidArgument(
                f"{where} has {len(entry['Layers'])} layers; at most {manifest.MAX_LAYERS} are "
                "supported")
        config_data = load.configs.get(entry["Config"])
        if config_data is None:
            config_data = load.configs[entry["Config"]] = reader.read_small(entry["Config"])
        config = manifest.parse_config(config_data)
        config_desc = Descriptor(oci.DOCKER_CONFIG,
                                 "sha256:" + hashlib.sha256(config_data).hexdigest(),
                                 len(config_data))
        layers = []
        for path in entry["Layers"]:
            member = reader.resolve(path) or path  # one pass per member, whatever its names
            if member not in load.layers:
                load.layers[member] = _inspect_layer(reader, path)
            digest, media_type, size = load.layers[member]
            layers.append(Descriptor(media_type, digest, size))
            load.blobs.setdefault(digest, (layers[-1], path))
        zstd = any(layer.media_type == oci.MEDIA_TYPE_LAYER_ZSTD for layer in layers)
        if zstd:  # Docker's schema 2 has no zstd layers: say it in OCI terms throughout
            config_desc.media_type = oci.MEDIA_TYPE_CONFIG
            layers = [Descriptor(oci.MEDIA_TYPE_LAYER_GZIP if x.media_type ==
                                 oci.DOCKER_LAYER_GZIP else oci.MEDIA_TYPE_LAYER
                                 if x.media_type == oci.DOCKER_LAYER else x.media_type,
                                 x.digest, x.size) for x in layers]
        manifest_type = oci.MEDIA_TYPE_MANIFEST if zstd else oci.DOCKER_MANIFEST
        doc = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": documents.descriptor_json(config_desc),
            "layers": [documents.descriptor_json(x) for x in layers],
        }
        manifest_data = json.dumps(doc, indent=3).encode()
        manifest_desc = Descriptor(manifest_type,
                                   "sha256:" + hashlib.sha256(manifest_data).hexdigest(),
                                   len(manifest_data))
        load.documents[config_desc.digest] = config_data
        load.blobs.setdefault(config_desc.digest, (config_desc, ""))
        load.documents[manifest_desc.digest] = manifest_data
        load.blobs.setdefault(manifest_desc.digest, (manifest_desc, ""))
        load.labels[manifest_desc.digest] = {
            f"{labels.GC_REF_CONTENT}.config": config_desc.digest,
            **{f"{labels.GC_REF_CONTENT}.l.{i}": x.digest for i, x in enumerate(layers)}}
        parsed = manifest.parse_manifest(manifest_data)
        if platforms.matches(want, config.platform) or not config.platform.os:
            load.unpack[manifest_desc.digest] = _Image(parsed, config)
        tags = entry.get("RepoTags") or []
        if not tags:
            load.skipped.append(manifest_desc.digest)
        for tag in tags:
            if not isinstance(tag, str):
                raise errdefs.InvalidArgument(f"{where}: RepoTags must be strings")
            load.names.append((str(reference.parse(tag)), manifest_desc))
    return load


# -- writing into berthd -------------------------------------------------------------------


def _write(client: Client, reader: ArchiveReader, load: _Load) -> None:
    # Layers first, then configs, manifests and indexes (as noted: children before parents),
    # so every gc.ref label names something already stored.
    for digest, (desc, path) in load.blobs.items():
        lbls = load.labels.get(digest, {})
        data = load.documents.get(digest)
        if documents.has_blob(client.content, digest):
            client.content.set_labels(digest, lbls)
            continue
        chunks = iter([data]) if data is not None else reader.chunks(path)
        _write_blob(client, f"berth-load-{digest}", chunks, total=desc.size, expected=digest,
                    lbls=lbls)


def _write_blob(client: Client, ref: str, chunks: Iterator[bytes], *, total: int,
                expected: str, lbls: dict[str, str]) -> None:
    """Store a blob through ingest ``ref``; berthd verifies ``total`` and ``expected`` on
    commit. A blob the store has already is not sent again (its labels are set), as
    containerd's content.WriteBlob does."""
    try:
        writer = client.content.writer(ref, total=total, expected=expected)
    except errdefs.AlreadyExists:
        client.content.set_labels(expected, lbls)
        return
    with writer:
        if writer.status().offset:
            writer.truncate(0)  # a load that was interrupted: start its ingest over
        for data in chunks:
            writer.write(data)
        try:
            writer.commit(total, expected, lbls)
        except errdefs.AlreadyExists:
            client.content.set_labels(expected, lbls)


def _unpack(client: Client, image: _Image, snapshotter: str) -> None:
    """Unpack the image's layers into ``snapshotter`` through berthd (as ``ctr images import``
    does: Snapshots.Prepare, Diff.Apply, Snapshots.Commit, layer after layer), then label what
    the daemon's own unpack labels: each layer blob with its diff ID, the config with the top
    snapshot (so the image keeps its snapshots from the collector)."""
    layers, diff_ids = image.manifest.layers, image.config.diff_ids
    unpacker = Unpacker(client.content, client.snapshotter(snapshotter), client.diff, layers,
                        diff_ids, snapshotter_name=snapshotter)
    try:
        for index in range(len(layers)):
            unpacker.commit(index)
    except BaseException:
        unpacker.abort()
        raise
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        client.content.set_labels(layer.digest, {labels.UNCOMPRESSED: diff_id})
    if unpacker.top:
        client.content.set_labels(image.manifest.config.digest,
                                  {f"{labels.GC_REF_SNAPSHOT}{snapshotter}": unpacker.top})


def _spool_limit(fd: int, compressed: int) -> int:
    """How much a gzipped archive of ``compressed`` bytes may inflate to in the temporary file
    ``fd``: :data:`SPOOL_EXPANSION` times its size (at least :data:`SPOOL_FLOOR`), and never
    more than nine tenths of the room left where the file is (often a tmpfs, that is memory)."""
    st = os.fstatvfs(fd)
    room = st.f_bavail * st.f_frsize * 9 // 10
    return min(room, max(SPOOL_EXPANSION * compressed, SPOOL_FLOOR))


def _open_archive(stack: ExitStack, source: IO[bytes], name: str) -> tarfile.TarFile:
    """A seekable, uncompressed tar of ``source``. An unseekable input (a pipe) or a gzipped
    one is copied to a temporary file first: members are read out of order, and a compressed
    tar read out of order is decompressed again for every backward step."""
    if not source.seekable():
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="berth-load-"))  # noqa: SIM115
        shutil.copyfileobj(source, spool, archive.CHUNK)
        spool.seek(0)
        source = spool
    head = source.read(6)
    source.seek(0)
    if head.startswith(_GZIP_MAGIC):
        plain = stack.enter_context(tempfile.TemporaryFile(prefix="berth-load-"))  # noqa: SIM115
        compressed = source.seek(0, 2)
        source.seek(0)
        limit = _spool_limit(plain.fileno(), compressed)
        written = 0
        try:
            with gzip.GzipFile(fileobj=source, mode="rb") as z:
                while chunk := z.read(archive.CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise errdefs.ResourceExhausted(
                            f"{name} decompresses to more than {limit} bytes, more than "
                            f"{SPOOL_EXPANSION} times its size or than {tempfile.gettempdir()} "
                            "has room for; decompress it yourself first (gunzip), or set "
                            "TMPDIR to a larger file system")
                    try:
                        plain.write(chunk)
                    except OSError as err:
                        raise errdefs.ResourceExhausted(
                            f"{name}: cannot inflate it into {tempfile.gettempdir()}: "
                            f"{err.strerror or err}; set TMPDIR to a larger file system") from None
        except (OSError, EOFError) as err:
            raise errdefs.InvalidArgument(f"{name}: broken gzip data: {err}") from None
        plain.seek(0)
        source = plain
    elif head.startswith(_COMPRESSED_TAR_MAGIC):
        raise errdefs.InvalidArgument(
            f"{name} is compressed with something other than gzip; decompress it first")
    try:
        return stack.enter_context(tarfile.open(
            fileobj=source, mode="r:", tarinfo=_bounded_tarinfo(_HeaderBounds(name))))
    except tarfile.TarError as err:
        raise errdefs.InvalidArgument(f"{name} is not a tar archive: {err}") from None


def load_archive(client: Client, source: IO[bytes], name: str, *, snapshotter: str,
                 want: Platform, report: Report) -> list[str]:
    """Load the archive read from ``source`` (``name`` is for messages); the image names."""
    with ExitStack() as stack:
        tar = _open_archive(stack, source, name)
        reader = ArchiveReader(tar, name)
        if reader.has(archive.INDEX_JSON):
            load = _read_oci(reader, client, want)
            if not load.names and reader.has(archive.MANIFEST_JSON):
                load = _read_docker(reader, want)
        elif reader.has(archive.MANIFEST_JSON):
            load = _read_docker(reader, want)
        else:
            raise errdefs.InvalidArgument(
                f"{name} is neither a docker archive (manifest.json) nor an OCI layout "
                "(index.json)")
        if not load.names:
            raise errdefs.InvalidArgument(
                f"{name} names no image (no io.containerd.image.name or full "
                "org.opencontainers.image.ref.name annotation, no RepoTags)")
        for digest in load.skipped:
            report(f"skipped unnamed image {digest}")
        with client.lease():
            _write(client, reader, load)
            # Every image is unpacked before any is named: a bad layer names nothing.
            for image in load.unpack.values():
                _unpack(client, image, snapshotter)
            for image_name, target in load.names:
                if target.digest not in load.unpack:
                    report(f"{image_name}: not unpacked: the archive has no image for {want}")
                client.images.put(Image(image_name, target))
        return [image_name for image_name, _target in load.names]
