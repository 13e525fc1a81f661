"""The task manager: berthd's :class:`~berth.runtime.runtime.Runtime`, tasks run by shims.

It creates a bundle and starts a shim for each task (or has the task join one: see
berth.shimcontract), keeps a ttrpc connection to every shim, and hands out
:class:`~berth.runtime.shimtask.ShimTask` objects whose methods call the task's shim. Shims
outlive berthd: on start, the manager finds every bundle left in its state directory,
reconnects to live shims, and cleans up after dead ones (the shim binary's ``delete``, then
``/tasks/exit`` and ``/tasks/delete`` events on their behalf, as containerd does).
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
from typing import TYPE_CHECKING, TypeVar

from berth import errdefs, namespaces, shimgroups
from berth.api.events import task_pb2 as events_pb
from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.clock import timestamp
from berth.containers import AnyValue
from berth.events import Exchange
from berth.metadata.store import Metadata
from berth.runtime import bundle as bundles
from berth.runtime import shimproto
from berth.runtime.bundle import Bundle
from berth.runtime.runtime import CreateOpts, Exit, ProcessState, Runtime, Task
from berth.runtime.shim import ShimBinary, ShimLog, resolve_binary, socket_path
from berth.runtime.shimtask import ShimTask
from berth.runtime.taskclient import TaskClient
from berth.shimcontract import (
    ADDRESS_FILE,
    BINARY_FILE,
    DEAD_EXIT_STATUS,
    DEFAULT_GROUP_SIZE,
    DEFAULT_LINGER,
)
from berth.ttrpc import BackgroundLoop

log = logging.getLogger(__name__)

BERTH_SHIM_BINARY = "containerd-shim-berth-v2"
# Runtimes Berth's own shim serves unless the configuration says otherwise.
DEFAULT_SHIMS = {"io.containerd.runc.v2": BERTH_SHIM_BINARY,
                 "io.containerd.runc.v1": BERTH_SHIM_BINARY}


R = TypeVar("R")
SHIM_GROUPS = ("namespace", "container")  # the runtime config's shim_group values


class TaskManager:
    """The :class:`~berth.runtime.runtime.Runtime` of berthd's ``task`` plugin."""

    def __init__(self, state: str, metadata: Metadata, exchange: Exchange, grpc_address: str,
                 ttrpc_address: str, shims: Mapping[str, str] | None = None,
                 on_close: Sequence[Callable[[], None]] = (),
                 loop: BackgroundLoop | None = None, shim_group: str = "namespace",
                 shim_group_size: int = DEFAULT_GROUP_SIZE,
                 shim_linger: float = DEFAULT_LINGER) -> None:
        self.state_dir = state
        self.md = metadata
        self.exchange = exchange
        self.grpc_address = grpc_address
        self.ttrpc_address = ttrpc_address
        self.shims = {**DEFAULT_SHIMS, **(shims or {})}
        self._tasks: dict[tuple[str, str], ShimTask] = {}
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
        if isinstance(shim_linger, bool) or not isinstance(shim_linger, (int, float)) \
                or not 0 <= shim_linger <= 3600:
            raise errdefs.InvalidArgument(
                f"runtime config: shim_linger {shim_linger!r} must be a number of seconds "
                "from 0 to 3600")
        self.shim_group = shim_group
        self.shim_group_size = shim_group_size
        self.shim_linger = float(shim_linger)
        os.makedirs(state, mode=0o711, exist_ok=True)

    def _binary(self, path: str) -> ShimBinary:
        return ShimBinary(path, self.grpc_address, self.ttrpc_address,
                          os.path.abspath(sys.argv[0]),
                          self.shim_group_size if self.shim_group == "namespace" else 0,
                          self.shim_linger)

    def is_berth_shim(self, runtime: str, runtime_path: str = "") -> bool:
        """Whether tasks of ``runtime`` (or the shim at ``runtime_path``) run under Berth's own
        shim, which understands Berth's extensions to the task API (``crilog://`` stdio)."""
        try:
            binary = resolve_binary(runtime, runtime_path, self.shims)
        except errdefs.NotFound:
            return False
        return os.path.basename(binary) == BERTH_SHIM_BINARY

    # -- lookups ----------------------------------------------------------------------------

    def get(self, task_id: str) -> ShimTask:
        ns = namespaces.current()
        with self._lock:
            task = self._tasks.get((ns, task_id))
        if task is None:
            # ctr prefixes "no running task found: " itself.
            raise errdefs.NotFound(f"task {task_id} not found")
        return task

    def list(self) -> builtins.list[Task]:
        return [*self._namespace_tasks()]

    def _namespace_tasks(self) -> builtins.list[ShimTask]:
        ns = namespaces.current()
        with self._lock:
            return [t for (tns, _), t in sorted(self._tasks.items()) if tns == ns]

    def states(self) -> builtins.list[tuple[Task, ProcessState]]:
        """Every task of the namespace with its init's state, as its shim reports it (tasks
        whose shim cannot answer are left out: see _each)."""
        return self._each(self._namespace_tasks(), lambda task: task.state(), "state")

    def stats_of(self, tasks: Sequence[Task]) -> builtins.list[tuple[Task, AnyValue]]:
        """The cgroup stats of ``tasks`` (those whose shim cannot answer left out: see _each;
        those deleted meanwhile too)."""
        own = []
        for task in tasks:
            if not isinstance(task, ShimTask):
                with self._lock:
                    found = self._tasks.get((task.namespace, task.id))
                if found is None:
                    continue
                task = found
            own.append(task)
        return self._each(own, lambda task: task.stats(), "stats")

    def all_stats(self) -> builtins.list[tuple[str, str, AnyValue]]:
        """(namespace, container id, cgroup stats) of every task in every namespace."""
        with self._lock:
            tasks = list(self._tasks.values())
        return [(task.namespace, task.id, stats) for task, stats in self.stats_of(tasks)]

    def _each(self, tasks: Sequence[ShimTask], query: Callable[[ShimTask], R],
              what: str) -> builtins.list[tuple[Task, R]]:
        """``query`` of every task, leaving out (and logging) those whose shim cannot answer:
        one dead or stuck shim (its tasks not yet cleaned up) must not hide all the other
        tasks, as in containerd. Once a shim did not answer at all (a timeout, a lost
        connection), its other tasks (a group's) are not asked again in this call. A task
        deleted meanwhile (NotFound) is left out silently."""
        out: builtins.list[tuple[Task, R]] = []
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

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, container_id: str, opts: CreateOpts) -> ShimTask:
        ns = namespaces.current()
        container = self.md.containers.get(container_id)
        with self._lock:
            if (ns, container_id) in self._tasks:
                raise errdefs.AlreadyExists(f"task {container_id}: already exists")
        rootfs = shimproto.mounts(opts.rootfs)
        if not rootfs and container.snapshot_key:
            sn = self.md.snapshotters.get(container.snapshotter)
            if sn is None:
                raise errdefs.InvalidArgument(
                    f"container {container.id}: snapshotter {container.snapshotter!r} is not "
                    "loaded")
            rootfs = shimproto.mounts(sn.mounts(container.snapshot_key))
        binary = self._binary(resolve_binary(container.runtime.name, opts.runtime_path,
                                             self.shims))
        if container.spec is None:
            raise errdefs.FailedPrecondition(
                f"container {container.id} has no OCI spec: create it with one")
        bundle = bundles.create(self.state_dir, container.id, container.spec.value)
        logs = ShimLog(bundle, self.loop.loop)
        shim: TaskClient | None = None
        options = opts.runtime_options if opts.runtime_options is not None \
            and opts.runtime_options.type_url else container.runtime.options
        try:
            started = time.monotonic()
            if self._is_own_shim(binary):
                address = self._start_own_shim(binary, bundle, options) or binary.start(bundle)
            else:
                address = self._join_group_shim(binary, bundle, options) or binary.start(bundle)
            shim_started = time.monotonic()
            shim = TaskClient.connect(address, ns, self.loop)
            io = opts.io
            resp = shim.Create(api.CreateTaskRequest(
                id=container.id, bundle=bundle.path, rootfs=rootfs, terminal=io.terminal,
                stdin=io.stdin, stdout=io.stdout, stderr=io.stderr,
                options=None if options is None else shimproto.any_message(options)))
        except BaseException:
            self._abandon(bundle, binary, shim, logs)
            raise
        log.debug("task %s created: shim start %.1fms, create %.1fms", container.id,
                  (shim_started - started) * 1e3, (time.monotonic() - shim_started) * 1e3)
        task = ShimTask(container.id, ns, bundle, shim, container.runtime.name, resp.pid, logs)
        self._track(task)
        return task

    def _join_group_shim(self, binary: ShimBinary, bundle: Bundle,
                         options: AnyValue | None) -> str:
        """The socket of the running Berth shim (installed elsewhere than beside berthd: see
        :meth:`_start_own_shim` for that one) the task joins, reached without running the shim
        binary's ``start`` (a new interpreter: 20-40 ms): berthd applies the shims' own
        grouping rules (berth.shimgroups) under their lock, and writes the bundle's address as
        ``start`` would. "" when it cannot (not Berth's shim, no namespace grouping, a shim
        cgroup asked for, or no shim serves the group yet): then ``start`` runs."""
        if not binary.group_size or os.path.basename(binary.path) != BERTH_SHIM_BINARY \
                or _shim_cgroup(options):
            return ""
        with shimgroups.Lock(os.path.dirname(bundle.path), enabled=True):
            address = shimgroups.group_address(bundle.id, bundle.path, self.grpc_address,
                                               bundle.namespace, False,
                                               group_size=binary.group_size)
            path = socket_path(address)
            if not _serving(path):
                return ""
            bundle.write(ADDRESS_FILE, address)
            bundle.write(BINARY_FILE, binary.path)
        log.debug("task %s joins the running shim at %s (no shim start)", bundle.id, path)
        return path

    def _is_own_shim(self, binary: ShimBinary) -> bool:
        """Whether ``binary`` is Berth's shim installed beside this berthd (the same code)."""
        return os.path.basename(binary.path) == BERTH_SHIM_BINARY \
            and os.path.dirname(binary.path) == os.path.dirname(binary.daemon_binary)

    def _start_own_shim(self, binary: ShimBinary, bundle: Bundle,
                        options: AnyValue | None) -> str:
        """The socket of the shim serving the task, reached by doing in berthd what the shim
        binary's ``start`` would do (berth.shimlaunch: pick the group and join its running
        shim, or bind its socket and have the zygote fork a shim on it), without the binary's
        new interpreter (20-40 ms). "" when a shim is needed and the zygote cannot be had:
        then ``start`` runs, and may start the shim as an interpreter of its own, in the
        bundle."""
        from berth import shimlaunch

        try:
            address, started = shimlaunch.start(
                bundle.id, bundle.namespace, self.grpc_address, bundle.path, binary.env(bundle),
                shim_cgroup=_shim_cgroup(options), group_size=binary.group_size, fallback=False)
        except shimlaunch.NoZygote as err:
            log.debug("task %s: no shim zygote (%s): running the shim binary", bundle.id, err)
            return ""
        except (OSError, RuntimeError, shimlaunch.Unanswered) as err:
            raise errdefs.Internal(f"starting the shim for task {bundle.id}: {err}") from err
        bundle.write(BINARY_FILE, binary.path)
        path = socket_path(address)
        if started:
            log.debug("task %s: shim started by berthd through the zygote", bundle.id)
        else:
            log.debug("task %s joins the running shim at %s (no shim start)", bundle.id, path)
        return path

    def _track(self, task: ShimTask) -> None:
        with self._lock:
            self._tasks[(task.namespace, task.id)] = task
        task.shim.on_lost(lambda: self._shim_lost(task))

    def _shim_lost(self, task: ShimTask) -> None:
        """The shim of a task died under us: forget the task and clean up after it."""
        with self._lock:
            if self._tasks.get((task.namespace, task.id)) is not task:
                return  # released on purpose meanwhile
            del self._tasks[(task.namespace, task.id)]
            task.gone = True
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
                shim.Shutdown(api.ShutdownRequest(id=bundle.id, now=True))
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

    def delete(self, task_id: str) -> Exit:
        task = self.get(task_id)
        resp = task.shim.Delete(api.DeleteRequest(id=task_id))
        self._release(task)
        return shimproto.deleted(resp)

    def _release(self, task: ShimTask) -> None:
        """Forget the task (first, so its shim going away is not taken for a death) and stop
        its shim."""
        with self._lock:
            self._tasks.pop((task.namespace, task.id), None)
            task.gone = True
        with contextlib.suppress(errdefs.BerthError):
            task.shim.Shutdown(api.ShutdownRequest(id=task.id))
        task.shim.close()
        if task.logs is not None:
            task.logs.close()
        try:
            task.bundle.delete()
        except (OSError, errdefs.BerthError) as err:
            log.warning("task %s: bundle not removed: %s", task.id, err)

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
            state = shim.State(api.StateRequest(id=bundle.id))
        except BaseException:
            shim.close()
            raise
        runtime = ""
        with contextlib.suppress(errdefs.NotFound):
            runtime = self.md.containers.get(bundle.id).runtime.name
        task = ShimTask(bundle.id, bundle.namespace, bundle, shim, runtime, state.pid,
                        ShimLog(bundle, self.loop.loop))
        self._track(task)
        log.info("task %s/%s: reconnected to its shim (pid %d)", bundle.namespace, bundle.id,
                 state.pid)

    def _cleanup_dead(self, bundle: Bundle) -> None:
        path = bundle.read(BINARY_FILE)
        exit_ = Exit(DEAD_EXIT_STATUS)
        if path and os.path.exists(path):
            try:
                exit_ = self._binary(path).delete(bundle)
            except errdefs.BerthError as err:
                log.warning("task %s: shim delete failed: %s", bundle.id, err)
        self.exchange.publish("/tasks/exit", events_pb.TaskExit(
            container_id=bundle.id, id=bundle.id, pid=exit_.pid, exit_status=exit_.status,
            exited_at=timestamp(exit_.exited_at)))
        self.exchange.publish("/tasks/delete", events_pb.TaskDelete(
            container_id=bundle.id, id=bundle.id, pid=exit_.pid, exit_status=exit_.status,
            exited_at=timestamp(exit_.exited_at)))
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


if TYPE_CHECKING:  # mypy holds the manager and its tasks to the Protocols they implement
    _RUNTIME: type[Runtime] = TaskManager
    _TASK: type[Task] = ShimTask


def _serving(path: str) -> bool:
    """Whether a shim accepts connections on ``path``."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _shim_cgroup(options: AnyValue | None) -> str:
    """The shim cgroup runc options ask for ("" for none)."""
    if options is None or not options.value \
            or options.type_url.rsplit("/", 1)[-1] != "containerd.runc.v1.Options":
        return ""
    from berth.api.runtime.runc.options import oci_pb2

    return str(oci_pb2.Options.FromString(options.value).shim_cgroup)
