"""Growth benchmarks: how cost grows with the amount of work, berthd beside containerd.

    .venv/bin/python bench/growth.py [--small 100] [--large 1000] [--runs 5]
                                     [--start-rounds 2] [--tasks 100]

Both daemons run privately in the same run (the real containerd 1.6.20 as the reference, and
berthd), and the real Debian `ctr --address SOCK` is the client for both. Every figure is a
median with its min and max, and the ratio is berthd/containerd of the medians.

1. **10 pulls at once** — ten distinct small images (the busybox layer plus a distinct small
   layer each) pushed to a loopback registry; `ctr images pull --plain-http` of all ten started
   together, timed until the last one ends. Each of the `--runs` rounds uses a freshly started
   pair of daemons with empty roots (warmed up by pulling an unrelated one-layer image), so
   nothing is already stored; the daemons alternate which goes first.
2. **100 containers, 10 at a time** — `ctr run -d busybox sleep 3600`, `--tasks` containers
   through a pool of 10 concurrent `ctr` clients, total wall time per daemon, `--start-rounds`
   rounds (alternating daemons). All but the last round are removed again (kill, delete task,
   delete container: timed too, also 10 at a time); the last round's tasks stay running for 3.
3. **Listing as the store grows** — at `--small` and then `--large` stored items, on each daemon:
   `ctr containers ls` (N containers), `ctr images ls` (N image records + busybox) in one
   namespace, and `ctr tasks ls` in the namespace of the running tasks (`--tasks` running, plus
   N stored containers without tasks). Containers and image records are created quickly with a
   Python gRPC client (containers.v1 Create; images.v1 Create, every record pointing at the
   pulled busybox manifest under a distinct name), not by `ctr`. Each listing runs `--runs`
   times per size (after one untimed run), alternating daemons. For each daemon the growth
   factor time(large)/time(small) is printed and flagged when it is worse than linear in the
   size ratio large/small.

At the end one table sums it all up. Needs root. Only loopback is used; only processes started
here are signalled, by PID; every task, container and image made here is deleted, both daemons
are stopped and the temporary directory (``berth-growth-bench-*``) is removed, however the run
ends (Ctrl-C, SIGTERM and SIGHUP included).

`collect(argv)` runs it as `main` does and also returns the summary table's rows as
`summary.Row`s (for `bench/all.py`); a growth factor's row is held to linear growth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import images  # noqa: E402
from processes import loopback_env  # noqa: E402
from pull import Berthd, interrupts_as_exceptions, kill_leftover_shims  # noqa: E402
from reference_containerd import ReferenceContainerd, remove_tree  # noqa: E402
from registry import Registry  # noqa: E402
from summary import Row, median, print_table, spread_seconds  # noqa: E402

from berth.api.services.containers.v1 import containers_pb2, containers_pb2_grpc  # noqa: E402
from berth.api.services.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402
from berth.api.types import descriptor_pb2  # noqa: E402

CTR = "/usr/bin/ctr"
RUNC = "/usr/sbin/runc"
CGROUP_ROOT = Path("/sys/fs/cgroup")
NAMES = ("containerd", "berthd")
RUNTIME = "io.containerd.runc.v2"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PULLS = 10
CONCURRENCY = 10
GRPC_WINDOW = 32  # gRPC creates in flight at once
if TYPE_CHECKING:  # grpc's class is generic only in its stubs
    Rpc = grpc.UnaryUnaryMultiCallable[Any, Any]
# Where each daemon's shims keep runc state (one directory per namespace below).
RUNC_ROOTS = {"containerd": "/run/containerd/runc", "berthd": "/run/berth/runc"}
# Unique namespaces: runc state directories are shared with anything else running here.
NS_STORE = f"growth-store-{os.getpid()}"
NS_RUN = f"growth-run-{os.getpid()}"
LISTINGS = (("containers ls", NS_STORE, ("containers", "ls")),
            ("images ls", NS_STORE, ("images", "ls")),
            ("tasks ls", NS_RUN, ("tasks", "ls")))
SPEC = json.dumps({
    "ociVersion": "1.0.2-dev",
    "process": {"user": {"uid": 0, "gid": 0}, "args": ["sleep", "3600"], "cwd": "/",
                "env": [f"PATH={images.DEFAULT_PATH}"]},
    "root": {"path": "rootfs"},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                             {"type": "mount"}]},
}).encode()


def log(message: str) -> None:
    print(f"[growth {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- ctr ------------------------------------------------------------------------------------


def ctr(address: str, namespace: str, *args: str,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run the real ctr against ``address`` in ``namespace``; RuntimeError with its output on
    failure when ``check``."""
    proc = subprocess.run([CTR, "--address", address, "--namespace", namespace, *args],
                          capture_output=True, check=False, timeout=600, env=loopback_env())
    if check and proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} on {address}: exit {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


def timed_ctr(address: str, namespace: str, *args: str) -> tuple[float, bytes]:
    started = time.monotonic()
    out = ctr(address, namespace, *args).stdout
    return time.monotonic() - started, out


def pooled(jobs: Iterable[Callable[[], object]], workers: int = CONCURRENCY) -> float:
    """Run ``jobs`` through ``workers`` threads; the wall time, once every job has ended
    (the first error is raised then)."""
    started = time.monotonic()
    pool = ThreadPoolExecutor(workers)
    try:
        futures = [pool.submit(job) for job in jobs]
        errors = [f.exception() for f in futures]
    finally:  # on an interruption, jobs not yet started never start
        pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.monotonic() - started
    for error in errors:
        if error is not None:
            raise error
    return elapsed


# -- the daemons ----------------------------------------------------------------------------


@dataclass
class Daemon:
    """One contender: its socket, and what was made on it (for the clean-up)."""

    name: str
    address: str
    running: dict[str, set[str]] = field(default_factory=dict)  # namespace -> ctr run ids
    stored: dict[str, set[str]] = field(default_factory=dict)  # namespace -> gRPC containers
    records: dict[str, set[str]] = field(default_factory=dict)  # namespace -> gRPC images


def start_daemon(name: str, base: Path) -> ReferenceContainerd | Berthd:
    service: ReferenceContainerd | Berthd = (
        ReferenceContainerd(base) if name == "containerd" else Berthd(base))
    service.start()
    return service


def stop_daemon(name: str, service: ReferenceContainerd | Berthd, address: str,
                namespaces: Sequence[str]) -> None:
    """Stop the daemon we started; then, as a safety net, SIGKILL any shim of ours still alive
    (by its ``-address`` argument) with its children and force-delete their runc state."""
    try:
        service.stop()
    finally:
        reap_shims(name, address, namespaces)


def reap_shims(name: str, address: str, namespaces: Sequence[str]) -> None:
    kill_leftover_shims(address, name)
    for namespace in namespaces:  # our own namespaces: only our containers are there
        root = Path(RUNC_ROOTS[name]) / namespace
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            subprocess.run([RUNC, "--root", str(root), "delete", "--force", entry.name],
                           capture_output=True, check=False)
        with contextlib.suppress(OSError):
            root.rmdir()  # the shims leave the namespace's directory behind, empty


def remove_namespace_cgroups(namespaces: Sequence[str]) -> None:
    """``ctr run`` puts a container in cgroup ``/<namespace>/<id>``; runc removes the
    container's, not the namespace's. rmdir ours (in each v1 hierarchy, or under a v2 root) if
    it is empty: rmdir fails on a cgroup that still holds anything."""
    hierarchies = [CGROUP_ROOT, *(h for h in CGROUP_ROOT.iterdir() if h.is_dir())]
    for hierarchy in hierarchies:
        for namespace in namespaces:
            with contextlib.suppress(OSError):
                (hierarchy / namespace).rmdir()


# -- gRPC: many containers and image records, fast --------------------------------------------


class Api:
    """containers.v1 and images.v1 stubs over one channel to a daemon's socket."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def target(self, namespace: str, name: str) -> descriptor_pb2.Descriptor:
        request = images_pb2.GetImageRequest(name=name)
        target: descriptor_pb2.Descriptor = self.images.Get(
            request, metadata=md(namespace), timeout=60).image.target
        return target

    def create_containers(self, namespace: str, ids: Sequence[str], image: str) -> None:
        spec = {"type_url": SPEC_TYPE_URL, "value": SPEC}
        requests = [containers_pb2.CreateContainerRequest(container=containers_pb2.Container(
            id=cid, image=image, runtime=containers_pb2.Container.Runtime(name=RUNTIME),
            spec=spec, labels={"bench": "growth"})) for cid in ids]
        windowed(self.containers.Create, requests, namespace)

    def create_images(self, namespace: str, names: Sequence[str],
                      target: descriptor_pb2.Descriptor) -> None:
        requests = [images_pb2.CreateImageRequest(image=images_pb2.Image(
            name=name, target=target, labels={"bench": "growth"})) for name in names]
        windowed(self.images.Create, requests, namespace)

    def delete_containers(self, namespace: str, ids: Iterable[str]) -> set[str]:
        """Delete; return the ids deleted (or already gone)."""
        requests = {cid: containers_pb2.DeleteContainerRequest(id=cid) for cid in ids}
        return forgiving(self.containers.Delete, requests, namespace)

    def delete_images(self, namespace: str, names: Iterable[str]) -> set[str]:
        requests = {name: images_pb2.DeleteImageRequest(name=name) for name in names}
        return forgiving(self.images.Delete, requests, namespace)


def md(namespace: str) -> tuple[tuple[str, str]]:
    return (("containerd-namespace", namespace),)


def windowed(call: Rpc, requests: Sequence[object],
             namespace: str) -> None:
    """Send ``requests`` with at most GRPC_WINDOW in flight; raise the first failure."""
    for start in range(0, len(requests), GRPC_WINDOW):
        futures = [call.future(r, metadata=md(namespace), timeout=120)
                   for r in requests[start:start + GRPC_WINDOW]]
        for future in futures:
            future.result()


def forgiving(call: Rpc, requests: Mapping[str, object],
              namespace: str) -> set[str]:
    """Send each request; the keys whose call succeeded or found nothing to delete."""
    done = set()
    for key, request in requests.items():
        try:
            call(request, metadata=md(namespace), timeout=60)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                continue
        done.add(key)
    return done


# -- statistics -----------------------------------------------------------------------------


def ratio(results: dict[str, list[float]]) -> float:
    return median(results["berthd"]) / median(results["containerd"])


def alternate(round_index: int) -> tuple[str, ...]:
    return NAMES if round_index % 2 == 0 else tuple(reversed(NAMES))


def report_times(title: str, results: dict[str, list[float]]) -> None:
    print(f"\n{title}", flush=True)
    for name in NAMES:
        print(f"  {name:10} {spread_seconds(results[name])}")
    print(f"  ratio berthd/containerd: {ratio(results):.2f}", flush=True)


# -- 1. ten pulls at once -------------------------------------------------------------------


def push_pull_images(registry: Registry, base: images.ImageInfo) -> tuple[list[str], str]:
    """Ten images (busybox + a distinct small layer each) and a one-layer warm-up image."""
    refs = []
    for k in range(PULLS):
        data = f"image {k}\n".encode() * (4096 + 512 * k)
        refs.append(images.push_derived(registry, base, f"growth/pull-{k}:v1",
                                        files={f"/data/pull-{k}.txt": data}))
    warm = images.push_layers(registry, "growth/warm:v1",
                              [images.make_tar({"/warm.txt": b"warm\n" * 1000})])
    return refs, warm


def pull_round(name: str, base: Path, refs: Sequence[str], warm: str) -> float:
    """A fresh daemon: warm up, time the concurrent pulls, stop it and delete its root."""
    service = start_daemon(name, base)
    try:
        ctr(service.address, "default", "images", "pull", "--plain-http", warm)
        elapsed = pooled([partial(ctr, service.address, "default", "images", "pull",
                                  "--plain-http", ref) for ref in refs], workers=len(refs))
        listed = ctr(service.address, "default", "images", "ls", "-q").stdout.decode().split()
        missing = set(refs) - set(listed)
        if missing:
            raise RuntimeError(f"{name}: pulled images missing: {sorted(missing)}")
        return elapsed
    finally:
        stop_daemon(name, service, service.address, [])  # no containers: no runc state


def measure_pulls(work: Path, refs: Sequence[str], warm: str,
                  runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in NAMES}
    for i in range(runs):
        for name in alternate(i):
            results[name].append(pull_round(name, work / f"pull-{name}-{i}", refs, warm))
        log(f"pull round {i + 1}/{runs}: " + ", ".join(
            f"{n} {results[n][-1]:.2f} s" for n in NAMES))
    return results


# -- 2. many containers started 10 at a time -------------------------------------------------


def start_containers(d: Daemon, ref: str, ids: Sequence[str]) -> float:
    mine = d.running.setdefault(NS_RUN, set())
    warm = f"warm-{ids[0]}"
    mine.add(warm)
    ctr(d.address, NS_RUN, "run", "--rm", ref, warm, "/bin/true")  # untimed
    mine.discard(warm)

    def run(cid: str) -> None:
        mine.add(cid)
        ctr(d.address, NS_RUN, "run", "-d", ref, cid, "sleep", "3600")

    return pooled([partial(run, cid) for cid in ids])


def remove_running(d: Daemon, namespace: str, ids: Iterable[str]) -> float:
    """Kill every task (SIGKILL), then delete the tasks and containers, 10 at a time; what is
    gone is forgotten. The wall time of both phases."""
    ids = sorted(ids)
    started = time.monotonic()
    pooled([partial(ctr, d.address, namespace, "tasks", "kill", "-s", "KILL", cid, check=False)
            for cid in ids])
    time.sleep(0.5)  # the exits reach the daemon

    def delete(cid: str) -> None:
        ctr(d.address, namespace, "tasks", "rm", "-f", cid, check=False)
        ctr(d.address, namespace, "containers", "rm", cid, check=False)

    pooled([partial(delete, cid) for cid in ids])
    elapsed = time.monotonic() - started
    left = set(ctr(d.address, namespace, "containers", "ls", "-q").stdout.decode().split())
    d.running[namespace] = d.running.get(namespace, set()) & left
    if set(ids) & left:
        raise RuntimeError(f"{d.name}: containers not removed: {sorted(set(ids) & left)[:10]}")
    return elapsed


def measure_starts(daemons: dict[str, Daemon], ref: str, count: int,
                   rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Start ``count`` containers per round; remove all but the last round's (timed too)."""
    starts: dict[str, list[float]] = {name: [] for name in NAMES}
    removals: dict[str, list[float]] = {name: [] for name in NAMES}
    for r in range(rounds):
        for name in alternate(r):
            d = daemons[name]
            ids = [f"run-{r}-{i:03d}" for i in range(count)]
            starts[name].append(start_containers(d, ref, ids))
            if r < rounds - 1:
                removals[name].append(remove_running(d, NS_RUN, ids))
        log(f"start round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {starts[n][-1]:.2f} s" for n in NAMES))
    return starts, removals


