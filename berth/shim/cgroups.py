"""A container's cgroup, read straight from the cgroup filesystems: statistics and OOM events.

:func:`load` finds the cgroup of a process (``/proc/<pid>/cgroup`` against the cgroup mounts in
``/proc/self/mountinfo``) and returns a :class:`CgroupV1` where the v1 controllers are mounted
(legacy or hybrid hosts, as containerd decides) or a :class:`CgroupV2` on a unified host.

``stats()`` returns the metrics message containerd's shims report, ready to wrap in an ``Any``
with :attr:`type_url`: ``io.containerd.cgroups.v1.Metrics`` (memory, cpu, pids, blkio, OOM
control) or ``io.containerd.cgroups.v2.Metrics`` (memory, cpu, pids, io, memory events). Files
a kernel does not have are skipped, as containerd's ``IgnoreNotExist`` does.

:class:`OOMWatcher` reports OOM kills: for v1 an eventfd registered on the memory cgroup's
``memory.oom_control``, for v2 an inotify watch on ``memory.events`` (``oom_kill`` grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol

V1_TYPE_URL = "io.containerd.cgroups.v1.Metrics"
V2_TYPE_URL = "io.containerd.cgroups.v2.Metrics"
_USER_HZ = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // _USER_HZ


class Cgroup(Protocol):
    type_url: str

    def exists(self) -> bool: ...

    def stats(self) -> Any: ...

    def watch_oom(self, on_oom: Callable[[], None]) -> OOMWatcher | None: ...


class OOMWatcher(Protocol):
    def close(self) -> None: ...


def _mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """({v1 controller: (root, mountpoint)}, (root, mountpoint) of cgroup2 or None)."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, tails = head.split(), tail.split()
            if len(fields) < 5 or len(tails) < 3:
                continue
            fstype, options = tails[0], tails[2].split(",")
            root, mountpoint = fields[3], fields[4]
            if fstype == "cgroup2":
                if v2 is None or mountpoint == "/sys/fs/cgroup":
                    v2 = (root, mountpoint)
            elif fstype == "cgroup":
                for opt in options:
                    if opt not in ("rw", "ro", "relatime", "noatime", "nosuid", "nodev",
                                   "noexec", "clone_children", "xattr") \
                            and not opt.startswith("release_agent="):
                        v1.setdefault(opt, (root, mountpoint))
    return v1, v2


def _join(mount: tuple[str, str], path: str) -> str:
    root, mountpoint = mount
    rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(mountpoint, rel))


