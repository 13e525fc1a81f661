"""Container start benchmarks: berthd beside containerd, measured in the same run.

    .venv/bin/python bench/run.py [--runs 20] [--containers 30]

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
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import images  # noqa: E402
from processes import pids_with_argument, pids_with_argument_pair  # noqa: E402
from pull import Berthd  # noqa: E402
from reference_containerd import ReferenceContainerd, remove_tree  # noqa: E402
from registry import Registry  # noqa: E402

CTR = "/usr/bin/ctr"
PER_CONTAINER = "berthd, shim per container"
PER_CONTAINER_CONFIG = ('version = 2\n[plugins."io.containerd.runtime.v2.task"]\n'
                        '  shim_group = "container"\n')


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--containers", type=int, default=30)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    work = Path(tempfile.mkdtemp(prefix="berth-run-bench-"))
    try:
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
    print(f"\nctr run --rm busybox /bin/true, {args.runs} runs each")
    for name, values in times.items():
        print(f"  {name:10} median {statistics.median(values) * 1000:6.0f} ms  "
              f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})")
    ratio = statistics.median(times["berthd"]) / statistics.median(times["containerd"])
    print(f"  ratio berthd/containerd: {ratio:.2f}")
    print(f"\n{args.containers} running containers (sleep)")
    for name, m in mem.items():
        print(f"  {name:26} shim processes {m['shims']:.0f}: PSS "
              f"{m['pss_per_container']:.1f} MiB per container "
              f"(RSS {m['rss_per_container']:.1f}); daemon RSS {m['daemon_rss']:.0f} MiB, "
              f"PSS {m['daemon_pss']:.0f} MiB")
    for name in ("berthd", PER_CONTAINER):
        ratio = mem[name]["pss_per_container"] / mem["containerd"]["pss_per_container"]
        print(f"  ratio shim PSS per container {name}/containerd: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