# -- 3. listings as the store grows ---------------------------------------------------------


def grow(d: Daemon, api: Api, size: int, ref: str, host: str) -> None:
    """Bring the stored containers (both namespaces) and image records up to ``size``."""
    target = api.target(NS_STORE, ref)
    for namespace in (NS_STORE, NS_RUN):
        have = d.stored.setdefault(namespace, set())
        new = [f"stored-{i:05d}" for i in range(len(have), size)]
        api.create_containers(namespace, new, ref)
        have.update(new)
    have = d.records.setdefault(NS_STORE, set())
    names = [f"{host}/growth/record-{i:05d}:v1" for i in range(len(have), size)]
    api.create_images(NS_STORE, names, target)
    have.update(names)


def expected_rows(label: str, size: int, tasks: int) -> int:
    return {"containers ls": size, "images ls": size + 1, "tasks ls": tasks}[label]


def measure_listings(daemons: dict[str, Daemon], apis: dict[str, Api], size: int, ref: str,
                     host: str, runs: int, tasks: int) -> dict[str, dict[str, list[float]]]:
    for name in NAMES:
        started = time.monotonic()
        grow(daemons[name], apis[name], size, ref, host)
        log(f"{name}: {size} containers x2 and image records stored "
            f"({time.monotonic() - started:.1f} s through gRPC)")
    results: dict[str, dict[str, list[float]]] = {}
    for label, namespace, args in LISTINGS:
        results[label] = {name: [] for name in NAMES}
        for name in NAMES:  # untimed once, and check that everything is listed
            rows = len(ctr(daemons[name].address, namespace, *args).stdout.splitlines()) - 1
            if rows != expected_rows(label, size, tasks):
                raise RuntimeError(f"{name}: ctr {label} listed {rows} rows, expected "
                                   f"{expected_rows(label, size, tasks)}")
        for i in range(runs):
            for name in alternate(i):
                elapsed, _ = timed_ctr(daemons[name].address, namespace, *args)
                results[label][name].append(elapsed)
        log(f"{label} at {size}: " + ", ".join(
            f"{n} {median(results[label][n]) * 1000:.0f} ms" for n in NAMES))
    return results


