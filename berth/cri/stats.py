"""ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats, from cgroups (v1
and v2) as containerd 1.6.20's CRI reports them.

A container's numbers come from its task's statistics (the shim reads its cgroup): CPU time,
memory in use, the working set (in use minus inactive page cache), RSS and page faults; its
writable layer's usage from the snapshotter. A pod's CPU and memory come from its cgroup parent
(the pod-level cgroup the kubelet names: without one there is no pod-level cgroup, and the pod's
numbers are those of its pause container's cgroup), its network counters from ``eth0`` in its
network namespace, its process count from its pause task, and it lists its containers' stats.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Sequence

from berth import errdefs, namespaces
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri import NAMESPACE
from berth.cri.base import Core
from berth.cri.spec import cgroups_path
from berth.cri.store import Container, Sandbox, SandboxState
from berth.proxy.tasks import CgroupStats, cgroup_stats

CGROUP_ROOT = "/sys/fs/cgroup"


def _u64(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(0, value))


def _cpu(stats: CgroupStats, at: int) -> pb.CpuUsage:
    return pb.CpuUsage(timestamp=at, usage_core_nano_seconds=_u64(stats.cpu_ns),
                       usage_nano_cores=_u64(0))


def _memory(stats: CgroupStats, at: int) -> pb.MemoryUsage:
    working = stats.memory - stats.inactive_file if stats.inactive_file < stats.memory \
        else stats.memory
    limit = stats.limit
    available = limit - working if 0 < limit < (1 << 62) and limit > working else 0
    return pb.MemoryUsage(timestamp=at, working_set_bytes=_u64(working),
                          available_bytes=_u64(available), usage_bytes=_u64(stats.memory),
                          rss_bytes=_u64(stats.rss), page_faults=_u64(stats.page_faults),
                          major_page_faults=_u64(stats.major_page_faults))


def _read_int(path: str) -> int:
    with open(path) as f:
        text = f.read().strip()
    return 0 if text == "max" else int(text)


def _read_stat(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def cgroup_dir_stats(path: str) -> CgroupStats | None:
    """The numbers of the cgroup at ``path`` (relative to the hierarchy), read from its files;
    None when it does not exist."""
    rel = path.strip("/")
    try:
        if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):  # v2
            base = os.path.join(CGROUP_ROOT, rel)
            cpu = _read_stat(os.path.join(base, "cpu.stat"))
            mem = _read_stat(os.path.join(base, "memory.stat"))
            return CgroupStats(cpu.get("usage_usec", 0) * 1000,
                               _read_int(os.path.join(base, "memory.current")),
                               mem.get("inactive_file", 0),
                               _read_int(os.path.join(base, "memory.max")),
                               _read_int(os.path.join(base, "pids.current")),
                               mem.get("anon", 0), mem.get("pgfault", 0),
                               mem.get("pgmajfault", 0))
        memory = os.path.join(CGROUP_ROOT, "memory", rel)
        mem = _read_stat(os.path.join(memory, "memory.stat"))
        pids = os.path.join(CGROUP_ROOT, "pids", rel, "pids.current")
        return CgroupStats(_read_int(os.path.join(CGROUP_ROOT, "cpuacct", rel, "cpuacct.usage")),
                           _read_int(os.path.join(memory, "memory.usage_in_bytes")),
                           mem.get("total_inactive_file", 0),
                           _read_int(os.path.join(memory, "memory.limit_in_bytes")),
                           _read_int(pids) if os.path.exists(pids) else 0,
                           mem.get("total_rss", 0), mem.get("total_pgfault", 0),
                           mem.get("total_pgmajfault", 0))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise errdefs.Internal(f"cannot read the statistics of cgroup {path}: {err}") from None


def _interface(pid: int, name: str = "eth0") -> pb.NetworkInterfaceUsage | None:
    """``name``'s counters in the network namespace of process ``pid``."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return None
    for line in lines:
        iface, _, counters = line.partition(":")
        if iface.strip() == name:
            v = [int(x) for x in counters.split()]
            return pb.NetworkInterfaceUsage(name=name, rx_bytes=_u64(v[0]),
                                            rx_errors=_u64(v[2]), tx_bytes=_u64(v[8]),
                                            tx_errors=_u64(v[10]))
    return None


