"""Tasks over berthd's Tasks service: :class:`TasksProxy` is a
:class:`berth.runtime.runtime.Runtime` and hands out :class:`TaskProxy`, a
:class:`berth.runtime.runtime.Task` (see :mod:`berth.runtime.runtime` for the lifecycle).

Beyond the Protocols:

* :meth:`TasksProxy.task` names a task without asking the daemon (calls on it fail with
  NotFound if there is none), so that one call is one round trip;
* :meth:`TaskProxy.waiter` starts a ``Wait`` and returns at once: a caller that must not miss a
  quick exit starts waiting before it starts the process, then polls or blocks on the result;
* :func:`cgroup_stats` reads the numbers out of :meth:`TaskProxy.stats`.

A task's runtime name is not part of the Tasks API: :attr:`TaskProxy.runtime` reads the
container record, once.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import any_pb2

from berth import errdefs, namespaces
from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc
from berth.api.types.task import task_pb2
from berth.containers import AnyValue
from berth.proxy.connection import Connection, Waiting
from berth.proxy.convert import from_timestamp
from berth.runtime.runtime import (
    IO,
    CreateOpts,
    ExecOpts,
    Exit,
    ProcessInfo,
    ProcessState,
    Runtime,
    Status,
    Task,
)
from berth.wire import mounts as to_mounts

_STATUS = {task_pb2.UNKNOWN: Status.UNKNOWN, task_pb2.CREATED: Status.CREATED,
           task_pb2.RUNNING: Status.RUNNING, task_pb2.STOPPED: Status.STOPPED,
           task_pb2.PAUSED: Status.PAUSED, task_pb2.PAUSING: Status.PAUSING}


def _state(p: task_pb2.Process) -> ProcessState:
    return ProcessState(p.pid, _STATUS.get(p.status, Status.UNKNOWN),
                        IO(p.stdin, p.stdout, p.stderr, p.terminal), p.exit_status,
                        from_timestamp(p.exited_at))


def _deleted(resp: pb.DeleteResponse) -> Exit:
    return Exit(resp.exit_status, from_timestamp(resp.exited_at), resp.pid)


def _any(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def _value(message: any_pb2.Any) -> AnyValue:
    return AnyValue(message.type_url, message.value)


class _Waiter(Waiting[Exit]):
    def __init__(self, inner: Waiting[pb.WaitResponse]) -> None:
        self._inner = inner

    def done(self) -> bool:
        return self._inner.done()

    def result(self, timeout: float | None = None) -> Exit:
        """The exit; TimeoutError if it has not come within ``timeout`` seconds."""
        resp = self._inner.result(timeout)
        return Exit(resp.exit_status, from_timestamp(resp.exited_at))

    def cancel(self) -> bool:
        return self._inner.cancel()


class TaskProxy(Task):
    def __init__(self, tasks: TasksProxy, task_id: str, pid: int = 0) -> None:
        self._tasks = tasks
        self._conn = tasks._conn
        self._stub = tasks._stub
        self._id = task_id
        self._pid = pid
        self._runtime: str | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def namespace(self) -> str:
        return self._conn.namespace or namespaces.current_or_none() or ""

    @property
    def runtime(self) -> str:
        if self._runtime is None:
            from berth.proxy.containers import ContainersProxy

            try:
                self._runtime = ContainersProxy(self._conn).get(self._id).runtime.name
            except errdefs.NotFound:
                self._runtime = ""
        return self._runtime

    @property
    def pid(self) -> int:
        if not self._pid:
            self._pid = self.state().pid
        return self._pid

    def state(self, exec_id: str = "") -> ProcessState:
        resp: pb.GetResponse = self._conn.call(
            self._stub.Get, pb.GetRequest(container_id=self._id, exec_id=exec_id))
        return _state(resp.process)

    def start(self, exec_id: str = "") -> int:
        # Starting runs the runtime (runc): no client deadline.
        resp: pb.StartResponse = self._conn.call(
            self._stub.Start, pb.StartRequest(container_id=self._id, exec_id=exec_id),
            timeout=None)
        if not exec_id:
            self._pid = resp.pid
        return resp.pid

    def kill(self, signal: int, *, all_processes: bool = False, exec_id: str = "") -> None:
        self._conn.call(self._stub.Kill, pb.KillRequest(
            container_id=self._id, exec_id=exec_id, signal=signal, all=all_processes))

    def exec(self, exec_id: str, opts: ExecOpts) -> None:
        self._conn.call(self._stub.Exec, pb.ExecProcessRequest(
            container_id=self._id, exec_id=exec_id, spec=_any(opts.spec), stdin=opts.io.stdin,
            stdout=opts.io.stdout, stderr=opts.io.stderr, terminal=opts.io.terminal),
            timeout=None)

    def delete_process(self, exec_id: str) -> Exit:
        resp: pb.DeleteResponse = self._conn.call(
            self._stub.DeleteProcess,
            pb.DeleteProcessRequest(container_id=self._id, exec_id=exec_id))
        return _deleted(resp)

    def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        self._conn.call(self._stub.ResizePty, pb.ResizePtyRequest(
            container_id=self._id, exec_id=exec_id, width=width, height=height))

    def close_io(self, exec_id: str = "", *, stdin: bool = True) -> None:
        self._conn.call(self._stub.CloseIO, pb.CloseIORequest(
            container_id=self._id, exec_id=exec_id, stdin=stdin))

    def pause(self) -> None:
        self._conn.call(self._stub.Pause, pb.PauseTaskRequest(container_id=self._id))

    def resume(self) -> None:
        self._conn.call(self._stub.Resume, pb.ResumeTaskRequest(container_id=self._id))

    def pids(self) -> list[ProcessInfo]:
        resp: pb.ListPidsResponse = self._conn.call(
            self._stub.ListPids, pb.ListPidsRequest(container_id=self._id))
        return [ProcessInfo(p.pid, _value(p.info) if p.HasField("info") else None)
                for p in resp.processes]

    def update(self, resources: AnyValue, annotations: Mapping[str, str] | None = None) -> None:
        self._conn.call(self._stub.Update, pb.UpdateTaskRequest(
            container_id=self._id, resources=_any(resources),
            annotations=dict(annotations or {})))

    def stats(self) -> AnyValue:
        for _task, data in self._tasks.stats_of([self]):
            return data
        raise errdefs.NotFound(f"task {self._id!r} has no statistics: is it running?")

    def wait(self, exec_id: str = "") -> Exit:
        resp: pb.WaitResponse = self._conn.call(
            self._stub.Wait, pb.WaitRequest(container_id=self._id, exec_id=exec_id),
            timeout=None)
        return Exit(resp.exit_status, from_timestamp(resp.exited_at))

    def waiter(self, exec_id: str = "") -> Waiting[Exit]:
        """Start waiting for the process to exit and return at once; ``result(timeout)``
        gives its :class:`~berth.runtime.runtime.Exit` (TimeoutError while it runs on)."""
        return _Waiter(self._conn.future(
            self._stub.Wait.future, pb.WaitRequest(container_id=self._id, exec_id=exec_id)))


class TasksProxy(Runtime):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = tasks_pb2_grpc.TasksStub(conn.channel)

    def task(self, task_id: str) -> TaskProxy:
        """The task ``task_id``, not looked up: its calls raise NotFound if there is none."""
        return TaskProxy(self, task_id)

    def create(self, container_id: str, opts: CreateOpts) -> TaskProxy:
        # Creating starts a shim and runs the runtime: no client deadline.
        req = pb.CreateTaskRequest(
            container_id=container_id, rootfs=to_mounts(opts.rootfs), stdin=opts.io.stdin,
            stdout=opts.io.stdout, stderr=opts.io.stderr, terminal=opts.io.terminal,
            runtime_path=opts.runtime_path)
        if opts.runtime_options is not None:
            req.options.CopyFrom(_any(opts.runtime_options))
        resp: pb.CreateTaskResponse = self._conn.call(self._stub.Create, req, timeout=None)
        return TaskProxy(self, container_id, resp.pid)

    def get(self, task_id: str) -> TaskProxy:
        return TaskProxy(self, task_id, self.task(task_id).state().pid)

    def list(self) -> builtins.list[Task]:
        return [task for task, _state in self.states()]

    def delete(self, task_id: str) -> Exit:
        # Deleting waits for the shim to clean up: no client deadline.
        resp: pb.DeleteResponse = self._conn.call(
            self._stub.Delete, pb.DeleteTaskRequest(container_id=task_id), timeout=None)
        return _deleted(resp)

    def states(self) -> builtins.list[tuple[Task, ProcessState]]:
        resp: pb.ListTasksResponse = self._conn.call(self._stub.List, pb.ListTasksRequest())
        return [(TaskProxy(self, p.container_id, p.pid), _state(p)) for p in resp.tasks]

    def stats_of(self, tasks: Sequence[Task]) -> builtins.list[tuple[Task, AnyValue]]:
        if not tasks:
            return []
        by_id = {task.id: task for task in tasks}
        resp: pb.MetricsResponse = self._conn.call(self._stub.Metrics, pb.MetricsRequest(
            filters=[f'id=="{task_id}"' for task_id in by_id]))
        return [(by_id[m.id], _value(m.data)) for m in resp.metrics if m.id in by_id]


@dataclass(frozen=True)
class CgroupStats:
    """What ``berth stats`` shows of a task's cgroup statistics."""

    cpu_ns: int  # CPU time used so far
    memory: int  # bytes in use
    inactive_file: int  # of which page cache the kernel may reclaim first
    limit: int  # the memory limit (0 or huge when there is none)
    pids: int
    rss: int = 0  # anonymous memory (v1 total_rss, v2 anon)
    page_faults: int = 0
    major_page_faults: int = 0


def cgroup_stats(value: AnyValue) -> CgroupStats | None:
    """The numbers of a task's statistics (cgroups v1 or v2); None for another type."""
    name = value.type_url.rpartition("/")[2]
    if name == "io.containerd.cgroups.v1.Metrics":
        from berth.api.cgroups.v1 import metrics_pb2 as v1

        m1 = v1.Metrics()
        m1.ParseFromString(value.value)
        mem1 = m1.memory
        return CgroupStats(m1.cpu.usage.total, mem1.usage.usage, mem1.total_inactive_file,
                           mem1.usage.limit, m1.pids.current, mem1.total_rss,
                           mem1.total_pg_fault, mem1.total_pg_maj_fault)
    if name == "io.containerd.cgroups.v2.Metrics":
        from berth.api.cgroups.v2 import metrics_pb2 as v2

        m2 = v2.Metrics()
        m2.ParseFromString(value.value)
        mem2 = m2.memory
        return CgroupStats(m2.cpu.usage_usec * 1000, mem2.usage, mem2.inactive_file,
                           mem2.usage_limit, m2.pids.current, mem2.anon, mem2.pgfault,
                           mem2.pgmajfault)
    return None
