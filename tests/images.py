"""Real OCI images for tests, built offline and pushed to a loopback `Registry`.

Two kinds of builders:

* `busybox()` and `multilayer()` build an OCI layout with `umoci` (one `umoci repack` per
  layer), cache it under a directory the caller owns (a pytest session temp dir), and push it
  with `skopeo copy --preserve-digests`, so the registry serves exactly the blobs umoci wrote.
  They return an `ImageInfo` describing what a correct pull + unpack must produce.
* `push_layers()` writes an OCI layout by hand around arbitrary layer bytes (a hostile layer,
  say) and pushes it the same way, so not one byte of the layers is changed on the way.

Building needs root (umoci unpacks as root to keep ownership).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard
from registry import Registry, loopback_env

UMOCI = "/usr/bin/umoci"
SKOPEO = "/usr/bin/skopeo"
BUSYBOX_BINARY = Path("/bin/busybox")  # from busybox-static

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
Compression = Literal["gzip", "zstd", "none"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMPLETE_MARKER = ".berth-complete"


@dataclass(frozen=True)
class ImageInfo:
    """What a pushed test image is, and what a correct pull + unpack of it must produce.

    Paths are absolute paths inside the image's root filesystem. Every mapping describes the
    *final* rootfs (all layers applied), except `known_file_layer` which names the layer.
    """

    ref: str  # "127.0.0.1:PORT/library/busybox:latest"
    repo: str  # "library/busybox"
    tag: str  # "latest"
    layout: Path  # the cached OCI layout it was pushed from
    layer_count: int
    cmd: tuple[str, ...]
    files: Mapping[str, bytes] = field(default_factory=dict)  # exact contents
    sha256: Mapping[str, str] = field(default_factory=dict)  # hex digests of larger files
    symlinks: Mapping[str, str] = field(default_factory=dict)  # path -> link target
    hardlinks: Mapping[str, str] = field(default_factory=dict)  # path -> path of same inode
    attrs: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # (uid, gid, mode)
    absent: tuple[str, ...] = ()  # created by an earlier layer, deleted by a later one
    known_file: str = ""  # a file whose digest the tests check in the layer blob itself
    known_file_layer: int = 0  # index (in the manifest) of the layer that adds known_file

    @property
    def known_file_sha256(self) -> str:
        """Hex sha256 of `known_file`'s contents."""
        return self.sha256[self.known_file]


def rootfs_mismatches(rootfs: Path, info: ImageInfo) -> list[str]:
    """Every way the unpacked `rootfs` differs from what `info` promises ([] if none).

    Checks exact contents, sha256 digests, symlink targets, hardlinks (same inode), ownership
    and permission bits, and that deleted paths are absent. Works on any directory (an overlay
    mount from `ctr images mount`, a snapshot, an extracted tree).
    """
    problems: list[str] = []

    def at(path: str) -> Path:
        return rootfs / path.lstrip("/")

    for path, data in info.files.items():
        try:
            actual = at(path).read_bytes()
        except OSError as err:
            problems.append(f"{path}: cannot read: {err}")
            continue
        if actual != data:
            problems.append(f"{path}: content {actual[:60]!r} != expected {data[:60]!r}")
    for path, digest in info.sha256.items():
        try:
            actual_digest = hashlib.sha256(at(path).read_bytes()).hexdigest()
        except OSError as err:
            problems.append(f"{path}: cannot read: {err}")
            continue
        if actual_digest != digest:
            problems.append(f"{path}: sha256 {actual_digest} != expected {digest}")
    for path, target in info.symlinks.items():
        try:
            actual_target = os.readlink(at(path))
        except OSError as err:
            problems.append(f"{path}: not a symlink: {err}")
            continue
        if actual_target != target:
            problems.append(f"{path}: symlink to {actual_target!r} != expected {target!r}")
    for path, other in info.hardlinks.items():
        try:
            a, b = os.lstat(at(path)), os.lstat(at(other))
        except OSError as err:
            problems.append(f"{path}: cannot stat hardlink pair: {err}")
            continue
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            problems.append(f"{path}: not a hardlink of {other}")
    for path, (uid, gid, mode) in info.attrs.items():
        try:
            st = os.lstat(at(path))
        except OSError as err:
            problems.append(f"{path}: cannot stat: {err}")
            continue
        actual_attrs = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
        if actual_attrs != (uid, gid, mode):
            problems.append(f"{path}: (uid, gid, mode) {actual_attrs} != {(uid, gid, mode)}")
    for path in info.absent:
        if os.path.lexists(at(path)):
            problems.append(f"{path}: should have been deleted by a whiteout")
    return problems


