"""Importing an image archive cannot make Berth read unbounded data into memory
(CVE-2023-25153 class).

containerd before 1.6.18 read an archive's ``index.json`` and ``manifest.json`` whole: a tar
whose index.json was gigabytes long made ``ctr images import`` exhaust memory. The fix caps
the JSON it reads at 20 MiB (images/archive/importer.go, ``jsonLimit``).

Where this class reaches Berth:

* ``berth load`` reads archives in the client (:mod:`berth.cli.load`): its documents
  (index.json, manifest.json, manifests, configs) must each be bounded and together bounded;
  what Python's tarfile would read whole (a PAX or GNU long-name header's data, a sparse map)
  or keep for every member must be bounded too; each document must be read once however often
  the archive refers to it; and bad input must get one clear line, never a traceback.
* ``ctr images import`` also runs in the client: ctr's own importer (with containerd's fix)
  reads the archive and streams its blobs into berthd's content store, so no Berth code reads
  the archive. But what it stores is as untrusted as the archive, and berthd reads documents
  from its store whole when it pushes an image or pulls one whose blobs it already holds: an
  imported gigabyte manifest or config must be refused there, not read.

Every archive here is otherwise well formed, so code without the bound does not fail early by
luck: it reads the oversized part, which shows as the peak memory of the ``berth load`` process
(from wait4) or the growth of berthd's VmHWM, and the tests would see it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import images
import pytest
from conftest import Ctr
from daemon import Berthd
from hostile_layers import raw_header
from registry import Registry, loopback_env

from berth import errdefs
from berth.cli import load as loading
from berth.remotes.remotes import MAX_MANIFEST_SIZE

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parent.parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"
MiB = 1 << 20
# The oversized part of each archive: far above every bound, and far above what the tests
# allow a load to grow by, so that reading it whole cannot pass unnoticed.
BIG = 256 * MiB
# What a bounded load may use beyond loading a small, valid archive: its documents (at most
# MAX_DOCUMENTS) and parsing one of them.
HEADROOM = loading.MAX_DOCUMENTS + 64 * MiB
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


# -- running berth, measured -------------------------------------------------------------------


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes: the process's peak resident memory
    seconds: float

    def shown(self) -> str:
        return (f"exit {self.returncode}, peak RSS {self.max_rss // MiB} MiB, "
                f"{self.seconds:.1f} s\n--- stdout ---\n{self.stdout[-3000:]}\n"
                f"--- stderr ---\n{self.stderr[-3000:]}")

    def error_line(self) -> str:
        """The one line a refused load printed (exit 1, ``berth: ...``, no traceback)."""
        lines = self.stderr.strip().splitlines()
        assert self.returncode == 1 and "Traceback" not in self.stderr and len(lines) == 1 \
            and lines[0].startswith("berth: "), self.shown()
        return lines[0]


def run_measured(argv: list[str], timeout: float) -> Measured:
    """Run ``argv`` to its end (killed after ``timeout`` seconds) and measure its peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=loopback_env({"DOCKER_CONFIG": "/nonexistent"}))
        reaped = threading.Event()
        lock = threading.Lock()

        def kill() -> None:
            with lock:  # never a pid that was reaped (and could be someone else's by now)
                if not reaped.is_set():
                    proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            with lock:
                reaped.set()
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"), usage.ru_maxrss * 1024,
                        time.monotonic() - started)


def berth_load(d: Berthd, namespace: str, archive: Path, timeout: float = 120) -> Measured:
    return run_measured([str(BERTH), "--address", d.address, "--namespace", namespace, "load",
                         "-i", str(archive)], timeout)


