"""CRI benchmarks: berthd's CRI beside containerd 1.6.20's CRI plugin, measured in the same run.

    .venv/bin/python bench/cri.py [--runs 20] [--pods 10]

1. **Pod start** — RunPodSandbox (pause container, network namespace, CNI bridge), then
   CreateContainer + StartContainer of a busybox container in it, ``--runs`` times on each daemon
   (alternating), through the same Python gRPC client; medians, min and max, and the ratio
   berthd/containerd of each step. Each pod is stopped and removed between runs (not timed).
2. **Memory per running pod** — ``--pods`` pods, each with one container running ``sleep``, on
   each daemon: the shims' PSS (containerd: its Go shim, one per pod; berthd: Berth's shims and
   their fork server) plus the daemon's own PSS growth, per pod.

Both daemons use the same pause image (built from Debian's catatonit), busybox from a loopback
registry, and a bridge + host-local CNI network of their own. Needs root; everything made here is
removed afterwards.

`collect(argv)` runs it as `main` does and also returns the figures as `summary.Row`s (for
`bench/all.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import images  # noqa: E402
import summary  # noqa: E402
from cri_fixtures import CRI, container_config, cri_daemons, pod_config  # noqa: E402
from processes import pids_with_argument, pids_with_argument_pair  # noqa: E402
from pull import kill_leftover_shims  # noqa: E402
from reference_containerd import remove_tree  # noqa: E402
from registry import Registry  # noqa: E402
from run import memory_kib  # noqa: E402
from summary import Row, median, spread  # noqa: E402

from berth.api.cri.runtime.v1 import api_pb2 as pb  # noqa: E402


@contextlib.contextmanager
def bench_daemons(work: Path, pause: str, net: int) -> Iterator[dict[str, CRI]]:
    """``cri_daemons`` (berthd's files under ``work/berthd``), and once both daemons have
    stopped, any shim berthd left behind killed (containerd's own are reaped on its stop)."""
    try:
        with cri_daemons(work, pause, net=net, log_level="info") as daemons:
            yield daemons
    finally:
        kill_leftover_shims(str(work / "berthd" / "berthd.sock"), "berthd")


def shims(c: CRI) -> list[int]:
    pids = pids_with_argument_pair("-address", c.address)
    if c.name == "berthd":
        pids += pids_with_argument("--berth-shim-zygote")
    return pids


def start_pod(c: CRI, ref: str, logs: Path, i: int) -> tuple[float, float, str]:
    pod = pod_config(f"bench-{i}", logs)
    t0 = time.monotonic()
    pod_id = c.run_pod(pod)
    t1 = time.monotonic()
    c.run(pod_id, container_config("app", ref, "exec sleep 3600"), pod)
    t2 = time.monotonic()
    return t1 - t0, t2 - t1, pod_id


def remove_pod(c: CRI, pod_id: str) -> None:
    c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def memory_per_pod(c: CRI, ref: str, logs: Path, count: int) -> dict[str, float]:
    base_pss = memory_kib(c.pid)[1]
    pods = []
    try:
        for i in range(count):
            pods.append(start_pod(c, ref, logs, 1000 + i)[2])
        time.sleep(2)  # let the shims settle
        pss = [memory_kib(p)[1] for p in shims(c)]
        d_rss, d_pss = memory_kib(c.pid)
        return {"shims": len(pss), "shim_pss": sum(pss) / count / 1024,
                "daemon_growth": max(0, d_pss - base_pss) / count / 1024,
                "per_pod": (sum(pss) + max(0, d_pss - base_pss)) / count / 1024,
                "daemon_rss": d_rss / 1024}
    finally:
        for pod_id in pods:
            remove_pod(c, pod_id)


@dataclass
class Results:
    """What one run measured: step times in seconds, memory in MiB."""

    runs: int
    pods: int
    times: dict[str, dict[str, list[float]]]  # daemon -> step ("pod", "container") -> times
    mem: dict[str, dict[str, float]]  # daemon -> memory_per_pod()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pods", type=int, default=10)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    if min(args.runs, args.pods) < 1:
        parser.error("--runs and --pods must be at least 1")
    return args


def measure(args: argparse.Namespace) -> Results:
    work = Path(tempfile.mkdtemp(prefix="berth-cri-bench-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        with Registry() as registry:
            pause = images.pause(registry, work / "layouts")
            ref = images.busybox(registry, work / "layouts").ref
            with bench_daemons(work, pause, net=9) as daemons:
                for c in daemons.values():
                    c.pull(ref)
                    remove_pod(c, start_pod(c, ref, logs, 999)[2])  # warm up
                runs: dict[str, dict[str, list[float]]] = {
                    name: {"pod": [], "container": []} for name in daemons}
                for i in range(args.runs):
                    order = list(daemons) if i % 2 == 0 else list(reversed(daemons))
                    for name in order:
                        pod_t, ctr_t, pod_id = start_pod(daemons[name], ref, logs, i)
                        runs[name]["pod"].append(pod_t)
                        runs[name]["container"].append(ctr_t)
                        remove_pod(daemons[name], pod_id)
                mem = {name: memory_per_pod(c, ref, logs, args.pods)
                       for name, c in daemons.items()}
    finally:
        remove_tree(work)
    return Results(args.runs, args.pods, runs, mem)


STEPS = (("pod", "RunPodSandbox"), ("container", "Create+Start container"))


def totals(r: Results) -> dict[str, list[float]]:
    """Per daemon, each run's pod + container time."""
    return {name: [a + b for a, b in zip(t["pod"], t["container"], strict=True)]
            for name, t in r.times.items()}


def report(r: Results) -> None:
    print(f"\nCRI pod start, {r.runs} runs each")
    for step, title in STEPS:
        print(f"  {title}")
        for name in r.times:
            print(f"    {name:10} {spread(r.times[name][step])}")
        ratio = median(r.times["berthd"][step]) / median(r.times["containerd"][step])
        print(f"    ratio berthd/containerd: {ratio:.2f}")
    total = totals(r)
    print(f"  pod + container: ratio berthd/containerd "
          f"{median(total['berthd']) / median(total['containerd']):.2f}")
    print(f"\n{r.pods} running pods (pause + one sleeping container each)")
    for name, m in r.mem.items():
        print(f"  {name:10} {m['per_pod']:.1f} MiB per pod: shims {m['shim_pss']:.1f} MiB PSS "
              f"({m['shims']:.0f} processes), daemon growth {m['daemon_growth']:.1f} MiB; "
              f"daemon RSS {m['daemon_rss']:.0f} MiB")
    print(f"  ratio per pod berthd/containerd: "
          f"{r.mem['berthd']['per_pod'] / r.mem['containerd']['per_pod']:.2f}")


def rows(r: Results) -> list[Row]:
    """The summary rows: each step's times (ms) and the memory per running pod (MiB, one
    sample per daemon)."""
    def ms(values: list[float]) -> list[float]:
        return [v * 1000 for v in values]

    out = [Row(f"CRI {title}", "ms", ms(r.times["containerd"][step]),
               ms(r.times["berthd"][step]), "≤ 1.0") for step, title in STEPS]
    total = totals(r)
    out.append(Row("CRI pod + container", "ms", ms(total["containerd"]), ms(total["berthd"])))
    out.append(Row(f"CRI memory per running pod ({r.pods} pods)", "MiB",
                   [r.mem["containerd"]["per_pod"]], [r.mem["berthd"]["per_pod"]],
                   "≤ 1 (memory)"))
    return out


def collect(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark with these command-line arguments, print its report, return its rows."""
    return summary.collect(argv, parse, measure, report, rows)


def main(argv: Sequence[str] | None = None) -> int:
    collect(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
