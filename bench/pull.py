"""Pull benchmark: `ctr images pull` (fetch + unpack) of a big image, berthd beside containerd.

    .venv/bin/python bench/pull.py [--rounds 3] [--only containerd|berthd] [--cache DIR]

The image (built once, cached under --cache, default /var/tmp/berth-bench) has 4 gzip layers,
about 1 GB uncompressed and 30k files:

1. a Debian root filesystem from `debootstrap --variant=minbase` (plus python3, perl, git, ...),
   with apt's caches removed, as a distribution base layer is;
2. an application tree: ~18k small source-like text files;
3. assets: incompressible media-like files, large logs and JSON-like text, and "vendored"
   libraries made of real ELF files (compressible like binaries are);
4. an update: deletions (whiteouts, including a whole directory), overwrites, new files.

It is built with umoci (one `repack --refresh-bundle` per layer), pushed with skopeo to a
docker-registry on 127.0.0.1 (its storage kept in the cache), then for each round and each
daemon: a fresh empty root, `sync` + drop the page cache, time `ctr images pull --plain-http`
(ctr unpacks by default), read the daemon's peak RSS (VmHWM), stop the daemon, delete its root.

The daemons: the real containerd (the reference, private config and root) and berthd, started
as `/work/main/.venv/bin/berthd --root DIR --state DIR --address SOCK`. Only processes started
here are signalled, by PID; Ctrl-C or a failure still stops them and unmounts their leftovers.
Needs root. Nothing reaches beyond loopback, except debootstrap, once, to the Debian mirror
configured in /etc/apt.

`collect(argv)` runs it as `main` does and also returns the figures as `summary.Row`s (for
`bench/all.py`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from images import push_layout  # noqa: E402
from processes import (  # noqa: E402
    ManagedProcess,
    accepts_connections,
    children_of,
    loopback_env,
    peak_rss_kib,
    pids_with_argument_pair,
    spawn,
    stop_process,
)
from reference_containerd import ReferenceContainerd, remove_tree  # noqa: E402
from registry import Registry  # noqa: E402
from summary import Row, median  # noqa: E402

DEFAULT_CACHE = Path("/var/tmp/berth-bench")
BERTHD_BINARY = REPO_ROOT / ".venv/bin/berthd"
CTR_BINARY = "/usr/bin/ctr"
UMOCI = "/usr/bin/umoci"
DEBOOTSTRAP = "/usr/sbin/debootstrap"

# Bump when the recipe changes: the cache is rebuilt when the stored version differs.
RECIPE_VERSION = "pull-bench-v2"
IMAGE_REPO_TAG = "bench/debian-app:v1"
DEBOOTSTRAP_INCLUDE = "python3,perl,git,ca-certificates,curl,less,procps,xz-utils,bzip2,locales"
SEED = 20261128


def log(message: str) -> None:
    print(f"[pull-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str]) -> None:
    """Run a build tool; on failure raise RuntimeError with its output."""
    proc = subprocess.run(cmd, capture_output=True, env=loopback_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)}: exit code {proc.returncode}\n"
            f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}"
        )


# -- the Debian base -------------------------------------------------------------------------


def debian_mirror_and_suite() -> tuple[str, str]:
    """The main Debian mirror URI configured for apt here, and this system's codename."""
    suite = "bookworm"
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                suite = line.split("=", 1)[1].strip().strip('"') or suite
    candidates: list[str] = []
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["URIs:"]:
                candidates += words[1:]
            elif words[:1] == ["deb"]:
                candidates += [w for w in words[1:] if "://" in w][:1]
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri, suite
    return "http://deb.debian.org/debian", suite


def build_debian_rootfs(target: Path) -> None:
    """debootstrap a minbase Debian into `target` (once: a marker file says it is complete)."""
    marker = target.parent / (target.name + ".complete")
    if marker.exists():
        return
    if target.exists():
        shutil.rmtree(target)
    mirror, suite = debian_mirror_and_suite()
    log(f"debootstrap {suite} from {mirror} (once; ~1 min)")
    run(
        [
            DEBOOTSTRAP,
            "--variant=minbase",
            f"--include={DEBOOTSTRAP_INCLUDE}",
            suite,
            str(target),
            mirror,
        ]
    )
    # What a distribution's base image leaves out: package caches, apt lists, device nodes.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in target.glob(pattern):
            if path.is_file():
                path.unlink()
    for entry in (target / "dev").iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    marker.touch()