# -- helpers ---------------------------------------------------------------------------------


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; on failure raise RuntimeError carrying the command and its output."""
    proc = subprocess.run(list(cmd), capture_output=True, env=loopback_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def host_architecture() -> str:
    """The OCI architecture name of this machine (amd64, arm64, ...)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _write(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, mode)


def push_layout(registry: Registry, layout: Path, tag: str, repo_tag: str) -> str:
    """Push `layout:tag` to `registry` as `repo_tag` unchanged (same digests); return the ref."""
    ref = f"{registry.host}/{repo_tag}"
    _run(
        [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            *registry.skopeo_dest_args(),
            f"oci:{layout}:{tag}",
            f"docker://{ref}",
        ]
    )
    return ref


def _split_repo_tag(repo_tag: str) -> tuple[str, str]:
    repo, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag:
        raise ValueError(f"expected REPO:TAG, got {repo_tag!r}")
    return repo, tag


# -- umoci-built images ----------------------------------------------------------------------


class _UmociImage:
    """An OCI layout grown one layer at a time: each `add_layer` is unpack, edit, repack."""

    def __init__(self, layout: Path, tag: str = "latest") -> None:
        self.layout = layout
        self.tag = tag
        self.image = f"{layout}:{tag}"
        _run([UMOCI, "init", "--layout", str(layout)])
        _run([UMOCI, "new", "--image", self.image])

    def add_layer(self, edit: Callable[[Path], None], comment: str) -> None:
        """Unpack the current image into a fresh bundle, `edit(rootfs)`, repack as a new layer."""
        with tempfile.TemporaryDirectory(prefix="umoci-bundle-", dir=self.layout.parent) as tmp:
            bundle = Path(tmp) / "bundle"
            _run([UMOCI, "unpack", "--image", self.image, str(bundle)])
            edit(bundle / "rootfs")
            _run(
                [UMOCI, "repack", "--history.comment", comment, "--image", self.image, str(bundle)]
            )

    def configure(self, *args: str) -> None:
        _run([UMOCI, "config", "--image", self.image, *args])

    def finish(self) -> None:
        """Drop unreferenced blobs and mark the layout complete (so the cache reuses it)."""
        _run([UMOCI, "gc", "--layout", str(self.layout)])
        (self.layout / _COMPLETE_MARKER).touch()


def _cached_layout(cache_dir: Path, name: str, build: Callable[[_UmociImage], None]) -> Path:
    """The layout `cache_dir/name`, built by `build` unless a complete one is already there."""
    layout = cache_dir / name
    if (layout / _COMPLETE_MARKER).exists():
        return layout
    if layout.exists():
        shutil.rmtree(layout)  # a half-built layout from an interrupted build
    cache_dir.mkdir(parents=True, exist_ok=True)
    image = _UmociImage(layout)
    build(image)
    image.finish()
    return layout


def busybox_applets() -> list[str]:
    """The applet names the installed static busybox provides."""
    out = _run([str(BUSYBOX_BINARY), "--list"]).stdout.decode()
    return sorted(name for name in out.split() if name and name != "busybox")


_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def _populate_busybox(rootfs: Path) -> None:
    """A minimal root filesystem: static busybox with every applet symlinked in /bin."""
    for name, mode in [
        ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
        ("root", 0o700), ("tmp", 0o1777), ("var", 0o755), ("usr", 0o755),
    ]:  # fmt: skip
        (rootfs / name).mkdir(exist_ok=True)
        os.chmod(rootfs / name, mode)
    shutil.copy2(BUSYBOX_BINARY, rootfs / "bin/busybox")
    os.chmod(rootfs / "bin/busybox", 0o755)
    for applet in busybox_applets():
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    _write(rootfs, "/etc/passwd", _PASSWD)
    _write(rootfs, "/etc/group", _GROUP)


@dataclass(frozen=True)
class _BusyboxFacts:
    """What the busybox rootfs layer guarantees (shared by both umoci-built images)."""

    files: Mapping[str, bytes]
    sha256: Mapping[str, str]
    symlinks: Mapping[str, str]
    attrs: Mapping[str, tuple[int, int, int]]


def _busybox_facts() -> _BusyboxFacts:
    digest = hashlib.sha256(BUSYBOX_BINARY.read_bytes()).hexdigest()
    return _BusyboxFacts(
        files={"/etc/passwd": _PASSWD, "/etc/group": _GROUP},
        sha256={"/bin/busybox": digest},
        symlinks={f"/bin/{a}": "busybox" for a in ("sh", "ls", "cat", "echo", "true", "sleep")},
        attrs={"/bin/busybox": (0, 0, 0o755), "/tmp": (0, 0, 0o1777)},
    )


