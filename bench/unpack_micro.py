"""Layer apply throughput: Berth's WalkingDiff.apply against ``tar -xzf`` and containerd.

    .venv/bin/python bench/unpack_micro.py [--layer PATH] [--size-mb 800] [--runs 3]
        [--target-dir DIR] [--containerd]

Builds (once, cached at --layer) a synthetic gzip layer shaped like a distribution image: about
800 MB uncompressed (~300 MB gzip), tens of thousands of files, mostly small, a few large, in a
few hundred directories, with symlinks and hard links. Then times each extractor into a fresh
directory on the same file system, several runs, and prints the best and median.

With ``--containerd``, a private containerd (tests/reference_containerd.py) imports the layer as
a one-layer OCI image without unpacking, then each run times ``ctr images mount`` (which unpacks
into the overlayfs snapshotter) and removes the unpacked snapshot again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from isal import igzip, isal_zlib

from berth.diff.walking import WalkingDiff
from berth.mount import Mount
from berth.oci.image import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (b"the of and to in is that for it as with was on be by this are or an from at which "
         b"have not but all were when we there can more if will one about their has would "
         b"libc symbol version elf section header config value static const return void int "
         b"struct unsigned char include define error warning debug info usr lib share bin").split()


def _pool(rng: random.Random, size: int) -> bytes:
    """Content to slice files from: a mix of text, structured binary and noise that compresses
    about 2.6x with gzip, like a distribution's files."""
    parts = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.55:
            block = b" ".join(rng.choices(WORDS, k=700))[:4096]
        elif kind < 0.70:
            block = rng.randbytes(4096)
        else:
            row = rng.randbytes(16)
            block = b"".join(row[: rng.randrange(4, 16)] + bytes(rng.randrange(0, 24))
                             for _ in range(200))[:4096]
        parts.append(block)
        total += len(block)
    return b"".join(parts)