# -- generated content -----------------------------------------------------------------------


class TextSource:
    """Deterministic text with about the compressibility of source code and prose (gzip ~3-4x).

    A pool of Zipf-distributed synthetic words in lines is generated once; `text(n)` returns n
    bytes stitched from random slices of it (longer than gzip's 32 KiB window, so the
    repetition does not help the compressor).
    """

    def __init__(self, rng: random.Random, pool_size: int = 8 * 1024 * 1024) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz_"
        vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(6000)]
        vocabulary += ["(", ")", "{", "}", "=", "==", "return", "if", "for", "self", "0", "1"]
        weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
        rng.shuffle(weights)
        words = rng.choices(vocabulary, weights=weights, k=pool_size // 5)
        lines, i = [], 0
        while i < len(words):
            width = rng.randint(2, 14)
            lines.append(" " * (4 * rng.randint(0, 3)) + " ".join(words[i : i + width]))
            i += width
        self.pool = "\n".join(lines).encode()[:pool_size]

    def text(self, size: int) -> bytes:
        parts, total = [], 0
        while total < size:
            piece = min(size - total, self.rng.randint(40_000, 400_000))
            start = self.rng.randrange(0, len(self.pool) - piece)
            parts.append(self.pool[start : start + piece])
            total += piece
        return b"".join(parts)


def log_lines(rng: random.Random, size: int) -> bytes:
    """Application-log-like text (highly compressible, like real logs)."""
    out, total, t = [], 0, 1_700_000_000.0
    paths = ["users", "orders", "items", "search", "health", "login", "cart", "metrics"]
    levels = ["INFO"] * 20 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
    while total < size:
        t += rng.expovariate(50)
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int(t * 1e6) % 1_000_000:06d}Z "
            f"{rng.choice(levels)} [worker-{rng.randint(1, 32)}] req={rng.getrandbits(64):016x} "
            f"GET /api/v1/{rng.choice(paths)}/{rng.randint(1, 99999)} "
            f"status={rng.choice((200, 200, 200, 201, 304, 404, 500))} "
            f"bytes={rng.randint(80, 90000)} dur={rng.uniform(0.1, 900):.3f}ms\n"
        ).encode()
        out.append(line)
        total += len(line)
    return b"".join(out)[:size]


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


SOURCE_SUFFIXES = (".py", ".js", ".go", ".c", ".h", ".json", ".md", ".txt", ".html", ".css")


def app_source_files(rng: random.Random) -> Iterator[tuple[str, int]]:
    """(relative path, size) of the application tree: 18,000 files in 900 directories."""
    for pkg in range(60):
        for module in range(15):
            for k in range(20):
                size = int(min(120_000, max(120, rng.lognormvariate(8.4, 0.9))))
                suffix = SOURCE_SUFFIXES[(pkg + module + k) % len(SOURCE_SUFFIXES)]
                yield f"app/src/pkg_{pkg:04d}/mod_{module:02d}/file_{k:02d}{suffix}", size


def populate_layer2(rootfs: Path, rng: random.Random, text: TextSource) -> None:
    """The application: many small text files."""
    for rel, size in app_source_files(rng):
        write_file(rootfs / rel, text.text(size))
    for k in range(40):
        write_file(rootfs / f"app/bin/tool_{k:02d}", text.text(rng.randint(2_000, 20_000)), 0o755)


def elf_corpus(rootfs: Path) -> list[Path]:
    """Shared objects and executables of the Debian layer, to make vendored libraries from."""
    found = []
    for directory in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/bin"):
        base = rootfs / directory
        if base.is_dir():
            for path in sorted(base.iterdir()):
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 50_000:
                    found.append(path)
    return found