# -- clean-up -------------------------------------------------------------------------------


def clean_daemon(d: Daemon) -> None:
    """Delete every task, container and image record made on ``d`` (best effort: the daemon's
    stop and its shims' reaping follow anyway)."""
    for namespace, ids in list(d.running.items()):
        if ids:
            try:
                remove_running(d, namespace, ids)
            except (RuntimeError, subprocess.SubprocessError, OSError) as error:
                log(f"{d.name}: removing running containers: {error}")
    api = Api(d.address)
    try:
        for namespace, ids in d.stored.items():
            ids -= api.delete_containers(namespace, ids)
        for namespace, names in d.records.items():
            names -= api.delete_images(namespace, names)
    finally:
        api.close()


def clean_daemon_logged(d: Daemon) -> None:
    try:
        clean_daemon(d)
    except (RuntimeError, grpc.RpcError, subprocess.SubprocessError, OSError) as error:
        log(f"{d.name}: clean-up: {error}")


@contextlib.contextmanager
def main_daemons(work: Path) -> Iterator[dict[str, Daemon]]:
    """Both long-lived daemons; on the way out everything made on them is deleted and they are
    stopped, whatever happened (every step runs even if an earlier one failed)."""
    with contextlib.ExitStack() as stack:
        stack.callback(remove_namespace_cgroups, [NS_STORE, NS_RUN])
        daemons = {}
        for name in NAMES:
            service = start_daemon(name, work / name)
            d = Daemon(name, service.address)
            stack.callback(stop_daemon, name, service, d.address, [NS_STORE, NS_RUN])
            stack.callback(clean_daemon_logged, d)
            daemons[name] = d
        yield daemons