def vm_hwm(pid: int) -> int:
    """Peak resident memory of ``pid`` so far, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- writing archives without holding them ---------------------------------------------------


def _pad(size: int) -> bytes:
    return bytes(-size % 512)


class ArchiveWriter:
    """Writes a tar archive member by member straight to a file (gzip-compressed with
    ``gz``), so that a member of hundreds of megabytes costs the test no memory."""

    def __init__(self, path: Path, *, gz: bool = False) -> None:
        # Closed by close(): the writer is filled over many calls.
        self._f: gzip.GzipFile | io.BufferedWriter = (
            gzip.GzipFile(path, "wb", compresslevel=1) if gz else open(path, "wb"))  # noqa: SIM115

    def add(self, name: str, data: bytes) -> str:
        """A regular file; its digest."""
        self._f.write(raw_header(name.encode(), b"0", len(data)) + data + _pad(len(data)))
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def add_filled(self, name: str, size: int, head: bytes = b"", fill: bytes = b" ",
                   kind: bytes = b"0") -> str:
        """A member of ``size`` bytes: ``head`` then ``fill`` repeated; its content's digest."""
        self._f.write(raw_header(name.encode(), kind, size))
        h = hashlib.sha256(head)
        self._f.write(head)
        left = size - len(head)
        chunk = fill * (MiB // len(fill))
        while left > 0:
            piece = chunk[:left]
            h.update(piece)
            self._f.write(piece)
            left -= len(piece)
        self._f.write(_pad(size))
        return "sha256:" + h.hexdigest()

    def add_blob(self, data: bytes) -> dict[str, object]:
        """An OCI layout blob; its descriptor (without media type)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.add(f"blobs/sha256/{digest[7:]}", data)
        return {"digest": digest, "size": len(data)}

    def add_file(self, name: str, path: Path) -> None:
        """A regular file with the contents of ``path``, copied in chunks."""
        size = path.stat().st_size
        self._f.write(raw_header(name.encode(), b"0", size))
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                self._f.write(chunk)
        self._f.write(_pad(size))

    def raw(self, data: bytes) -> None:
        self._f.write(data)

    def close(self) -> None:
        self._f.write(bytes(1024))
        self._f.close()


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"imported\n"
        info = tarfile.TarInfo("etc/imported.txt")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(layer: bytes, os_name: str = "linux") -> bytes:
    return json.dumps({
        "architecture": images.host_architecture(), "os": os_name,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()


def _manifest(config: dict[str, object], layer: dict[str, object]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, **config},
                       "layers": [{"mediaType": OCI_LAYER, **layer}]}).encode()


def _index_json(name: str, target: dict[str, object], media_type: str = OCI_MANIFEST) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": media_type, **target,
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}]}
    ).encode()


def oci_archive(path: Path, name: str, *, gz: bool = False, before: bytes = b"") -> Path:
    """A small valid OCI archive of one image ``name``; ``before``: raw tar data to put
    ahead of its index.json (a hostile member)."""
    w = ArchiveWriter(path, gz=gz)
    w.raw(before)
    layer = _layer()
    layer_desc = w.add_blob(layer)
    config_desc = w.add_blob(_config(layer))
    manifest_desc = w.add_blob(_manifest(config_desc, layer_desc))
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", _index_json(name, manifest_desc))
    w.close()
    return path


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def namespace(module_berthd: Berthd) -> Iterator[str]:
    """A namespace of the test's own; what a load put there is removed afterwards."""
    ns = f"cve-2023-25153-{os.urandom(4).hex()}"
    yield ns
    c = Ctr(module_berthd.address, ns)
    for image in c("images", "ls", "-q", check=False).stdout.split():
        c("images", "rm", "--sync", image, check=False)


@dataclass
class Store:
    images: list[str]
    content: list[str]
    leases: list[str]

    @classmethod
    def of(cls, d: Berthd, namespace: str) -> Store:
        c = Ctr(d.address, namespace)
        rows = c("content", "ls").stdout.splitlines()[1:]
        return cls(sorted(c("images", "ls", "-q").stdout.split()),
                   sorted(row.split()[0] for row in rows if row.strip()),
                   sorted(c("leases", "ls", "-q").stdout.split()))


@pytest.fixture(scope="module")
def baseline_rss(module_berthd: Berthd, tmp_path_factory: pytest.TempPathFactory) -> int:
    """The peak RSS of ``berth load`` of a small valid archive: what every load here starts
    from (the interpreter, gRPC, the CLI)."""
    tmp = tmp_path_factory.mktemp("baseline")
    ns = f"cve-2023-25153-baseline-{os.urandom(4).hex()}"
    loaded = berth_load(module_berthd, ns, oci_archive(tmp / "ok.tar", "example.com/ok:v1"))
    assert loaded.returncode == 0, loaded.shown()
    assert "Loaded image: example.com/ok:v1" in loaded.stdout, loaded.shown()
    Ctr(module_berthd.address, ns)("images", "rm", "--sync", "example.com/ok:v1")
    return loaded.max_rss


def assert_refused(d: Berthd, namespace: str, loaded: Measured, baseline_rss: int,
                   *expected: str) -> str:
    """The load failed with one clear line holding ``expected``, stayed within its memory
    bound, and stored nothing a user can see (images) or that outlives the load (leases;
    blobs it wrote are the collector's)."""
    assert loaded.max_rss < baseline_rss + HEADROOM, \
        f"berth load read too much into memory: {loaded.shown()}"
    line = loaded.error_line()
    for text in expected:
        assert text in line, f"{text!r} is not in the error: {line}"
    store = Store.of(d, namespace)
    assert store.images == [] and store.leases == [], store
    return line


# -- berth load: documents -------------------------------------------------------------------


def test_huge_index_json_is_refused(module_berthd: Berthd, namespace: str, tmp_path: Path,
                                    baseline_rss: int) -> None:
    # Valid JSON: an index naming nothing, then whitespace (which JSON allows).
    w = ArchiveWriter(tmp_path / "a.tar")
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add_filled("index.json", BIG, head=b'{"schemaVersion":2,"manifests":[]}')
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   "index.json", f"{BIG} bytes", str(MAX_MANIFEST_SIZE))