def _configure_busybox(image: _UmociImage) -> None:
    image.configure(
        "--config.cmd", "/bin/sh",
        "--config.env", f"PATH={DEFAULT_PATH}",
        "--config.workingdir", "/",
        "--os", "linux",
        "--architecture", host_architecture(),
    )  # fmt: skip


def busybox(
    registry: Registry, cache_dir: Path, repo_tag: str = "library/busybox:latest"
) -> ImageInfo:
    """Build (once per `cache_dir`) and push a one-layer busybox image; cmd is /bin/sh.

    The layer holds /bin/busybox (busybox-static) with every applet as a symlink to it in
    /bin, /etc/passwd, /etc/group, and empty /dev /proc /sys /tmp /root /var /usr.
    """

    def build(image: _UmociImage) -> None:
        image.add_layer(_populate_busybox, "busybox")
        _configure_busybox(image)

    layout = _cached_layout(cache_dir, "busybox", build)
    repo, tag = _split_repo_tag(repo_tag)
    ref = push_layout(registry, layout, "latest", repo_tag)
    base = _busybox_facts()
    return ImageInfo(
        ref=ref,
        repo=repo,
        tag=tag,
        layout=layout,
        layer_count=1,
        cmd=("/bin/sh",),
        files=base.files,
        sha256=base.sha256,
        symlinks=base.symlinks,
        attrs=base.attrs,
    )


CATATONIT_BINARY = Path("/usr/bin/catatonit")  # Debian's catatonit: a static init


def pause(registry: Registry, cache_dir: Path, repo_tag: str = "library/pause:3.6") -> str:
    """Build (once per `cache_dir`) and push a pod sandbox ("pause") image made from Debian's
    static ``catatonit``: ``/pause``, entrypoint ``["/pause", "-P"]`` (catatonit's pause mode),
    user 65535:65535, as registry.k8s.io/pause is; its reference."""

    def populate(rootfs: Path) -> None:
        shutil.copy2(CATATONIT_BINARY, rootfs / "pause")
        os.chmod(rootfs / "pause", 0o755)

    def build(image: _UmociImage) -> None:
        image.add_layer(populate, "pause")
        image.configure(
            "--config.entrypoint", "/pause", "--config.entrypoint", "-P",
            "--config.user", "65535:65535",
            "--config.env", f"PATH={DEFAULT_PATH}",
            "--os", "linux",
            "--architecture", host_architecture(),
        )  # fmt: skip

    layout = _cached_layout(cache_dir, "pause", build)
    return push_layout(registry, layout, "latest", repo_tag)


# The multilayer image: busybox base, a layer of assorted files, a layer that deletes and
# overwrites some of them. Contents are fixed so the expectations need no build.
RANDOM_FILE_SIZE = 2 * 1024 * 1024
RANDOM_FILE_SEED = 20240601
_HELLO = b"hello from berth\n"
_LAYER2_FILES = {
    "/data/hello.txt": _HELLO,
    "/data/overwrite.txt": b"version 1, from layer 2\n",
    "/data/doomed.txt": b"deleted by layer 3\n",
    "/data/doomed-dir/a.txt": b"a\n",
    "/data/doomed-dir/sub/b.txt": b"b\n",
    "/data/mixed-dir/old.txt": b"deleted by layer 3\n",
    "/data/mixed-dir/keep.txt": b"kept\n",
}
_LAYER3_FILES = {
    "/data/overwrite.txt": b"version 2, from layer 3\n",
    "/data/mixed-dir/new.txt": b"added by layer 3\n",
    "/data/layer3.txt": b"layer 3 was here\n",
}
_EXEC_SCRIPT = b"#!/bin/sh\necho multilayer\n"
_OWNED = b"owned by 1000:1000, mode 0640\n"


def random_file_bytes() -> bytes:
    """The multilayer image's /data/random.bin: 2 MiB from a fixed seed (incompressible)."""
    return random.Random(RANDOM_FILE_SEED).randbytes(RANDOM_FILE_SIZE)


def _populate_layer2(rootfs: Path) -> None:
    for path, data in _LAYER2_FILES.items():
        _write(rootfs, path, data)
    _write(rootfs, "/data/random.bin", random_file_bytes())
    _write(rootfs, "/data/exec.sh", _EXEC_SCRIPT, 0o755)
    _write(rootfs, "/data/owned.txt", _OWNED, 0o640)
    os.chown(rootfs / "data/owned.txt", 1000, 1000)
    os.link(rootfs / "data/hello.txt", rootfs / "data/hello-hardlink.txt")
    (rootfs / "data/hello-symlink.txt").symlink_to("hello.txt")