# -- output ---------------------------------------------------------------------------------


def print_growth(listings: dict[int, dict[str, dict[str, list[float]]]], small: int,
                 large: int) -> list[str]:
    """The growth table; returns the flags raised."""
    size_ratio = large / small
    flags = []
    print(f"\nGrowth from {small} to {large} stored (size ratio {size_ratio:.1f}x; "
          f"linear growth would be at most {size_ratio:.1f}x)")
    print(f"  {'step':14} {'daemon':10} {'at ' + str(small):>10} {'at ' + str(large):>10} "
          f"{'growth':>8}")
    for label, _, _ in LISTINGS:
        for name in NAMES:
            t_small = median(listings[small][label][name])
            t_large = median(listings[large][label][name])
            growth = t_large / t_small
            mark = ""
            if growth > size_ratio:
                mark = "  WORSE THAN LINEAR"
                flags.append(f"{name} {label}: {growth:.1f}x for {size_ratio:.1f}x the size")
            print(f"  {label:14} {name:10} {t_small * 1000:8.1f}ms {t_large * 1000:8.1f}ms "
                  f"{growth:7.2f}x{mark}")
    return flags


def growth_samples(small: Sequence[float], large: Sequence[float]) -> list[float]:
    """Each large-size time over the small size's median: their median is the growth factor
    median(large)/median(small), and their min and max carry the large size's noise."""
    reference = median(small)
    return [t / reference for t in large]