def test_huge_docker_manifest_json_is_refused(module_berthd: Berthd, namespace: str,
                                              tmp_path: Path, baseline_rss: int) -> None:
    w = ArchiveWriter(tmp_path / "a.tar")
    w.add_filled("manifest.json", BIG, head=b"[]")
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   "manifest.json", str(MAX_MANIFEST_SIZE))


@pytest.mark.parametrize("which", ["manifest", "config"])
def test_huge_blob_document_is_refused(module_berthd: Berthd, namespace: str, tmp_path: Path,
                                       baseline_rss: int, which: str) -> None:
    """An image whose manifest (or config) is a valid document padded to BIG bytes, its
    descriptor telling the truth about its size and digest."""
    layer = _layer()
    w = ArchiveWriter(tmp_path / "a.tar")
    layer_desc = w.add_blob(layer)
    if which == "config":
        config = _config(layer)[:-1] + b" "  # the closing brace comes last, after the padding
        digest = _filled_blob(w, config, b"}")
        config_desc: dict[str, object] = {"digest": digest, "size": BIG}
        manifest_desc = w.add_blob(_manifest(config_desc, layer_desc))
    else:
        config_desc = w.add_blob(_config(layer))
        digest = _filled_blob(w, _manifest(config_desc, layer_desc)[:-1] + b" ", b"}")
        manifest_desc = {"digest": digest, "size": BIG}
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", _index_json("example.com/huge:v1", manifest_desc))
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   f"{which} {digest}", f"{BIG} bytes", str(MAX_MANIFEST_SIZE))


def _filled_blob(w: ArchiveWriter, head: bytes, tail: bytes) -> str:
    """A BIG-byte blob: ``head``, spaces, ``tail``, named by its digest; the digest. (Written
    twice: first to learn the digest, since the name comes before the data.)"""
    h = hashlib.sha256(head)
    space = b" " * MiB
    left = BIG - len(head) - len(tail)
    while left > 0:
        h.update(space[:left])
        left -= min(left, MiB)
    h.update(tail)
    digest = "sha256:" + h.hexdigest()
    w.raw(raw_header(f"blobs/sha256/{digest[7:]}".encode(), b"0", BIG) + head)
    left = BIG - len(head) - len(tail)
    while left > 0:
        w.raw(space[:left])
        left -= min(left, MiB)
    w.raw(tail + _pad(BIG))
    return digest