def populate_layer3(rootfs: Path, rng: random.Random, text: TextSource) -> None:
    """Assets: incompressible media, big logs and data files, vendored binaries."""
    for k, size_mb in enumerate((16, 8, 3, 1, 1, 1)):  # 30 MB of media
        write_file(rootfs / f"opt/assets/media/clip_{k:02d}.webm", rng.randbytes(size_mb << 20))
    for k, size_mb in enumerate((100, 80, 60, 40)):  # 280 MB of logs
        write_file(rootfs / f"var/log/app/app-{k}.log", log_lines(rng, size_mb << 20))
    for k, size_mb in enumerate((60, 40, 30, 10)):  # 140 MB of data files
        write_file(rootfs / f"opt/assets/data/dataset_{k}.json", text.text(size_mb << 20))
    corpus = elf_corpus(rootfs)
    for k, size_mb in enumerate((25, 15, 10)):  # 50 MB of vendored libraries (real ELF)
        parts, total = [], 0
        while total < size_mb << 20 and corpus:
            data = rng.choice(corpus).read_bytes()
            parts.append(data)
            total += len(data)
        write_file(rootfs / f"opt/vendor/lib/libvendor_{k}.so", b"".join(parts)[: size_mb << 20])
    for k in range(100):  # small incompressible files
        write_file(
            rootfs / f"opt/assets/icons/icon_{k:03d}.png", rng.randbytes(rng.randint(500, 30_000))
        )


def populate_layer4(rootfs: Path, rng: random.Random, text: TextSource) -> None:
    """An update: delete (files and a whole directory), overwrite, add."""
    sources = sorted((rootfs / "app/src").rglob("*.*"))
    for index, path in enumerate(sources):
        if index % 30 == 0:
            path.unlink()
        elif index % 50 == 1:
            path.write_bytes(text.text(rng.randint(500, 20_000)))
    shutil.rmtree(rootfs / "app/src/pkg_0007")
    (rootfs / "var/log/app/app-3.log").unlink()
    for k in range(1200):
        write_file(
            rootfs / f"app/build/out_{k // 100:02d}/obj_{k:04d}.o",
            text.text(rng.randint(500, 12_000)),
        )
    write_file(rootfs / "opt/assets/media/clip_new.webm", rng.randbytes(6 << 20))
    write_file(rootfs / "opt/assets/data/dataset_1.json", text.text(24 << 20))


# -- the image -------------------------------------------------------------------------------


@dataclass
class ImageStats:
    layers: int
    compressed_bytes: int
    uncompressed_bytes: int
    entries: int

    def describe(self) -> str:
        return (
            f"{self.layers} layers, {self.compressed_bytes / 1e6:.0f} MB gzip, "
            f"{self.uncompressed_bytes / 1e6:.0f} MB uncompressed, {self.entries} tar entries"
        )


def layout_stats(layout: Path, tag: str) -> ImageStats:
    """Sizes and tar entry count of the image `layout:tag` (decompresses every layer once)."""
    index = json.loads((layout / "index.json").read_text())
    (manifest_desc,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / manifest_desc["digest"].split(":")[1]).read_text())
    compressed = uncompressed = entries = 0
    for layer in manifest["layers"]:
        path = blobs / layer["digest"].split(":")[1]
        compressed += path.stat().st_size
        with gzip.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                entries += 1
                uncompressed += member.size
    return ImageStats(len(manifest["layers"]), compressed, uncompressed, entries)


def build_image(cache: Path) -> tuple[Path, ImageStats]:
    """The cached OCI layout of the benchmark image (built if missing or of an older recipe)."""
    layout = cache / "layout"
    stats_file = cache / "layout.stats.json"
    if stats_file.exists():
        saved = json.loads(stats_file.read_text())
        if saved.get("recipe") == RECIPE_VERSION and (layout / "index.json").exists():
            return layout, ImageStats(**saved["stats"])
    debian = cache / "debian-rootfs"
    build_debian_rootfs(debian)
    for stale in (layout, cache / "registry", stats_file):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    started = time.monotonic()
    image = f"{layout}:latest"
    run([UMOCI, "init", "--layout", str(layout)])
    run([UMOCI, "new", "--image", image])
    rng = random.Random(SEED)
    text = TextSource(rng)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=cache) as tmp:
        bundle = Path(tmp) / "bundle"
        rootfs = bundle / "rootfs"
        run([UMOCI, "unpack", "--image", image, str(bundle)])
        steps: list[tuple[str, Callable[[], None]]] = [
            ("debian base", lambda: run(["cp", "-a", f"{debian}/.", f"{rootfs}/"])),
            ("application sources", lambda: populate_layer2(rootfs, rng, text)),
            ("assets", lambda: populate_layer3(rootfs, rng, text)),
            ("update", lambda: populate_layer4(rootfs, rng, text)),
        ]
        for number, (name, populate) in enumerate(steps, 1):
            log(f"layer {number}: {name}")
            populate()
            run(
                [UMOCI, "repack", "--refresh-bundle", "--history.comment", name,
                 "--image", image, str(bundle)]
            )  # fmt: skip
    run(
        [UMOCI, "config", "--image", image, "--config.cmd", "/bin/bash",
         "--config.workingdir", "/app"]
    )  # fmt: skip
    run([UMOCI, "gc", "--layout", str(layout)])
    stats = layout_stats(layout, "latest")
    stats_file.write_text(json.dumps({"recipe": RECIPE_VERSION, "stats": stats.__dict__}))
    log(f"built in {time.monotonic() - started:.0f} s: {stats.describe()}")
    return layout, stats