class Stats:
    def __init__(self, core: Core, fs_path: str) -> None:
        self.core = core
        self.fs_path = fs_path

    def _attributes(self, c: Container) -> pb.ContainerAttributes:
        return pb.ContainerAttributes(id=c.id, metadata=c.config.metadata,
                                      labels=c.config.labels, annotations=c.config.annotations)

    def _writable_layer(self, c: Container, at: int) -> pb.FilesystemUsage:
        used = inodes = 0
        with contextlib.suppress(errdefs.NotFound):
            usage = self.core.snapshotter.usage(c.id)
            used, inodes = usage.size, usage.inodes
        return pb.FilesystemUsage(timestamp=at, fs_id=pb.FilesystemIdentifier(
            mountpoint=self.fs_path), used_bytes=_u64(used), inodes_used=_u64(inodes))

    def _task_stats(self, ids: Sequence[str]) -> dict[str, CgroupStats]:
        tasks = [t for t in (self.core.task(i) for i in ids) if t is not None]
        out = {}
        for task, value in self.core.runtime.stats_of(tasks):
            stats = cgroup_stats(value)
            if stats is not None:
                out[task.id] = stats
        return out

    def _container(self, c: Container, stats: CgroupStats | None) -> pb.ContainerStats:
        at = time.time_ns()
        msg = pb.ContainerStats(attributes=self._attributes(c),
                                writable_layer=self._writable_layer(c, at))
        if stats is not None:
            msg.cpu.CopyFrom(_cpu(stats, at))
            msg.memory.CopyFrom(_memory(stats, at))
        return msg

    def container(self, c: Container) -> pb.ContainerStats:
        with namespaces.use(NAMESPACE):
            return self._container(c, self._task_stats([c.id]).get(c.id))

    def containers(self, containers: builtins.list[Container]) -> builtins.list[pb.ContainerStats]:
        """The stats of ``containers`` that are running (containerd lists only those)."""
        running = [c for c in containers if c.status.state == pb.CONTAINER_RUNNING]
        with namespaces.use(NAMESPACE):
            stats = self._task_stats([c.id for c in running])
            return [self._container(c, stats.get(c.id)) for c in running]

    def pod(self, sb: Sandbox) -> pb.PodSandboxStats:
        at = time.time_ns()
        meta = sb.config.metadata
        msg = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=sb.id, metadata=meta, labels=sb.config.labels,
            annotations=sb.config.annotations))
        if sb.state != SandboxState.READY:
            return msg
        linux = msg.linux
        with namespaces.use(NAMESPACE):
            pause = self._task_stats([sb.id]).get(sb.id)
        parent = sb.config.linux.cgroup_parent
        pod = cgroup_dir_stats(parent) if parent else None
        if pod is None and pause is not None:
            pod = pause
        elif pod is None:
            pod = cgroup_dir_stats(cgroups_path(parent, sb.id, NAMESPACE))
        if pod is not None:
            linux.cpu.CopyFrom(_cpu(pod, at))
            linux.memory.CopyFrom(_memory(pod, at))
        if pause is not None:
            linux.process.CopyFrom(pb.ProcessUsage(timestamp=at,
                                                   process_count=_u64(pause.pids)))
        if not sb.host_network and sb.pid:
            iface = _interface(sb.pid)
            if iface is not None:
                # No timestamp here: containerd gives none.
                linux.network.CopyFrom(pb.NetworkUsage(default_interface=iface))
        linux.containers.extend(self.containers(self.core.index.containers_of(sb.id)))
        return msg
