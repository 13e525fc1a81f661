"""Container start benchmarks: berthd beside containerd, measured in the same run.

    .venv/bin/python bench/run.py [--runs 20] [--containers 30] [--idle-rounds 3]

0. **Idle memory** — first, each daemon alone, freshly started on an empty root (`--idle-rounds`
   times each, alternating): its RSS after one `ctr version` and a second to settle.
1. **Latency** — `ctr run --rm busybox /bin/true` end to end, `--runs` times against each
   daemon (alternating), printing the medians and the ratio berthd/containerd. The real `ctr`
   is the client for both (a Python client would only measure Python's start-up).
2. **Memory** — `--containers` containers running `sleep` on each daemon; the shims' memory per
   container by PSS (proportional set size: shared pages split among the processes sharing
   them, the honest measure for many similar processes), with RSS beside it, and each daemon's
   own RSS/PSS with the containers running.

containerd runs its own Go shim (`containerd-shim-runc-v2`), one per container; berthd runs
Berth's shim (`containerd-shim-berth-v2`, the default for `io.containerd.runc.v2`) as configured
by default: a namespace's containers share shims, at most `shim_group_size` (16) per shim. The
memory part is also measured for a second berthd configured with `shim_group = "container"` (a
shim per container, as containerd), for comparison. Berth's shim fork server (zygote) counts
as a shim. All pull the same busybox image from a loopback registry first. Needs root. Only
processes started here are signalled; everything is removed afterwards.

`collect(argv)` runs it as `main` does and also returns the figures as `summary.Row`s (for
`bench/all.py`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import images  # noqa: E402
import summary  # noqa: E402
from processes import pids_with_argument, pids_with_argument_pair  # noqa: E402
from pull import Berthd, make_daemon  # noqa: E402
from reference_containerd import ReferenceContainerd, remove_tree  # noqa: E402
from registry import Registry  # noqa: E402
from summary import Row, median, spread  # noqa: E402

CTR = "/usr/bin/ctr"
PER_CONTAINER = "berthd, shim per container"
PER_CONTAINER_CONFIG = ('version = 2\n[plugins."io.containerd.runtime.v2.task"]\n'
                        '  shim_group = "container"\n')
MEMORY = "≤ 1 (memory)"


def ctr(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CTR, "--address", address, *args], capture_output=True,
                          check=check, timeout=120)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB, from smaps_rollup."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def shim_pids(address: str, zygote: bool) -> list[int]:
    """Shim processes serving the daemon at ``address`` (their -address argument), and, with
    ``zygote``, Berth's shim fork server, whose memory its shims share and so is theirs to
    carry."""
    pids = pids_with_argument_pair("-address", address)
    return pids + pids_with_argument("--berth-shim-zygote") if zygote else pids


def latency(address: str, ref: str, name: str, index: int) -> float:
    started = time.monotonic()
    ctr(address, "run", "--rm", ref, f"lat-{name}-{index}", "/bin/true")
    return time.monotonic() - started


def memory(address: str, ref: str, name: str, count: int, daemon_pid: int) -> dict[str, float]:
    slug = "-".join("".join(c if c.isalnum() else " " for c in name).split())
    ids = [f"mem-{slug}-{i}" for i in range(count)]
    try:
        for cid in ids:
            ctr(address, "run", "-d", ref, cid, "sleep", "3600")
        time.sleep(2)  # let the shims settle
        pids = shim_pids(address, zygote=name.startswith("berthd"))
        rss, pss = zip(*(memory_kib(p) for p in pids), strict=True) if pids else ((0,), (0,))
        d_rss, d_pss = memory_kib(daemon_pid)
        return {"shims": len(pids), "pss_per_container": sum(pss) / count / 1024,
                "rss_per_container": sum(rss) / count / 1024, "daemon_rss": d_rss / 1024,
                "daemon_pss": d_pss / 1024}
    finally:
        for cid in ids:
            ctr(address, "tasks", "kill", "-s", "KILL", cid, check=False)
        time.sleep(1)
        for cid in ids:
            ctr(address, "tasks", "rm", "-f", cid, check=False)
            ctr(address, "containers", "rm", cid, check=False)


@dataclass
class Results:
    """What one run measured: latencies in seconds, memory in MiB."""

    runs: int
    containers: int
    idle_rss: dict[str, list[float]]  # daemon -> RSS of each fresh start
    times: dict[str, list[float]]  # daemon -> each `ctr run --rm`
    mem: dict[str, dict[str, float]]  # daemon -> memory() with the containers running


def idle_rss(work: Path, rounds: int) -> dict[str, list[float]]:
    """The RSS (MiB) of containerd and berthd, each freshly started on an empty root and asked
    once for `ctr version` (then given 1 s to settle); ``rounds`` fresh starts each, alternating
    which goes first. Each daemon is stopped and its root deleted after its reading."""
    samples: dict[str, list[float]] = {"containerd": [], "berthd": []}
    for i in range(rounds):
        for name in (list(samples) if i % 2 == 0 else list(reversed(samples))):
            daemon = make_daemon(name, work / f"idle-{name}-{i}")
            daemon.start()
            try:
                ctr(daemon.address, "version")
                time.sleep(1)
                samples[name].append(memory_kib(daemon.pid)[0] / 1024)
            finally:
                daemon.stop()
    return samples


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--idle-rounds", type=int, default=3,
                        help="fresh starts of each daemon for the idle RSS")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    if min(args.runs, args.containers, args.idle_rounds) < 1:
        parser.error("--runs, --containers and --idle-rounds must be at least 1")
    return args


def measure(args: argparse.Namespace) -> Results:
    work = Path(tempfile.mkdtemp(prefix="berth-run-bench-"))
    try:
        idle = idle_rss(work, args.idle_rounds)
        with Registry() as registry, ReferenceContainerd(work / "containerd") as containerd:
            ref = images.busybox(registry, work / "layouts").ref
            berthd = Berthd(work / "berthd")
            isolated = Berthd(work / "berthd-isolated", config=PER_CONTAINER_CONFIG)
            berthd.start()
            isolated.start()
            try:
                daemons = {"containerd": (containerd.address, containerd.pid),
                           "berthd": (berthd.address, berthd.pid)}
                for address, _ in daemons.values():
                    ctr(address, "images", "pull", "--plain-http", ref)
                    ctr(address, "run", "--rm", ref, "warm-up", "/bin/true")
                times: dict[str, list[float]] = {name: [] for name in daemons}
                for i in range(args.runs):
                    order = list(daemons) if i % 2 == 0 else list(reversed(daemons))
                    for name in order:
                        times[name].append(latency(daemons[name][0], ref, name, i))
                ctr(isolated.address, "images", "pull", "--plain-http", ref)
                daemons[PER_CONTAINER] = (isolated.address, isolated.pid)
                mem = {name: memory(address, ref, name, args.containers, pid)
                       for name, (address, pid) in daemons.items()}
            finally:
                berthd.stop()
                isolated.stop()
    finally:
        remove_tree(work)
    return Results(args.runs, args.containers, idle, times, mem)


def report(r: Results) -> None:
    print(f"\nidle daemon RSS (fresh start, one `ctr version`), {len(r.idle_rss['berthd'])} "
          "starts each")
    for name, values in r.idle_rss.items():
        print(f"  {name:10} {spread(values, 'MiB', scale=1, width=6, digits=0)}")
    print(f"\nctr run --rm busybox /bin/true, {r.runs} runs each")
    for name, values in r.times.items():
        print(f"  {name:10} {spread(values, width=6, digits=0)}")
    ratio = median(r.times["berthd"]) / median(r.times["containerd"])
    print(f"  ratio berthd/containerd: {ratio:.2f}")
    print(f"\n{r.containers} running containers (sleep)")
    for name, m in r.mem.items():
        print(f"  {name:26} shim processes {m['shims']:.0f}: PSS "
              f"{m['pss_per_container']:.1f} MiB per container "
              f"(RSS {m['rss_per_container']:.1f}); daemon RSS {m['daemon_rss']:.0f} MiB, "
              f"PSS {m['daemon_pss']:.0f} MiB")
    for name in ("berthd", PER_CONTAINER):
        ratio = r.mem[name]["pss_per_container"] / r.mem["containerd"]["pss_per_container"]
        print(f"  ratio shim PSS per container {name}/containerd: {ratio:.2f}")


def rows(r: Results) -> list[Row]:
    """The summary rows: start latency (ms), idle and loaded daemon memory, shim memory (MiB;
    the memory figures are one sample per daemon, measured once in the run)."""
    def mem_row(name: str, key: str, berthd: str = "berthd", target: str = MEMORY) -> Row:
        return Row(name, "MiB", [r.mem["containerd"][key]], [r.mem[berthd][key]], target)

    n = r.containers
    return [
        Row("ctr run --rm busybox /bin/true", "ms", [t * 1000 for t in r.times["containerd"]],
            [t * 1000 for t in r.times["berthd"]], "≤ 1.0"),
        Row("daemon RSS idle (fresh, after ctr version)", "MiB", r.idle_rss["containerd"],
            r.idle_rss["berthd"], MEMORY),
        mem_row(f"shim PSS per container ({n} containers)", "pss_per_container"),
        mem_row(f"shim RSS per container ({n} containers)", "rss_per_container", target=""),
        mem_row(f"shim PSS per container, shim per container ({n})", "pss_per_container",
                berthd=PER_CONTAINER, target=""),
        mem_row(f"daemon RSS with {n} containers", "daemon_rss"),
        mem_row(f"daemon PSS with {n} containers", "daemon_pss"),
    ]


def collect(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark with these command-line arguments, print its report, return its rows."""
    return summary.collect(argv, parse, measure, report, rows)


def main(argv: Sequence[str] | None = None) -> int:
    collect(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