def load(pid: int) -> Cgroup | None:
    """The cgroup of ``pid``, or None if it cannot be found."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
        v1_mounts, v2_mount = _mounts()
    except OSError:
        return None
    unified = v2_mount is not None and v2_mount[1] == "/sys/fs/cgroup"
    paths: dict[str, str] = {}
    v2_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:
            v2_path = path
            continue
        for controller in controllers.split(","):
            mount = v1_mounts.get(controller)
            if mount is not None:
                paths[controller] = _join(mount, path)
    if unified and v2_path is not None and v2_mount is not None:
        return CgroupV2(_join(v2_mount, v2_path))
    if paths:
        return CgroupV1(paths)
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(path: str) -> int:
    text = _read(path)
    if text is None:
        return 0
    text = text.strip()
    if not text or text == "max":
        return 0
    try:
        return int(text.split()[0])
    except ValueError:
        return 0


def _flat(path: str) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


# -- cgroup v1 ---------------------------------------------------------------------------------

# memory.stat keys whose field names differ in containerd's MemoryStat
_MEMORY_STAT_NAMES = {
    "pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault", "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_pgpgin": "total_pg_pg_in", "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault", "total_pgmajfault": "total_pg_maj_fault",
}
# BlkIOStat field -> file, for kernels with CFQ statistics ...
_BLKIO_CFQ = {
    "io_service_bytes_recursive": "blkio.io_service_bytes_recursive",
    "io_serviced_recursive": "blkio.io_serviced_recursive",
    "io_queued_recursive": "blkio.io_queued_recursive",
    "io_service_time_recursive": "blkio.io_service_time_recursive",
    "io_wait_time_recursive": "blkio.io_wait_time_recursive",
    "io_merged_recursive": "blkio.io_merged_recursive",
    "io_time_recursive": "blkio.time_recursive",
    "sectors_recursive": "blkio.sectors_recursive",
}
# ... and for the others, whose throttle layer still counts bytes and operations
_BLKIO_THROTTLE = {
    "io_service_bytes_recursive": "blkio.throttle.io_service_bytes_recursive",
    "io_serviced_recursive": "blkio.throttle.io_serviced_recursive",
}


class CgroupV1:
    type_url = V1_TYPE_URL

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def exists(self) -> bool:
        memory = self.paths.get("memory")
        return memory is not None and os.path.isdir(memory)

    def stats(self) -> Any:
        from berth.api.cgroups.v1 import metrics_pb2 as m

        metrics = m.Metrics()
        if (pids := self.paths.get("pids")) and os.path.isdir(pids):
            metrics.pids.current = _int(f"{pids}/pids.current")
            metrics.pids.limit = _int(f"{pids}/pids.max")
        self._cpu(metrics)
        if (memory := self.paths.get("memory")) and os.path.isdir(memory):
            self._memory(metrics, memory)
        if (blkio := self.paths.get("blkio")) and os.path.isdir(blkio):
            self._blkio(metrics, blkio)
        return metrics

    def _cpu(self, metrics: Any) -> None:
        acct = self.paths.get("cpuacct")
        if acct and os.path.isdir(acct):
            usage = metrics.cpu.usage
            usage.total = _int(f"{acct}/cpuacct.usage")
            usage.per_cpu.extend(int(v) for v in (_read(f"{acct}/cpuacct.usage_percpu")
                                                  or "").split())
            ticks = _flat(f"{acct}/cpuacct.stat")
            usage.user = ticks.get("user", 0) * _NS_PER_TICK
            usage.kernel = ticks.get("system", 0) * _NS_PER_TICK
        cpu = self.paths.get("cpu")
        if cpu and os.path.isdir(cpu):
            stat = _flat(f"{cpu}/cpu.stat")
            metrics.cpu.throttling.periods = stat.get("nr_periods", 0)
            metrics.cpu.throttling.throttled_periods = stat.get("nr_throttled", 0)
            metrics.cpu.throttling.throttled_time = stat.get("throttled_time", 0)

    def _memory(self, metrics: Any, path: str) -> None:
        mem = metrics.memory
        fields = {f.name for f in mem.DESCRIPTOR.fields}
        for key, value in _flat(f"{path}/memory.stat").items():
            name = _MEMORY_STAT_NAMES.get(key, key)
            if name in fields and name not in ("usage", "swap", "kernel", "kernel_tcp"):
                setattr(mem, name, value)
        for entry, prefix in ((mem.usage, "memory"), (mem.swap, "memory.memsw"),
                              (mem.kernel, "memory.kmem"), (mem.kernel_tcp, "memory.kmem.tcp")):
            if not os.path.exists(f"{path}/{prefix}.usage_in_bytes"):
                continue
            entry.usage = _int(f"{path}/{prefix}.usage_in_bytes")
            entry.max = _int(f"{path}/{prefix}.max_usage_in_bytes")
            entry.failcnt = _int(f"{path}/{prefix}.failcnt")
            entry.limit = _int(f"{path}/{prefix}.limit_in_bytes")
        oom = _flat(f"{path}/memory.oom_control")
        if oom:
            metrics.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
            metrics.memory_oom_control.under_oom = oom.get("under_oom", 0)
            metrics.memory_oom_control.oom_kill = oom.get("oom_kill", 0)

    def _blkio(self, metrics: Any, path: str) -> None:
        files = _BLKIO_CFQ if os.path.exists(f"{path}/blkio.io_serviced_recursive") \
            else _BLKIO_THROTTLE
        for field, name in files.items():
            entries = getattr(metrics.blkio, field)
            for line in (_read(f"{path}/{name}") or "").splitlines():
                parts = line.split()
                if len(parts) < 2 or ":" not in parts[0]:
                    continue  # "Total N"
                major, minor = (int(x) for x in parts[0].split(":"))
                op, value = (parts[1], parts[2]) if len(parts) == 3 else ("", parts[1])
                entries.add(op=op, major=major, minor=minor, value=int(value))

    def watch_oom(self, on_oom: Callable[[], None]) -> OOMWatcher | None:
        memory = self.paths.get("memory")
        if memory is None:
            return None
        try:
            return _EventfdOOM(memory, on_oom)
        except OSError:
            return None


class _FdWatch:
    """An OOM watch on an fd the kernel makes readable: drained on each wake-up, closed when
    the fd fails or the cgroup is gone. Subclasses set ``_fd``, ``_path``, ``_on_oom``, call
    :meth:`_start`, and say how to drain (:meth:`_drain`) and whether it was an OOM
    (:meth:`_fired`)."""

    _fd = -1
    _path = ""
    _on_oom: Callable[[], None]

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def _drain(self) -> None:
        raise NotImplementedError

    def _fired(self) -> bool:
        return True

    def _readable(self) -> None:
        try:
            self._drain()
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not os.path.isdir(self._path):
            self.close()
            return
        if self._fired():
            self._on_oom()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class _EventfdOOM(_FdWatch):
    """cgroup v1 OOM notification: an eventfd registered through ``cgroup.event_control``.
    The kernel also signals it when the cgroup is removed; then the watch ends quietly."""

    def __init__(self, path: str, on_oom: Callable[[], None]) -> None:
        self._path = path
        self._on_oom = on_oom
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        oom_fd = -1
        try:
            oom_fd = os.open(f"{path}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            with open(f"{path}/cgroup.event_control", "w") as control:
                control.write(f"{self._fd} {oom_fd}")
        except BaseException:
            os.close(self._fd)
            raise
        finally:
            if oom_fd >= 0:
                os.close(oom_fd)
        self._start()

    def _drain(self) -> None:
        os.eventfd_read(self._fd)


# -- cgroup v2 ---------------------------------------------------------------------------------

_V2_MEMORY = ("anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped",
              "file_dirty", "file_writeback", "anon_thp", "inactive_anon", "active_anon",
              "inactive_file", "active_file", "unevictable", "slab_reclaimable",
              "slab_unreclaimable", "pgfault", "pgmajfault", "workingset_refault",
              "workingset_activate", "workingset_nodereclaim", "pgrefill", "pgscan", "pgsteal",
              "pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed", "thp_fault_alloc",
              "thp_collapse_alloc")


class CgroupV2:
    type_url = V2_TYPE_URL

    def __init__(self, path: str) -> None:
        self.path = path

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def stats(self) -> Any:
        from berth.api.cgroups.v2 import metrics_pb2 as m

        p = self.path
        metrics = m.Metrics()
        metrics.pids.current = _int(f"{p}/pids.current")
        metrics.pids.limit = _int(f"{p}/pids.max")
        cpu = _flat(f"{p}/cpu.stat")
        for name in ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled",
                     "throttled_usec"):
            setattr(metrics.cpu, name, cpu.get(name, 0))
        memory = _flat(f"{p}/memory.stat")
        for name in _V2_MEMORY:
            setattr(metrics.memory, name, memory.get(name, 0))
        metrics.memory.usage = _int(f"{p}/memory.current")
        metrics.memory.usage_limit = _int(f"{p}/memory.max")
        metrics.memory.swap_usage = _int(f"{p}/memory.swap.current")
        metrics.memory.swap_limit = _int(f"{p}/memory.swap.max")
        events = _flat(f"{p}/memory.events")
        for name in ("low", "high", "max", "oom", "oom_kill"):
            setattr(metrics.memory_events, name, events.get(name, 0))
        for line in (_read(f"{p}/io.stat") or "").splitlines():
            parts = line.split()
            if not parts or ":" not in parts[0]:
                continue
            major, minor = (int(x) for x in parts[0].split(":"))
            values = dict(kv.split("=", 1) for kv in parts[1:] if "=" in kv)
            metrics.io.usage.add(major=major, minor=minor,
                                 **{k: int(values.get(k, 0))
                                    for k in ("rbytes", "wbytes", "rios", "wios")})
        return metrics

    def watch_oom(self, on_oom: Callable[[], None]) -> OOMWatcher | None:
        try:
            return _InotifyOOM(self.path, on_oom)
        except OSError:
            return None


class _InotifyOOM(_FdWatch):
    """cgroup v2 OOM notification: ``memory.events`` is modified; ``oom_kill`` grew."""

    _IN_MODIFY = 0x2
    _IN_NONBLOCK = 0o4000
    _IN_CLOEXEC = 0o2000000

    def __init__(self, path: str, on_oom: Callable[[], None]) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._path = path
        self._on_oom = on_oom
        self._seen = _flat(f"{path}/memory.events").get("oom_kill", 0)
        self._fd = self._libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, f"{path}/memory.events".encode(),
                                        self._IN_MODIFY) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self._start()

    def _drain(self) -> None:
        os.read(self._fd, 4096)

    def _fired(self) -> bool:
        count = _flat(f"{self._path}/memory.events").get("oom_kill", 0)
        if count <= self._seen:
            return False
        self._seen = count
        return True