def _populate_layer3(rootfs: Path) -> None:
    (rootfs / "data/doomed.txt").unlink()
    shutil.rmtree(rootfs / "data/doomed-dir")
    (rootfs / "data/mixed-dir/old.txt").unlink()
    for path, data in _LAYER3_FILES.items():
        _write(rootfs, path, data)


def multilayer(
    registry: Registry, cache_dir: Path, repo_tag: str = "library/multilayer:latest"
) -> ImageInfo:
    """Build (once per `cache_dir`) and push a 3-layer image exercising the unpack rules.

    Layer 0: the busybox rootfs. Layer 1: /data with hello.txt, a hardlink and a symlink to
    it, random.bin (2 MiB, its sha256 in `sha256`), exec.sh (0755), owned.txt (1000:1000
    0640), and files/dirs that layer 2 removes. Layer 2: whiteouts for a file, a whole
    directory and a file inside a kept directory; overwrites overwrite.txt; adds files.
    """

    def build(image: _UmociImage) -> None:
        image.add_layer(_populate_busybox, "busybox base")
        image.add_layer(_populate_layer2, "data files, hardlink, symlink")
        image.add_layer(_populate_layer3, "deletions and overwrites")
        _configure_busybox(image)

    layout = _cached_layout(cache_dir, "multilayer", build)
    repo, tag = _split_repo_tag(repo_tag)
    ref = push_layout(registry, layout, "latest", repo_tag)
    base = _busybox_facts()
    absent = ("/data/doomed.txt", "/data/doomed-dir", "/data/mixed-dir/old.txt")
    files = {
        path: data
        for path, data in {**base.files, **_LAYER2_FILES, **_LAYER3_FILES}.items()
        if not any(path == gone or path.startswith(gone + "/") for gone in absent)
    }
    files.update(
        {
            "/data/hello-hardlink.txt": _HELLO,
            "/data/exec.sh": _EXEC_SCRIPT,
            "/data/owned.txt": _OWNED,
        }
    )
    return ImageInfo(
        ref=ref,
        repo=repo,
        tag=tag,
        layout=layout,
        layer_count=3,
        cmd=("/bin/sh",),
        files=files,
        sha256={
            **base.sha256,
            "/data/random.bin": hashlib.sha256(random_file_bytes()).hexdigest(),
        },
        symlinks={**base.symlinks, "/data/hello-symlink.txt": "hello.txt"},
        hardlinks={"/data/hello-hardlink.txt": "/data/hello.txt"},
        attrs={
            **base.attrs,
            "/data/exec.sh": (0, 0, 0o755),
            "/data/owned.txt": (1000, 1000, 0o640),
        },
        absent=absent,
        known_file="/data/random.bin",
        known_file_layer=1,
    )


# -- hand-written layouts around arbitrary layer bytes ---------------------------------------


