"""The task manager: the local object behind the Tasks service.

It creates a bundle and starts a shim per task, keeps a ttrpc connection to every shim, and
forwards each task operation to the shim that owns it. Shims outlive berthd: on start, the
manager finds every bundle left in its state directory, reconnects to live shims, and cleans up
after dead ones (the shim binary's ``delete``, then ``/tasks/exit`` and ``/tasks/delete``
events on their behalf, as containerd does).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import any_pb2

from berth import errdefs, identifiers, namespaces
from berth.api.events import task_pb2 as events_pb
from berth.api.runtime.task.v2 import shim_pb2
from berth.api.types import mount_pb2
from berth.containers import AnyValue
from berth.events import Exchange
from berth.metadata.store import Metadata
from berth.runtime import bundle as bundles
from berth.runtime.bundle import Bundle
from berth.runtime.shim import ShimBinary, ShimLog, resolve_binary, socket_path
from berth.runtime.taskclient import TaskClient
from berth.services.convert import mounts as mounts_to_pb
from berth.shimcontract import ADDRESS_FILE, BINARY_FILE, DEFAULT_GROUP_SIZE
from berth.ttrpc import BackgroundLoop

log = logging.getLogger(__name__)

# Runtimes Berth's own shim serves unless the configuration says otherwise.
DEFAULT_SHIMS = {"io.containerd.runc.v2": "containerd-shim-berth-v2",
                 "io.containerd.runc.v1": "containerd-shim-berth-v2"}


@dataclass
class Task:
    id: str
    namespace: str
    bundle: Bundle
    shim: TaskClient
    runtime: str
    pid: int = 0
    logs: ShimLog | None = field(default=None, repr=False)


@dataclass
class CreateRequest:
    container_id: str
    rootfs: list[mount_pb2.Mount]
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    options: any_pb2.Any | None = None
    runtime_path: str = ""


R = TypeVar("R")
# How long a task's state or stats may take (containerd's state timeout): a shim that cannot
# say in that time is stuck, and listing the other tasks must not wait for it.
STATE_TIMEOUT = 2.0
SHIM_GROUPS = ("namespace", "container")  # the runtime config's shim_group values


class TaskManager:
    def __init__(self, state: str, metadata: Metadata, exchange: Exchange, grpc_address: str,
                 ttrpc_address: str, shims: Mapping[str, str] | None = None,
                 on_close: Sequence[Callable[[], None]] = (),
                 loop: BackgroundLoop | None = None, shim_group: str = "namespace",
                 shim_group_size: int = DEFAULT_GROUP_SIZE) -> None:
        self.state_dir = state
        self.md = metadata
        self.exchange = exchange
        self.grpc_address = grpc_address
        self.ttrpc_address = ttrpc_address
        self.shims = {**DEFAULT_SHIMS, **(shims or {})}
        self._tasks: dict[tuple[str, str], Task] = {}
        self._lock = threading.Lock()
        self._on_close = list(on_close)
        self.loop = loop or BackgroundLoop.default()
        if shim_group not in SHIM_GROUPS:
            raise errdefs.InvalidArgument(
                f"runtime config: shim_group {shim_group!r} must be \"namespace\" (a namespace's "
                "containers share shims, shim_group_size at most each) or \"container\" (a shim "
                "for every container, as containerd runs them)")
        if isinstance(shim_group_size, bool) or not isinstance(shim_group_size, int) \
                or shim_group_size < 1:
            raise errdefs.InvalidArgument(
                f"runtime config: shim_group_size {shim_group_size!r} must be a whole number "
                "of containers, 1 or more")
        self.shim_group = shim_group
        self.shim_group_size = shim_group_size
        os.makedirs(state, mode=0o711, exist_ok=True)

    def _binary(self, path: str) -> ShimBinary:
        return ShimBinary(path, self.grpc_address, self.ttrpc_address,
                          os.path.abspath(sys.argv[0]),
                          self.shim_group_size if self.shim_group == "namespace" else 0)

    # -- lookups ----------------------------------------------------------------------------

    def get(self, container_id: str) -> Task:
        ns = namespaces.current()
        with self._lock:
            task = self._tasks.get((ns, container_id))
        if task is None:
            # ctr prefixes "no running task found: " itself.
            raise errdefs.NotFound(f"task {container_id} not found")
        return task

    def list(self) -> list[Task]:
        ns = namespaces.current()
        with self._lock:
            return [t for (tns, _), t in sorted(self._tasks.items()) if tns == ns]

    def states(self) -> builtins.list[tuple[Task, shim_pb2.StateResponse]]:
        """Every task of the namespace with its init's state, as its shim reports it (tasks
        whose shim cannot answer are left out: see _each)."""
        return self._each(self.list(), lambda task: self.state(task.id), "state")

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, req: CreateRequest) -> Task:
        ns = namespaces.current()
        container = self.md.containers.get(req.container_id)
        with self._lock:
            if (ns, req.container_id) in self._tasks:
                raise errdefs.AlreadyExists(f"task {req.container_id}: already exists")
        rootfs = list(req.rootfs)
        if not rootfs and container.snapshot_key:
            sn = self.md.snapshotters.get(container.snapshotter)
            if sn is None:
                raise errdefs.InvalidArgument(
                    f"container {container.id}: snapshotter {container.snapshotter!r} is not "
                    "loaded")
            rootfs = mounts_to_pb(sn.mounts(container.snapshot_key))
        binary = self._binary(resolve_binary(container.runtime.name, req.runtime_path,
                                             self.shims))
        if container.spec is None:
            raise errdefs.FailedPrecondition(
                f"container {container.id} has no OCI spec: create it with one")
        bundle = bundles.create(self.state_dir, container.id, container.spec.value)
        logs = ShimLog(bundle, self.loop.loop)
        shim: TaskClient | None = None
        try:
            started = time.monotonic()
            address = binary.start(bundle)
            shim_started = time.monotonic()
            shim = TaskClient.connect(address, ns, self.loop)
            options = req.options if req.options is not None and req.options.type_url \
                else _any(container.runtime.options)
            resp = shim.Create(shim_pb2.CreateTaskRequest(
                id=container.id, bundle=bundle.path, rootfs=rootfs, terminal=req.terminal,
                stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, options=options))
        except BaseException:
            self._abandon(bundle, binary, shim, logs)
            raise
        log.debug("task %s created: shim start %.1fms, create %.1fms", container.id,
                  (shim_started - started) * 1e3, (time.monotonic() - shim_started) * 1e3)
        task = Task(container.id, ns, bundle, shim, container.runtime.name, resp.pid, logs)
        self._track(task)
        return task

    def _track(self, task: Task) -> None:
        with self._lock:
            self._tasks[(task.namespace, task.id)] = task
        task.shim.on_lost(lambda: self._shim_lost(task))

    def _shim_lost(self, task: Task) -> None:
        """The shim of a task died under us: forget the task and clean up after it."""
        with self._lock:
            if self._tasks.get((task.namespace, task.id)) is not task:
                return  # released on purpose meanwhile
            del self._tasks[(task.namespace, task.id)]
        log.warning("task %s/%s: its shim went away; cleaning up", task.namespace, task.id)
        if task.logs is not None:
            task.logs.close()
        with namespaces.use(task.namespace):
            self._cleanup_dead(task.bundle)

    def _abandon(self, bundle: Bundle, binary: ShimBinary, shim: TaskClient | None,
                 logs: ShimLog) -> None:
        """Undo a create that failed part way."""
        if shim is not None:
            with contextlib.suppress(errdefs.BerthError):
                shim.Shutdown(shim_pb2.ShutdownRequest(id=bundle.id, now=True))
            shim.close()
        if bundle.read(ADDRESS_FILE):
            try:
                binary.delete(bundle)
            except errdefs.BerthError as err:
                log.warning("cleanup of failed task %s: %s", bundle.id, err)
        logs.close()
        try:
            bundle.delete()
        except (OSError, errdefs.BerthError) as err:
            log.warning("could not remove the bundle of failed task %s: %s", bundle.id, err)

    def delete(self, container_id: str) -> shim_pb2.DeleteResponse:
        task = self.get(container_id)
        resp = task.shim.Delete(shim_pb2.DeleteRequest(id=container_id))
        self._release(task)
        return resp

    def _release(self, task: Task) -> None:
        """Forget the task (first, so its shim going away is not taken for a death) and stop
        its shim."""
        with self._lock:
            self._tasks.pop((task.namespace, task.id), None)
        with contextlib.suppress(errdefs.BerthError):
            task.shim.Shutdown(shim_pb2.ShutdownRequest(id=task.id))
        task.shim.close()
        if task.logs is not None:
            task.logs.close()
        try:
            task.bundle.delete()
        except (OSError, errdefs.BerthError) as err:
            log.warning("task %s: bundle not removed: %s", task.id, err)

    # -- operations on a task's processes ----------------------------------------------------

    def state(self, container_id: str, exec_id: str = "") -> shim_pb2.StateResponse:
        task = self.get(container_id)
        return task.shim.State(shim_pb2.StateRequest(id=container_id, exec_id=exec_id),
                               timeout=STATE_TIMEOUT)

    def start(self, container_id: str, exec_id: str = "") -> int:
        task = self.get(container_id)
        resp = task.shim.Start(shim_pb2.StartRequest(id=container_id, exec_id=exec_id))
        if not exec_id:
            task.pid = resp.pid
        return int(resp.pid)

    def kill(self, container_id: str, exec_id: str, signal: int, all_: bool) -> None:
        self.get(container_id).shim.Kill(shim_pb2.KillRequest(
            id=container_id, exec_id=exec_id, signal=signal, all=all_))

    def exec(self, container_id: str, exec_id: str, spec: any_pb2.Any, *, stdin: str,
             stdout: str, stderr: str, terminal: bool) -> None:
        identifiers.validate(exec_id, "exec id")
        self.get(container_id).shim.Exec(shim_pb2.ExecProcessRequest(
            id=container_id, exec_id=exec_id, terminal=terminal, stdin=stdin, stdout=stdout,
            stderr=stderr, spec=spec))

    def delete_process(self, container_id: str, exec_id: str) -> shim_pb2.DeleteResponse:
        if not exec_id:
            raise errdefs.InvalidArgument("delete the task itself, not its init process")
        return self.get(container_id).shim.Delete(
            shim_pb2.DeleteRequest(id=container_id, exec_id=exec_id))

    def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        self.get(container_id).shim.ResizePty(shim_pb2.ResizePtyRequest(
            id=container_id, exec_id=exec_id, width=width, height=height))

    def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None:
        self.get(container_id).shim.CloseIO(shim_pb2.CloseIORequest(
            id=container_id, exec_id=exec_id, stdin=stdin))

    def pause(self, container_id: str) -> None:
        self.get(container_id).shim.Pause(shim_pb2.PauseRequest(id=container_id))

    def resume(self, container_id: str) -> None:
        self.get(container_id).shim.Resume(shim_pb2.ResumeRequest(id=container_id))

    def pids(self, container_id: str) -> shim_pb2.PidsResponse:
        return self.get(container_id).shim.Pids(shim_pb2.PidsRequest(id=container_id))

    def update(self, container_id: str, resources: any_pb2.Any,
               annotations: Mapping[str, str]) -> None:
        self.get(container_id).shim.Update(shim_pb2.UpdateTaskRequest(
            id=container_id, resources=resources, annotations=dict(annotations)))

    def stats(self, task: Task) -> any_pb2.Any:
        resp = task.shim.Stats(shim_pb2.StatsRequest(id=task.id), timeout=STATE_TIMEOUT)
        stats: any_pb2.Any = resp.stats
        return stats

    def wait(self, container_id: str, exec_id: str = "") -> shim_pb2.WaitResponse:
        """Block until the process exits (no timeout: a task may run for days)."""
        task = self.get(container_id)
        return task.shim.Wait(shim_pb2.WaitRequest(id=container_id, exec_id=exec_id),
                              timeout=None)

    def stats_of(self, tasks: Sequence[Task]) -> builtins.list[tuple[Task, any_pb2.Any]]:
        """The cgroup stats of ``tasks`` (those whose shim cannot answer left out: see _each)."""
        return self._each(tasks, self.stats, "stats")

    def all_stats(self) -> builtins.list[tuple[str, str, any_pb2.Any]]:
        """(namespace, container id, cgroup stats) of every task in every namespace."""
        with self._lock:
            tasks = list(self._tasks.values())
        return [(task.namespace, task.id, stats) for task, stats in self.stats_of(tasks)]

    def _each(self, tasks: Sequence[Task], query: Callable[[Task], R],
              what: str) -> builtins.list[tuple[Task, R]]:
        """``query`` of every task, leaving out (and logging) those whose shim cannot answer:
        one dead or stuck shim (its tasks not yet cleaned up) must not hide all the other
        tasks, as in containerd. Once a shim did not answer at all (a timeout, a lost
        connection), its other tasks (a group's) are not asked again in this call. A task
        deleted meanwhile (NotFound) is left out silently."""
        out = []
        failed: set[str] = set()
        for task in tasks:
            if task.shim.address in failed:
                log.error("task %s/%s: no %s: its shim did not answer", task.namespace,
                          task.id, what)
                continue
            try:
                out.append((task, query(task)))
            except errdefs.NotFound:
                continue
            except errdefs.BerthError as err:
                if isinstance(err, (errdefs.DeadlineExceeded, errdefs.Unavailable)):
                    failed.add(task.shim.address)  # the shim itself: stuck or gone
                log.error("task %s/%s: no %s from its shim: %s", task.namespace, task.id, what,
                          err)
        return out

    # -- restart ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Reconnect to the shims of tasks that outlived the last berthd; clean up the rest."""
        for bundle in bundles.load_all(self.state_dir):
            with namespaces.use(bundle.namespace):
                try:
                    self._reconnect(bundle)
                except errdefs.BerthError as err:
                    log.warning("task %s/%s: shim is gone (%s); cleaning up", bundle.namespace,
                                bundle.id, err)
                    self._cleanup_dead(bundle)

    def _reconnect(self, bundle: Bundle) -> None:
        address = bundle.read(ADDRESS_FILE)
        if not address:
            raise errdefs.NotFound("the shim never reported its address")
        shim = TaskClient.connect(socket_path(address), bundle.namespace, self.loop)
        try:
            state = shim.State(shim_pb2.StateRequest(id=bundle.id))
        except BaseException:
            shim.close()
            raise
        runtime = ""
        with contextlib.suppress(errdefs.NotFound):
            runtime = self.md.containers.get(bundle.id).runtime.name
        task = Task(bundle.id, bundle.namespace, bundle, shim, runtime, state.pid,
                    ShimLog(bundle, self.loop.loop))
        self._track(task)
        log.info("task %s/%s: reconnected to its shim (pid %d)", bundle.namespace, bundle.id,
                 state.pid)

    def _cleanup_dead(self, bundle: Bundle) -> None:
        path = bundle.read(BINARY_FILE)
        resp = shim_pb2.DeleteResponse(exit_status=137)
        if path and os.path.exists(path):
            try:
                resp = self._binary(path).delete(bundle)
            except errdefs.BerthError as err:
                log.warning("task %s: shim delete failed: %s", bundle.id, err)
        self.exchange.publish("/tasks/exit", events_pb.TaskExit(
            container_id=bundle.id, id=bundle.id, pid=resp.pid, exit_status=resp.exit_status,
            exited_at=resp.exited_at))
        self.exchange.publish("/tasks/delete", events_pb.TaskDelete(
            container_id=bundle.id, id=bundle.id, pid=resp.pid, exit_status=resp.exit_status,
            exited_at=resp.exited_at))
        try:
            bundle.delete()
        except (OSError, errdefs.BerthError) as err:
            log.warning("task %s: bundle not removed: %s", bundle.id, err)

    def close(self) -> None:
        """Drop the connections (the shims and their tasks keep running)."""
        with self._lock:
            tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.shim.close()
            if task.logs is not None:
                task.logs.close()
        for close in self._on_close:
            close()


def _any(value: AnyValue | None) -> any_pb2.Any | None:
    if value is None:
        return None
    return any_pb2.Any(type_url=value.type_url, value=value.value)


