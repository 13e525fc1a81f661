"""CRI streaming benchmarks: berthd's streaming server beside containerd 1.6.20's, in the same run.

    .venv/bin/python bench/streaming.py [--runs 20] [--megabytes 64]

1. **Exec round trip** — ``kubectl exec POD -- true`` through a stub API server that relays to
   the runtime's CRI Exec URL (as a kubelet does), ``--runs`` times per daemon, alternating;
   Debian's kubectl 1.20 (SPDY) on both, and ``/usr/bin/kubectl`` where present (WebSocket
   first: berthd takes it, containerd refuses and the client falls back to SPDY).
2. **Port-forward throughput** — ``kubectl port-forward`` to a pod serving a ``--megabytes``
   file over HTTP; the file fetched through the forwarded port, three times per daemon; MB/s.

Prints medians with min and max, and the ratios berthd/containerd (time: lower is better;
throughput: higher is better). Needs root; everything started here is stopped afterwards.

`collect(argv)` runs it as `main` does and also returns the figures as `summary.Row`s (for
`bench/all.py`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

import images  # noqa: E402
import summary  # noqa: E402
from cri import bench_daemons  # noqa: E402
from cri_fixtures import CRI, container_config, pod_config  # noqa: E402
from kube_stub import Container, KubeStub, kubectl_binaries  # noqa: E402
from reference_containerd import remove_tree  # noqa: E402
from registry import Registry  # noqa: E402
from summary import Row, median, spread  # noqa: E402

PORT = 8080


def serve(c: CRI, ref: str, logs: Path, megabytes: int) -> tuple[str, str]:
    pod = pod_config(f"bench-{c.name}", logs)
    pod_id = c.run_pod(pod)
    cid = c.run(pod_id, container_config(
        "web", ref, f"mkdir -p /www && head -c {megabytes << 20} /dev/zero > /www/big && "
                    f"exec httpd -f -p {PORT} -h /www"), pod)
    return pod_id, cid


def fetch(port: int, deadline: float = 30) -> int:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/big", timeout=60) as reply:
                return len(reply.read())
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@dataclass
class Results:
    """What one run measured: exec times in seconds, throughput in MB/s."""

    runs: int
    megabytes: int
    exec_times: dict[str, dict[str, list[float]]]  # kubectl version -> daemon -> times
    throughput: dict[str, list[float]]  # daemon -> MB/s of each fetch


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    if min(args.runs, args.megabytes) < 1:
        parser.error("--runs and --megabytes must be at least 1")
    return args


def measure(args: argparse.Namespace) -> Results:
    work = Path(tempfile.mkdtemp(prefix="berth-streaming-bench-"))
    logs = work / "logs"
    logs.mkdir()
    kubectls = kubectl_binaries()
    exec_times: dict[str, dict[str, list[float]]] = {}
    throughput: dict[str, list[float]] = {}
    try:
        with Registry() as registry, KubeStub() as kube:
            pause = images.pause(registry, work / "layouts")
            ref = images.busybox(registry, work / "layouts").ref
            with bench_daemons(work, pause, net=8) as daemons:
                for name, c in daemons.items():
                    c.pull(ref)
                    pod_id, cid = serve(c, ref, logs, args.megabytes)
                    kube.add_pod(name, c, Container("web", cid), sandbox_id=pod_id)
                for version, binary in kubectls.items():
                    runs = exec_times[version] = {name: [] for name in daemons}
                    for name in daemons:  # warm up (discovery cache, first connection)
                        kube.kubectl(binary, "exec", name, "--", "true")
                    for i in range(args.runs):
                        for name in (list(daemons) if i % 2 == 0 else reversed(list(daemons))):
                            started = time.monotonic()
                            done = kube.kubectl(binary, "exec", name, "--", "true")
                            runs[name].append(time.monotonic() - started)
                            if done.returncode != 0:
                                raise RuntimeError(f"kubectl {version} exec on {name} failed "
                                                   f"({done.returncode}): {done.stderr!r}")
                binary = kubectls[min(kubectls)]
                for name in daemons:
                    throughput[name] = []
                    with kube.background(binary, "port-forward", name, f":{PORT}") as k:
                        found = k.stdout.wait_for(re.compile(
                            rb"Forwarding from 127\.0\.0\.1:(\d+) -> %d\n" % PORT), 30)
                        local = int(found.group(1))
                        fetch(local)  # warm up
                        for _ in range(3):
                            started = time.monotonic()
                            size = fetch(local)
                            throughput[name].append(size / (time.monotonic() - started) / 1e6)
    finally:
        remove_tree(work)
    return Results(args.runs, args.megabytes, exec_times, throughput)


def report(r: Results) -> None:
    for version, runs in r.exec_times.items():
        print(f"\nkubectl {version} exec POD -- true, {r.runs} runs each")
        for name, values in runs.items():
            print(f"  {name:10} {spread(values, width=7)}")
        ratio = median(runs["berthd"]) / median(runs["containerd"])
        print(f"  ratio berthd/containerd: {ratio:.2f}")
    print(f"\nport-forward, a {r.megabytes} MiB file over HTTP, 3 fetches each")
    for name, values in r.throughput.items():
        print(f"  {name:10} {spread(values, 'MB/s', scale=1, width=7)}")
    ratio = median(r.throughput["berthd"]) / median(r.throughput["containerd"])
    print(f"  ratio berthd/containerd (throughput): {ratio:.2f}")


def rows(r: Results) -> list[Row]:
    """The summary rows: exec times (ms) per kubectl, the oldest (SPDY on both daemons) held to
    the target; port-forward throughput (MB/s, higher is better)."""
    out = []
    for version, runs in sorted(r.exec_times.items()):
        target = "≤ 1.0" if version == min(r.exec_times) else ""
        out.append(Row(f"kubectl {version} exec -- true", "ms",
                       [v * 1000 for v in runs["containerd"]],
                       [v * 1000 for v in runs["berthd"]], target))
    out.append(Row(f"port-forward throughput ({r.megabytes} MiB)", "MB/s",
                   r.throughput["containerd"], r.throughput["berthd"], "≥ 1.0"))
    return out


def collect(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark with these command-line arguments, print its report, return its rows."""
    return summary.collect(argv, parse, measure, report, rows)


def main(argv: Sequence[str] | None = None) -> int:
    collect(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