def test_huge_docker_config_is_refused(module_berthd: Berthd, namespace: str, tmp_path: Path,
                                       baseline_rss: int) -> None:
    layer = _layer()
    w = ArchiveWriter(tmp_path / "a.tar")
    w.add("layer.tar", layer)
    w.add_filled("config.json", BIG, head=_config(layer)[:-1])
    w.add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["huge:v1"],
                                        "Layers": ["layer.tar"]}]).encode())
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   "config.json", str(MAX_MANIFEST_SIZE))


def test_documents_together_are_bounded(module_berthd: Berthd, namespace: str,
                                        tmp_path: Path, baseline_rss: int) -> None:
    """Many distinct manifests, each just under the bound for one document: together they
    must not all be held (an index of another platform, so nothing is unpacked)."""
    layer = _layer()
    w = ArchiveWriter(tmp_path / "a.tar")
    layer_desc = w.add_blob(layer)
    config_desc = w.add_blob(_config(layer))
    entries = []
    count = 3 * loading.MAX_DOCUMENTS // MAX_MANIFEST_SIZE
    for n in range(count):
        doc = json.loads(_manifest(config_desc, layer_desc))
        doc["annotations"] = {"n": str(n)}  # a distinct digest for each
        data = json.dumps(doc).encode()
        data += b" " * (MAX_MANIFEST_SIZE - len(data) - 16)
        entries.append({"mediaType": OCI_MANIFEST, **w.add_blob(data),
                        "platform": {"os": "plan9", "architecture": "mips"}})
    index = w.add_blob(json.dumps({"schemaVersion": 2, "manifests": entries}).encode())
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", _index_json("example.com/many:v1", index, OCI_INDEX))
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   "documents", str(loading.MAX_DOCUMENTS))


def test_repeated_references_are_read_once(module_berthd: Berthd, namespace: str,
                                           tmp_path: Path, baseline_rss: int) -> None:
    """An index naming one large manifest thousands of times (and index.json naming that
    index many times): read once each, the load is quick and succeeds; read at every
    reference, it would hash and parse gigabytes."""
    layer = _layer()
    w = ArchiveWriter(tmp_path / "a.tar")
    layer_desc = w.add_blob(layer)
    config_desc = w.add_blob(_config(layer, os_name="plan9"))
    data = _manifest(config_desc, layer_desc)
    manifest_desc = w.add_blob(data + b" " * (MAX_MANIFEST_SIZE - len(data) - 16))
    entry = {"mediaType": OCI_MANIFEST, **manifest_desc,
             "platform": {"os": "plan9", "architecture": "mips"}}
    index = w.add_blob(json.dumps({"schemaVersion": 2, "manifests": [entry] * 10000}).encode())
    names = [f"example.com/repeated:v{n}" for n in range(20)]
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, **index, "annotations": {"io.containerd.image.name": name}}
        for name in names]}).encode())
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar", timeout=90)
    assert loaded.returncode == 0 and "Traceback" not in loaded.stderr, loaded.shown()
    assert loaded.seconds < 60, loaded.shown()
    assert loaded.max_rss < baseline_rss + HEADROOM, loaded.shown()
    assert Store.of(module_berthd, namespace).images == sorted(names)