def rows(r: Results) -> list[Row]:
    """The summary rows: times in ms; growth factors (unit x) held to linear growth."""
    def ms(results: dict[str, list[float]]) -> tuple[list[float], list[float]]:
        return ([t * 1000 for t in results["containerd"]], [t * 1000 for t in results["berthd"]])

    out = [Row(f"{PULLS} pulls at once", "ms", *ms(r.pulls)),
           Row(f"{r.tasks} ctr run -d, {CONCURRENCY} at a time", "ms", *ms(r.starts)),
           Row(f"{r.tasks} kill + delete, {CONCURRENCY} at a time", "ms", *ms(r.removals))]
    size_ratio = r.large / r.small
    for label, _, _ in LISTINGS:
        extra = f", {r.tasks} tasks" if label == "tasks ls" else ""
        for size in (r.small, r.large):
            out.append(Row(f"ctr {label}, {size} stored{extra}", "ms",
                           *ms(r.listings[size][label])))
        small, large = r.listings[r.small][label], r.listings[r.large][label]
        out.append(Row(f"ctr {label} growth {r.small} -> {r.large}", "x",
                       growth_samples(small["containerd"], large["containerd"]),
                       growth_samples(small["berthd"], large["berthd"]),
                       f"berthd ≤ {size_ratio:.1f} (linear)"))
    return out