def make_tar(files: Mapping[str, bytes], *, mode: int = 0o644) -> bytes:
    """A plain (uncompressed) tar of regular files, with parent directories, for simple layers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen_dirs: set[str] = set()
        for path in sorted(files):
            name = path.lstrip("/")
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in seen_dirs:
                    seen_dirs.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[path]), mode
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    """`data` compressed as a layer blob of the given kind (deterministic: gzip mtime is 0)."""
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


DIFF_ID_OUTPUT_LIMIT = 512 * 1024 * 1024


def _diff_id(blob: bytes, compression: Compression) -> str:
    """sha256 of the uncompressed stream, for a precompressed (maybe hostile) blob.

    Decompresses in 1 MiB steps and gives up past `DIFF_ID_OUTPUT_LIMIT` bytes (a bomb) or on
    corrupt data; then the digest of the blob itself stands in (a pull should fail anyway).
    """
    if compression == "none":
        return "sha256:" + hashlib.sha256(blob).hexdigest()
    reader: io.BufferedIOBase | zstandard.ZstdDecompressionReader
    if compression == "gzip":
        reader = gzip.GzipFile(fileobj=io.BytesIO(blob))
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob))
    digest, total = hashlib.sha256(), 0
    try:
        with reader:
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
                total += len(chunk)
                if total > DIFF_ID_OUTPUT_LIMIT:
                    raise ValueError("decompresses to too much")
    except (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError):
        return "sha256:" + hashlib.sha256(blob).hexdigest()
    return "sha256:" + digest.hexdigest()


def _put_blob(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_layout(
    layout: Path,
    tag: str,
    layers: Sequence[bytes],
    compression: Compression = "gzip",
    *,
    precompressed: bool = False,
    cmd: Sequence[str] = ("/bin/sh",),
) -> dict[str, object]:
    """Write an OCI image layout by hand: one manifest over `layers`, tagged `tag`.

    Each element of `layers` is a tar stream that is compressed with `compression` (unless
    `precompressed`, in which case the bytes are used as the blob verbatim, whatever they are,
    with the media type of `compression`). Returns the manifest (as written).
    """
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptors, diff_ids = [], []
    for layer in layers:
        blob = layer if precompressed else compress(layer, compression)
        descriptors.append(_put_blob(layout, blob, LAYER_MEDIA_TYPES[compression]))
        diff_ids.append(_diff_id(blob, compression) if precompressed else
                        "sha256:" + hashlib.sha256(layer).hexdigest())  # fmt: skip
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "berth tests push_layers"} for _ in layers],
    }
    config_desc = _put_blob(layout, json.dumps(config).encode(), MEDIA_TYPE_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_desc,
        "layers": descriptors,
    }
    manifest_desc = _put_blob(layout, json.dumps(manifest).encode(), MEDIA_TYPE_MANIFEST)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    (layout / "index.json").write_text(json.dumps(index))
    return manifest


def push_layers(
    registry: Registry,
    repo_tag: str,
    layers: list[bytes],
    compression: Compression = "gzip",
    *,
    precompressed: bool = False,
) -> str:
    """Push `layers` as one image `repo_tag` (e.g. "hostile/dotdot:latest"); return the ref.

    `layers` are tar streams, compressed here with `compression` ("gzip", "zstd" or "none").
    With `precompressed=True` the bytes are pushed verbatim as the layer blobs (for corrupt or
    bomb-like compressed data). The registry then serves exactly these layer bytes: the layout
    is written by hand and copied with `skopeo --preserve-digests`. Needs no root.
    """
    _repo, tag = _split_repo_tag(repo_tag)
    with tempfile.TemporaryDirectory(prefix="berth-layout-") as tmp:
        layout = Path(tmp) / "layout"
        write_layout(layout, tag, layers, compression, precompressed=precompressed)
        return push_layout(registry, layout, tag, repo_tag)


def push_derived(
    registry: Registry,
    base: ImageInfo,
    repo_tag: str,
    *,
    files: Mapping[str, bytes] | None = None,
    symlinks: Mapping[str, str] | None = None,
    config: Mapping[str, object] | None = None,
) -> str:
    """Push `base` (a layout built here, tag `latest`) with one more layer holding `files`
    (0644) and `symlinks` (path -> target), and `config`'s keys (`User`, `WorkingDir`, ...)
    set over the base image's `config`; return the ref. The base layers are reused as they
    are (same digests); the layout is written by hand, so no umoci and no root are needed."""
    _repo, tag = _split_repo_tag(repo_tag)
    files, symlinks, config = files or {}, symlinks or {}, config or {}
    index = json.loads((base.layout / "index.json").read_text())
    manifest_desc = next(m for m in index["manifests"]
                         if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                         == "latest")

    def blob(desc: Mapping[str, object]) -> bytes:
        algorithm, _, digest = str(desc["digest"]).partition(":")
        return (base.layout / "blobs" / algorithm / digest).read_bytes()

    manifest = json.loads(blob(manifest_desc))
    image_config = json.loads(blob(manifest["config"]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.lstrip("/").split("/")[:i])
                       for p in [*files, *symlinks]
                       for i in range(1, len(p.lstrip("/").split("/")))})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for path, target in sorted(symlinks.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    layer = buf.getvalue()
    with tempfile.TemporaryDirectory(prefix="berth-derived-") as tmp:
        layout = Path(tmp) / "layout"
        (layout / "blobs/sha256").mkdir(parents=True)
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        layers = []
        for desc in manifest["layers"]:
            layers.append(_put_blob(layout, blob(desc), str(desc["mediaType"])))
        layers.append(_put_blob(layout, compress(layer, "gzip"), LAYER_MEDIA_TYPES["gzip"]))
        image_config["config"] = {**image_config.get("config", {}), **config}
        image_config["rootfs"]["diff_ids"].append(
            "sha256:" + hashlib.sha256(layer).hexdigest())
        image_config.setdefault("history", []).append({"created_by": "berth tests push_derived"})
        new_manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": _put_blob(layout, json.dumps(image_config).encode(), MEDIA_TYPE_CONFIG),
            "layers": layers,
        }
        desc = _put_blob(layout, json.dumps(new_manifest).encode(), MEDIA_TYPE_MANIFEST)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
        return push_layout(registry, layout, tag, repo_tag)