# -- the daemons -----------------------------------------------------------------------------


class Daemon(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def log_path(self) -> Path: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Berthd(ManagedProcess):
    """berthd with its own root, state and socket under `base`, started and stopped by PID."""

    def __init__(self, base: Path, binary: Path = BERTHD_BINARY, start_timeout: float = 30.0,
                 config: str = "", keep_files: bool = False):
        self.base = base
        self.keep_files = keep_files  # stop() leaves base for the caller to delete
        self.binary = binary
        self.start_timeout = start_timeout
        self.config = config  # config.toml text, if any
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return str(self.base / "berthd.sock")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("berthd not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.base / "berthd.log"

    def start(self) -> None:
        """Start berthd; return once its socket accepts connections (stopped again on failure)."""
        if not self.binary.exists():
            raise RuntimeError(f"{self.binary} does not exist (run `make setup`)")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        root, state = self.base / "root", self.base / "state"
        extra: list[str] = []
        if self.config:
            config = self.base / "config.toml"
            config.write_text(self.config)
            extra = ["--config", str(config)]
        self._proc = spawn(
            [
                str(self.binary),
                *("--root", str(root), "--state", str(state), "--address", self.address),
                *extra,
            ],
            self.log_path,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail(3000)
                self._proc = None
                raise RuntimeError(f"berthd exited early:\n{tail}")
            if accepts_connections(self.address):
                return
            time.sleep(0.02)
        raise RuntimeError("berthd socket did not appear in time")

    def stop(self) -> None:
        """Stop the process we started (SIGTERM, then SIGKILL), kill any shim of it still
        alive, unmount leftovers, delete base."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
            kill_leftover_shims(self.address, "berthd")
        if self.base.exists() and not self.keep_files:
            remove_tree(self.base)


# An idle group shim lingers this long after its last task (berthd's shim_linger, 2 s by
# default), daemon or no daemon; a shim still there after it has outlived its daemon.
LINGER_GRACE = 5.0


def kill_leftover_shims(address: str, name: str) -> list[int]:
    """A safety net once the daemon serving ``address`` has stopped: the shims still carrying
    ``-address ADDRESS`` after LINGER_GRACE seconds are SIGKILLed with their children (container
    processes), and named (a shim that outlives its daemon is worth knowing about). Returns
    the shims' PIDs."""
    deadline = time.monotonic() + LINGER_GRACE
    shims = pids_with_argument_pair("-address", address)
    while shims and time.monotonic() < deadline:
        time.sleep(0.1)
        shims = pids_with_argument_pair("-address", address)
    if shims:
        print(f"[{name} {time.strftime('%H:%M:%S')}] killing {len(shims)} shim(s) left after "
              f"the daemon stopped: {shims}", flush=True)
        for pid in [*children_of(shims), *shims]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return shims


# The contenders: which daemon, and which client pulls.
#   containerd: `ctr images pull` on containerd (the reference)
#   berthd:     `ctr images pull` on berthd (ctr fetches; berthd stores and unpacks)
#   berth:      `berth pull` on berthd (berthd fetches, verifies and unpacks by itself)
CONTENDERS = ("containerd", "berthd", "berth")
BERTH_CLI = REPO_ROOT / ".venv" / "bin" / "berth"


def make_daemon(name: str, base: Path) -> Daemon:
    """The daemon `name` with its files under `base`, which its stop() leaves in place: the
    benchmark deletes all rounds' files at its end. Deleting 35k files between rounds makes
    ext4 slow to create the next round's: for a while after a delete, it skips the freed inodes
    as recently deleted, one inode-table lookup each (`recently_deleted` was 25-65% of a pull's
    CPU in perf), which penalised whichever daemon pulled next."""
    if name == "containerd":
        return ReferenceContainerd(base, keep_files=True)
    return Berthd(base, keep_files=True)


def pull_command(name: str, address: str, ref: str) -> list[str]:
    if name == "berth":
        return [str(BERTH_CLI), "--address", address, "pull", "--plain-http", "-q", ref]
    return [CTR_BINARY, "--address", address, "images", "pull", "--plain-http", ref]


# -- measuring -------------------------------------------------------------------------------


def drop_caches() -> bool:
    """`sync; echo 3 > /proc/sys/vm/drop_caches`; False if the kernel won't let us."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (via /proc/PID/task/TID/children)."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    queue += [int(child) for child in f.read().split()]
        except OSError:
            continue  # exited meanwhile
    return tree


def rss_kib(pid: int) -> int:
    """Current VmRSS of `pid` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeRssSampler:
    """Samples the summed RSS of a process and its descendants every `interval` s, keeps the max.

    VmHWM covers only the daemon's own process; this catches worker processes too (at the cost
    of missing peaks shorter than the interval).
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = sum(rss_kib(p) for p in process_tree(self.pid))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Sample:
    daemon: str
    round: int
    seconds: float
    peak_rss_kib: int  # VmHWM of the daemon process
    tree_peak_rss_kib: int  # sampled peak of daemon + descendants
    daemon_cpu_seconds: float  # user + system of the daemon process (not its children)


def measure_pull(
    name: str, round_number: int, ref: str, workdir: Path, timeout: float = 900.0
) -> Sample:
    """One pull into a fresh daemon, which is stopped afterwards (its files stay until the
    benchmark ends: see `make_daemon`).

    A pull running longer than `timeout` seconds is killed and reported as a failure.
    """
    base = workdir / f"{name}-{round_number}"
    if base.exists():
        remove_tree(base)
    daemon = make_daemon(name, base)
    daemon.start()
    try:
        if not drop_caches():
            log("warning: cannot drop the page cache; timings include a warm cache")
        cpu_before = cpu_seconds(daemon.pid)
        cmd = pull_command(name, daemon.address, ref)
        with TreeRssSampler(daemon.pid) as sampler:
            started = time.monotonic()
            proc = subprocess.run(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=loopback_env(),
                check=False,
                timeout=timeout,
            )
            elapsed = time.monotonic() - started
        if proc.returncode != 0:
            try:
                daemon_log = daemon.log_path.read_text(errors="replace")[-3000:]
            except OSError:
                daemon_log = "(no log)"
            raise RuntimeError(
                f"{name}: {' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')[-3000:]}\n"
                f"--- {name} log ---\n{daemon_log}"
            )
        return Sample(
            daemon=name,
            round=round_number,
            seconds=elapsed,
            peak_rss_kib=peak_rss_kib(daemon.pid),
            tree_peak_rss_kib=sampler.peak_kib,
            daemon_cpu_seconds=cpu_seconds(daemon.pid) - cpu_before,
        )
    finally:
        daemon.stop()


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` blocks clean up."""

    def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def report(samples: list[Sample], daemons: list[str], stats: ImageStats) -> None:
    print()
    print(f"image: {stats.describe()}")
    print(f"{'round':>5}  " + "  ".join(f"{d:>22}" for d in daemons))
    rounds = sorted({s.round for s in samples})
    for r in rounds:
        cells = []
        for d in daemons:
            (s,) = [x for x in samples if x.daemon == d and x.round == r]
            cells.append(f"{s.seconds:7.2f} s {s.peak_rss_kib / 1024:6.0f} MiB")
        print(f"{r:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    medians = {}
    for d in daemons:
        mine = [s for s in samples if s.daemon == d]
        medians[d] = median([s.seconds for s in mine])
        print(
            f"{d}: median {medians[d]:.2f} s "
            f"({stats.uncompressed_bytes / 1e6 / medians[d]:.0f} MB/s unpacked), "
            f"peak RSS (VmHWM) max {max(s.peak_rss_kib for s in mine) / 1024:.0f} MiB, "
            f"with children {max(s.tree_peak_rss_kib for s in mine) / 1024:.0f} MiB, "
            f"daemon CPU median {median([s.daemon_cpu_seconds for s in mine]):.2f} s"
        )
    for contender in ("berthd", "berth"):
        if "containerd" in medians and contender in medians:
            ratio = medians[contender] / medians["containerd"]
            print(f"ratio {contender}/containerd (median pull time): {ratio:.2f}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=CONTENDERS, action="append",
                        help="benchmark only these contenders (repeatable)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="image and registry cache"
    )
    parser.add_argument("--json", type=Path, help="also write the samples here as JSON")
    parser.add_argument("--timeout", type=float, default=900.0, help="per-pull limit, seconds")
    parser.add_argument("--build-only", action="store_true", help="build and cache the image, stop")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (mounts, drop_caches, debootstrap)")
    return args


def measure(args: argparse.Namespace, daemons: Sequence[str]) -> tuple[list[Sample], ImageStats]:
    """Build (or find) the image, then pull it `args.rounds` times into each daemon; no samples
    with `--build-only`."""
    args.cache.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    with interrupts_as_exceptions():
        layout, stats = build_image(args.cache)
        log(f"image: {stats.describe()}")
        if args.build_only:
            return samples, stats
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.cache))
        try:
            with Registry(root=args.cache / "registry") as registry:
                log("pushing to the loopback registry (skips blobs already there)")
                ref = push_layout(registry, layout, "latest", IMAGE_REPO_TAG)
                for round_number in range(1, args.rounds + 1):
                    # alternate the order so neither daemon always runs first
                    order = daemons if round_number % 2 else list(reversed(daemons))
                    for name in order:
                        sample = measure_pull(name, round_number, ref, workdir, args.timeout)
                        log(
                            f"round {round_number} {name}: {sample.seconds:.2f} s, "
                            f"peak RSS {sample.peak_rss_kib / 1024:.0f} MiB, "
                            f"daemon CPU {sample.daemon_cpu_seconds:.2f} s"
                        )
                        samples.append(sample)
        finally:
            remove_tree(workdir)
    return samples, stats


# What each contender is called in the summary rows, and its pull-time target (issue 12:
# `berth pull` at most 0.3 x containerd's time; `ctr images pull` through berthd no slower than
# the 0.41 x it was when the target was set).
CLIENTS = {"berthd": "ctr images pull", "berth": "berth pull"}
TARGETS = {"berthd": "≤ 0.41", "berth": "≤ 0.3"}


def rows(samples: list[Sample]) -> list[Row]:
    """For each Berth contender measured beside containerd: pull time (s) and the daemon's peak
    RSS (VmHWM, MiB), one sample per round."""
    def of(name: str) -> list[Sample]:
        return [s for s in samples if s.daemon == name]

    reference = of("containerd")
    out: list[Row] = []
    for contender, client in CLIENTS.items():
        mine = of(contender)
        if not reference or not mine:
            continue
        out.append(Row(f"pull time, {client} on berthd", "s",
                       [s.seconds for s in reference], [s.seconds for s in mine],
                       TARGETS[contender]))
        out.append(Row(f"pull peak daemon RSS (VmHWM), {client}", "MiB",
                       [s.peak_rss_kib / 1024 for s in reference],
                       [s.peak_rss_kib / 1024 for s in mine], "≤ 1 (memory)"))
    return out


def collect(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark with these command-line arguments, print its report (and write
    `--json`), return its rows (none with `--build-only`)."""
    args = parse(argv)
    daemons = args.only or list(CONTENDERS)
    samples, stats = measure(args, daemons)
    if args.build_only:
        return []
    report(samples, daemons, stats)
    if args.json:
        args.json.write_text(json.dumps([s.__dict__ for s in samples], indent=2))
    return rows(samples)


def main(argv: Sequence[str] | None = None) -> int:
    collect(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