class _Spaces(io.RawIOBase):
    """``size`` spaces, read in chunks: a big file's contents that the test never holds."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b" " * n
        self.left -= n
        return n


def _big_layer(path: Path, size: int) -> str:
    """Write an uncompressed layer tar holding one file of ``size`` spaces; its diff ID
    (written and hashed in chunks: the test's own memory stays small, and with it the peak RSS
    its children inherit)."""
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.txt")
        info.size, info.mode = size, 0o644
        tar.addfile(info, _Spaces(size))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def test_many_names_for_one_layer_are_hashed_once(module_berthd: Berthd, namespace: str,
                                                  tmp_path: Path, baseline_rss: int) -> None:
    """A docker archive naming one 64 MiB layer 300 times, each time spelt differently
    (``l.tar``, ``./l.tar``, ``//l.tar``...) or through a symlink: the layer is hashed once, so
    the load is quick; hashed per name it would read 19 GB."""
    diff_id = _big_layer(tmp_path / "l.tar", 64 * MiB)
    w = ArchiveWriter(tmp_path / "a.tar")
    w.add_file("l.tar", tmp_path / "l.tar")
    w.raw(raw_header(b"link.tar", b"2", 0, b"l.tar"))
    spellings = ["l.tar", "./l.tar", "/l.tar", "link.tar"]
    names = [("/" * (n // len(spellings))) + spellings[n % len(spellings)] for n in range(300)]
    config = json.dumps({"architecture": "mips", "os": "plan9", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id] * len(names)}})
    w.add("config.json", config.encode())
    w.add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["many:v1"],
                                        "Layers": names}]).encode())
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar", timeout=90)
    assert loaded.returncode == 0 and "Traceback" not in loaded.stderr, loaded.shown()
    assert loaded.seconds < 30, loaded.shown()
    assert Store.of(module_berthd, namespace).images == ["docker.io/library/many:v1"]


@pytest.mark.parametrize("links", [["a", "b"], [f"l{n}" for n in range(20)]],
                         ids=["loop", "long-chain"])
def test_link_loops_get_a_clear_error(module_berthd: Berthd, namespace: str, tmp_path: Path,
                                      baseline_rss: int, links: list[str]) -> None:
    """Symlinks that go round (a -> b -> a), or a chain longer than MAX_LINK_HOPS: one clear
    line, not a Python RecursionError."""
    w = ArchiveWriter(tmp_path / "a.tar")
    for name, target in zip(links, links[1:] + links[:1], strict=True):
        w.raw(raw_header(name.encode(), b"2", 0, target.encode()))
    w.add("config.json", _config(_layer()))
    w.add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["loop:v1"],
                                        "Layers": [links[0]]}]).encode())
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss,
                   f"chain of more than {loading.MAX_LINK_HOPS} links, or a loop")


def test_a_gzip_bomb_is_not_spooled_without_bound(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzipped archive is inflated into a temporary file before it is read: at most
    SPOOL_EXPANSION times its size (with a floor, made small here), never all of a bomb."""
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.GzipFile(bomb, "wb", compresslevel=9) as z:
        z.write(raw_header(b"zeros", b"0", 256 * MiB))
        for _ in range(256):
            z.write(bytes(MiB))
    monkeypatch.setattr(loading, "SPOOL_FLOOR", MiB)
    limit = loading.SPOOL_EXPANSION * bomb.stat().st_size
    assert limit < 256 * MiB
    with ExitStack() as stack, open(bomb, "rb") as f, \
            pytest.raises(errdefs.ResourceExhausted, match="decompress it yourself first"):
        loading._open_archive(stack, f, "bomb.tar.gz")


def test_deeply_nested_json_gets_a_clear_error(module_berthd: Berthd, namespace: str,
                                               tmp_path: Path, baseline_rss: int) -> None:
    w = ArchiveWriter(tmp_path / "a.tar")
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", b"[" * 200_000)
    w.close()
    loaded = berth_load(module_berthd, namespace, tmp_path / "a.tar")
    assert_refused(module_berthd, namespace, loaded, baseline_rss, "nested too deeply")


# -- berth load: the tar's own headers ---------------------------------------------------------


def _pax_bomb() -> Iterator[bytes]:
    """A PAX header of BIG bytes before index.json (whitespace: no record in it)."""
    yield raw_header(b"PaxHeaders/index.json", b"x", BIG)
    space = b" " * MiB
    for _ in range(BIG // MiB):
        yield space


def _long_name_bomb() -> Iterator[bytes]:
    """A GNU long name of BIG bytes for index.json (the name, then NULs)."""
    yield raw_header(b"././@LongLink", b"L", BIG) + b"index.json"
    zeros = bytes(MiB)
    left = BIG - len(b"index.json")
    while left > 0:
        yield zeros[:left]
        left -= min(left, MiB)
    yield _pad(BIG)


def _sparse_map_bomb() -> Iterator[bytes]:
    """A GNU sparse 1.0 member whose map claims 8 million entries, and has them."""
    records = b"".join(f"{len(r) + len(str(len(r) + 2)) + 2} {r}\n".encode()
                       for r in ("GNU.sparse.major=1", "GNU.sparse.minor=0",
                                 "GNU.sparse.name=junk", "GNU.sparse.realsize=1"))
    yield raw_header(b"PaxHeaders/junk", b"x", len(records)) + records + _pad(len(records))
    entries = 8 << 20
    data = f"{entries}\n".encode() + b"0\n" * (2 * entries)
    yield raw_header(b"GNUSparseFile.0/junk", b"0", len(data)) + data + _pad(len(data))


def _many_members() -> Iterator[bytes]:
    """More members than any image archive has (empty files)."""
    for n in range(loading.MAX_MEMBERS + 50_000):
        yield raw_header(f"junk/{n}".encode())


BOMBS = {"pax-header": _pax_bomb, "gnu-long-name": _long_name_bomb,
         "gnu-sparse-map": _sparse_map_bomb, "many-members": _many_members}
# What the refusal must say, for each.
BOMB_ERRORS = {
    "pax-header": ("PAX header", f"{BIG} bytes", str(loading.MAX_EXTENDED_HEADER)),
    "gnu-long-name": ("GNU long name header", str(loading.MAX_EXTENDED_HEADER)),
    "gnu-sparse-map": ("sparse",),
    "many-members": (f"more than {loading.MAX_MEMBERS} members",),
}


# Each plain; the two whose size is the point also gzipped, where a few hundred kilobytes
# stand for the hundreds of megabytes tarfile would read.
@pytest.mark.parametrize(("bomb", "gz"), [
    *((bomb, False) for bomb in BOMBS), ("pax-header", True), ("gnu-long-name", True)])
def test_tar_header_bombs_are_refused(module_berthd: Berthd, namespace: str, tmp_path: Path,
                                      baseline_rss: int, bomb: str, gz: bool) -> None:
    """A valid archive of one image with a hostile member before its index.json."""
    path = tmp_path / ("a.tar.gz" if gz else "a.tar")
    w = ArchiveWriter(path, gz=gz)
    layer = _layer()
    layer_desc = w.add_blob(layer)
    config_desc = w.add_blob(_config(layer))
    manifest_desc = w.add_blob(_manifest(config_desc, layer_desc))
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for data in BOMBS[bomb]():
        w.raw(data)
    index = _index_json("example.com/bomb:v1", manifest_desc)
    # The long name bomb names the member after it: index.json.
    w.add("placeholder" if bomb == "gnu-long-name" else "index.json", index)
    w.close()
    loaded = berth_load(module_berthd, namespace, path)
    assert_refused(module_berthd, namespace, loaded, baseline_rss, *BOMB_ERRORS[bomb])


# -- what berthd reads from its store after ``ctr images import`` ------------------------------


def _import(c: Ctr, archive: Path) -> None:
    c("images", "import", "--no-unpack", str(archive), timeout=300)


def test_imported_huge_manifest_is_not_read_by_berth_push(berthd: Berthd, registry: Registry,
                                                          tmp_path: Path) -> None:
    """``ctr images import`` stores a manifest of BIG bytes (valid JSON, padded); ``berth
    push`` makes berthd read the image's manifest from its store: refused, not read."""
    ns = "import"
    c = Ctr(berthd.address, ns)
    name = f"{registry.host}/cve-2023-25153/huge-manifest:v1"
    layer = _layer()
    w = ArchiveWriter(tmp_path / "a.tar")
    layer_desc = w.add_blob(layer)
    config_desc = w.add_blob(_config(layer))
    digest = _filled_blob(w, _manifest(config_desc, layer_desc)[:-1] + b" ", b"}")
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", _index_json(name, {"digest": digest, "size": BIG}))
    w.close()
    _import(c, tmp_path / "a.tar")
    assert name in c("images", "ls", "-q").stdout.split()

    assert berthd.proc is not None
    before = vm_hwm(berthd.proc.pid)
    pushed = run_measured([str(BERTH), "--address", berthd.address, "--namespace", ns, "push",
                           "--plain-http", name], timeout=120)
    grown = vm_hwm(berthd.proc.pid) - before
    assert grown < 64 * MiB, f"berthd read the manifest: its peak RSS grew {grown // MiB} MiB"
    line = pushed.error_line()
    assert f"manifest {digest} is {BIG} bytes" in line and str(MAX_MANIFEST_SIZE) in line, line


def test_imported_huge_config_is_not_read_by_berth_pull(berthd: Berthd, registry: Registry,
                                                        tmp_path: Path) -> None:
    """The registry serves an image whose config is BIG bytes (which berthd refuses to fetch);
    ``ctr images import`` put that config into berthd's store first: the pull must refuse it
    all the same instead of reading the stored copy whole."""
    ns = "import"
    c = Ctr(berthd.address, ns)
    repo = "cve-2023-25153/huge-config"
    layer = _layer()
    config_file = tmp_path / "config.json"
    config_digest = _big_json_file(config_file, _config(layer)[:-1], b"}")
    config_desc: dict[str, object] = {"digest": config_digest, "size": BIG}
    layer_desc = {"digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}
    manifest = _manifest(config_desc, layer_desc)
    ref = f"{registry.host}/{repo}:v1"
    _upload(registry, repo, layer)
    _upload(registry, repo, config_file)
    _put(f"{registry.url}/v2/{repo}/manifests/v1", manifest, len(manifest), OCI_MANIFEST)

    w = ArchiveWriter(tmp_path / "a.tar")
    w.add_blob(layer)
    w.add_file(f"blobs/sha256/{config_digest[7:]}", config_file)
    manifest_desc = w.add_blob(manifest)
    w.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add("index.json", _index_json("example.com/imported:v1", manifest_desc))
    w.close()
    _import(c, tmp_path / "a.tar")
    assert config_digest in c("content", "ls", "-q").stdout.split()

    assert berthd.proc is not None
    before = vm_hwm(berthd.proc.pid)
    pulled = run_measured([str(BERTH), "--address", berthd.address, "--namespace", ns, "pull",
                           "--plain-http", ref], timeout=120)
    grown = vm_hwm(berthd.proc.pid) - before
    assert grown < 64 * MiB, f"berthd read the config: its peak RSS grew {grown // MiB} MiB"
    line = pulled.error_line()
    assert f"config {config_digest} is {BIG} bytes" in line, line
    assert ref not in c("images", "ls", "-q").stdout.split()


def _big_json_file(path: Path, head: bytes, tail: bytes) -> str:
    """Write ``head``, spaces and ``tail`` (BIG bytes in all) to ``path``; their digest."""
    h = hashlib.sha256()
    space = b" " * MiB
    with open(path, "wb") as f:
        left = BIG - len(head) - len(tail)
        for piece in (head, *(space[:min(MiB, left - n)] for n in range(0, left, MiB)), tail):
            h.update(piece)
            f.write(piece)
    return "sha256:" + h.hexdigest()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _put(url: str, data: bytes | IO[bytes], size: int, content_type: str) -> None:
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Content-Type": content_type,
                                          "Content-Length": str(size)})
    with _NO_PROXY.open(req, timeout=300) as resp:
        assert resp.status == 201, resp.status


def _upload(registry: Registry, repo: str, blob: bytes | Path) -> None:
    """A monolithic blob upload (POST, then PUT with the data), streamed from a file."""
    status, headers, body = registry.request(f"/v2/{repo}/blobs/uploads/", method="POST")
    assert status == 202, (status, body)
    location = headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    sep = "&" if "?" in location else "?"
    if isinstance(blob, bytes):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        _put(f"{location}{sep}digest={digest}", blob, len(blob), "application/octet-stream")
        return
    with blob.open("rb") as f:
        digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(0)
        _put(f"{location}{sep}digest={digest}", f, blob.stat().st_size,
             "application/octet-stream")