def build_layer(path: str, size_mb: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    pool = _pool(rng, 64 << 20)
    target = size_mb << 20
    written = 0
    dirs = [f"usr/{top}/{sub:03d}" for top in ("lib", "share", "bin", "include")
            for sub in range(80)]
    files: list[str] = []
    compressor = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    with open(path + ".tmp", "wb") as raw:

        class Sink(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b):  # type: ignore[no-untyped-def, override]
                raw.write(compressor.compress(bytes(b)))
                return len(b)

        with tarfile.open(fileobj=Sink(), mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for d in ["usr", "usr/lib", "usr/share", "usr/bin", "usr/include", *dirs]:
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tf.addfile(info)
            n = 0
            while written < target:
                r = rng.random()
                if r < 0.85:
                    size = rng.randrange(0, 8 << 10)
                elif r < 0.99:
                    size = rng.randrange(8 << 10, 128 << 10)
                elif r < 0.999:
                    size = rng.randrange(128 << 10, 2 << 20)
                else:
                    size = rng.randrange(2 << 20, 30 << 20)
                name = f"{rng.choice(dirs)}/f{n:06d}"
                n += 1
                info = tarfile.TarInfo(name)
                info.mode, info.mtime, info.size = 0o644, 1_700_000_000 + n, size
                off = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
                data = (pool * (size // len(pool) + 1))[:size] if size >= len(pool) \
                    else pool[off:off + size]
                tf.addfile(info, io.BytesIO(data))
                files.append(name)
                written += size
                if n % 50 == 0:
                    link = tarfile.TarInfo(f"{rng.choice(dirs)}/s{n:06d}")
                    link.type, link.linkname = tarfile.SYMTYPE, "/" + rng.choice(files)
                    tf.addfile(link)
                if n % 97 == 0:
                    hard = tarfile.TarInfo(f"{rng.choice(dirs)}/h{n:06d}")
                    hard.type, hard.linkname = tarfile.LNKTYPE, name
                    tf.addfile(hard)
        raw.write(compressor.flush())
    os.replace(path + ".tmp", path)


def _fresh(base: str) -> str:
    subprocess.run(["sync"], check=True)
    return tempfile.mkdtemp(dir=base)


def run_tar(layer: str, base: str) -> float:
    target = _fresh(base)
    try:
        start = time.perf_counter()
        subprocess.run(["tar", "-xzf", layer, "-C", target], check=True)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(target)


def run_berth(layer: str, base: str, prefetch: bool) -> float:
    target = _fresh(base)
    try:
        differ = WalkingDiff(prefetch=prefetch)
        desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, "sha256:unused", os.path.getsize(layer))
        with open(layer, "rb", buffering=1 << 20) as blob:
            start = time.perf_counter()
            differ.apply(desc, [Mount("bind", target, ("rbind", "rw"))], lambda _d: blob)
            return time.perf_counter() - start
    finally:
        shutil.rmtree(target)


def _sha256_file(path: str, *, gunzip: bool = False) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as raw:
        reader = igzip.IGzipFile(fileobj=raw) if gunzip else raw
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def oci_archive(layer: str, out: str) -> str:
    """A one-layer OCI image archive around ``layer``; returns its chain ID (= diff ID)."""
    layer_digest, layer_size = _sha256_file(layer)
    diff_id, _ = _sha256_file(layer, gunzip=True)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_desc = {"mediaType": MEDIA_TYPE_CONFIG, "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST,
                           "config": config_desc, "layers": [{
                               "mediaType": MEDIA_TYPE_LAYER_GZIP, "size": layer_size,
                               "digest": layer_digest}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_TYPE_MANIFEST, "size": len(manifest),
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()

    def blob_name(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    with tarfile.open(out, "w") as tf:
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                           ("index.json", index),
                           (blob_name(str(config_desc["digest"])), config),
                           (blob_name("sha256:" + hashlib.sha256(manifest).hexdigest()),
                            manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.add(layer, arcname=blob_name(layer_digest))
    return diff_id


def run_containerd(layer: str, base: str, runs: int) -> list[float]:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from reference_containerd import ReferenceContainerd

    work = tempfile.mkdtemp(dir=base, prefix="containerd-bench-")
    times = []
    try:
        archive = os.path.join(work, "image.tar")
        chain_id = oci_archive(layer, archive)
        with ReferenceContainerd(base_dir=Path(work) / "daemon") as daemon:
            def ctr(*args: str) -> None:
                subprocess.run(["ctr", "--address", daemon.address, *args], check=True,
                               stdout=subprocess.DEVNULL)

            ctr("images", "import", "--no-unpack", "--base-name", "docker.io/library/bench",
                archive)
            target = os.path.join(work, "mnt")
            os.mkdir(target)
            for _ in range(runs):
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                ctr("images", "mount", "--snapshotter", "overlayfs",
                    "docker.io/library/bench:latest", target)
                times.append(time.perf_counter() - start)
                ctr("images", "unmount", "--rm", target)
                ctr("snapshots", "--snapshotter", "overlayfs", "rm", chain_id)
    finally:
        shutil.rmtree(work)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="/tmp/berth-bench-layer.tar.gz")
    parser.add_argument("--size-mb", type=int, default=800)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target-dir", help="where to extract (default: beside the layer); "
                        "a tmpfs such as /dev/shm takes the disk out of the measurement")
    parser.add_argument("--only", choices=("tar", "berth", "berth-noprefetch", "containerd"),
                        action="append")
    parser.add_argument("--containerd", action="store_true",
                        help="also time a private containerd unpacking the same layer")
    args = parser.parse_args()
    if not os.path.exists(args.layer):
        print(f"building {args.layer} ({args.size_mb} MB uncompressed)...", flush=True)
        build_layer(args.layer, args.size_mb)
    _, uncompressed = _sha256_file(args.layer, gunzip=True)
    print(f"layer: {os.path.getsize(args.layer) / 1e6:.0f} MB gzip, "
          f"{uncompressed / 1e6:.0f} MB tar")
    base = args.target_dir or os.path.dirname(os.path.abspath(args.layer))
    candidates = {
        "tar": lambda: run_tar(args.layer, base),
        "berth": lambda: run_berth(args.layer, base, True),
        "berth-noprefetch": lambda: run_berth(args.layer, base, False),
    }
    chosen = args.only or [*candidates, *(["containerd"] if args.containerd else [])]
    for name in chosen:
        if name == "containerd":
            times = run_containerd(args.layer, base, args.runs)
        else:
            times = [candidates[name]() for _ in range(args.runs)]
        print(f"{name:18s} best {min(times):6.2f}s  median {statistics.median(times):6.2f}s  "
              f"({uncompressed / min(times) / 1e6:.0f} MB/s of tar)", flush=True)


if __name__ == "__main__":
    main()