# -- main -----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100, help="stored items, first size")
    parser.add_argument("--large", type=int, default=1000, help="stored items, second size")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed runs of each listing per size, and rounds of the pulls")
    parser.add_argument("--start-rounds", type=int, default=2,
                        help="rounds of starting --tasks containers 10 at a time")
    parser.add_argument("--tasks", type=int, default=100, help="containers started per round")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if min(args.runs, args.start_rounds, args.tasks) < 1:
        parser.error("--runs, --start-rounds and --tasks must be at least 1")
    return args


@dataclass
class Results:
    """What one run measured, in seconds."""

    small: int
    large: int
    runs: int
    start_rounds: int
    tasks: int
    pulls: dict[str, list[float]]
    starts: dict[str, list[float]]
    removals: dict[str, list[float]]
    listings: dict[int, dict[str, dict[str, list[float]]]]  # size -> listing -> daemon -> times


def measure(args: argparse.Namespace) -> Results:
    work = Path(tempfile.mkdtemp(prefix="berth-growth-bench-"))
    try:
        with interrupts_as_exceptions(), Registry() as registry:
            log("building and pushing images")
            busybox = images.busybox(registry, work / "layouts")
            refs, warm = push_pull_images(registry, busybox)
            pulls = measure_pulls(work, refs, warm, args.runs)
            with main_daemons(work) as daemons:
                for d in daemons.values():
                    for namespace in (NS_STORE, NS_RUN):
                        ctr(d.address, namespace, "images", "pull", "--plain-http", busybox.ref)
                starts, removals = measure_starts(daemons, busybox.ref, args.tasks,
                                                  args.start_rounds)
                apis = {name: Api(d.address) for name, d in daemons.items()}
                try:
                    listings = {size: measure_listings(daemons, apis, size, busybox.ref,
                                                       registry.host, args.runs, args.tasks)
                                for size in (args.small, args.large)}
                finally:
                    for api in apis.values():
                        api.close()
                for name in alternate(args.start_rounds):
                    removals[name].append(remove_running(
                        daemons[name], NS_RUN, list(daemons[name].running.get(NS_RUN, ()))))
    finally:
        remove_tree(work)
    return Results(args.small, args.large, args.runs, args.start_rounds, args.tasks, pulls,
                   starts, removals, listings)


def report(r: Results) -> list[Row]:
    """Print the report (the summary table last); return the summary rows."""
    report_times(f"{PULLS} pulls of different images at once, {r.runs} rounds", r.pulls)
    report_times(f"{r.tasks} containers started ({CONCURRENCY} at a time), "
                 f"{r.start_rounds} rounds", r.starts)
    report_times(f"{r.tasks} containers killed and deleted ({CONCURRENCY} at a time)",
                 r.removals)
    flags = print_growth(r.listings, r.small, r.large)
    summary_rows = rows(r)
    print_table(summary_rows)
    print("\nWorse than linear: " + ("; ".join(flags) if flags else "none"))
    return summary_rows


def collect(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark with these command-line arguments, print its report, return its rows."""
    args = parse(argv)
    started = time.monotonic()
    summary_rows = report(measure(args))
    print(f"(whole benchmark: {time.monotonic() - started:.0f} s)")
    return summary_rows


def main(argv: Sequence[str] | None = None) -> int:
    collect(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
