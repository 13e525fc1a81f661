"""What the CRI's pod and container services share: their dependencies (the local objects of the
layers below, through their Protocols), the in-memory index, the on-disk layout, the task
helpers, and the exit monitor.

On disk, as containerd's CRI lays it out::

    <cri root>/sandboxes/<id>/{hostname,hosts,resolv.conf}   files bound into the pod's containers
    <cri root>/containers/<id>/status                        a container's status (store.Status)
    <cri state>/sandboxes/<id>/shm                           the pod's /dev/shm (a tmpfs)
    <cri state>/containers/<id>/io/                          FIFOs, for runtimes not Berth's shim

Exits: one thread follows ``/tasks/exit`` in ``k8s.io`` on the event exchange; a container's
exit is recorded in its status (exit code, time, reason ``Completed``/``Error``/``OOMKilled``)
and its task deleted, a sandbox's exit makes it NOTREADY. The same reconciliation runs at start
(:meth:`Core.recover`) for what happened while berthd was down, and whenever a caller waits on
an exit (StopContainer, ExecSync), so nothing depends on an event arriving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from berth import errdefs, fsmode, leases, namespaces
from berth.api.events import task_pb2 as events_pb
from berth.containers import Store as ContainerStore
from berth.cri import NAMESPACE
from berth.cri.config import Config
from berth.cri.images import ImageService
from berth.cri.store import (
    CONTAINER_EXTENSION,
    SANDBOX_EXTENSION,
    Container,
    Index,
    Sandbox,
)
from berth.events import Exchange
from berth.mount import readonly, temp_mount
from berth.runtime.runtime import Exit, Runtime, Status, Task
from berth.snapshots import Snapshotter

log = logging.getLogger(__name__)

EXIT_TOPIC = "/tasks/exit"
OOM_TOPIC = "/tasks/oom"
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"


def new_id() -> str:
    """A CRI id: 64 hex digits (containerd's util.GenerateID)."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Paths:
    root: str
    state: str

    def sandbox_root(self, sandbox_id: str) -> str:
        return os.path.join(self.root, "sandboxes", sandbox_id)

    def sandbox_state(self, sandbox_id: str) -> str:
        return os.path.join(self.state, "sandboxes", sandbox_id)

    def shm(self, sandbox_id: str) -> str:
        return os.path.join(self.sandbox_state(sandbox_id), "shm")

    def container_root(self, container_id: str) -> str:
        return os.path.join(self.root, "containers", container_id)

    def container_state(self, container_id: str) -> str:
        return os.path.join(self.state, "containers", container_id)


class Core:
    """The CRI's shared state and dependencies."""

    def __init__(self, config: Config, images: ImageService, containers: ContainerStore,
                 snapshotter: Snapshotter, runtime: Runtime, paths: Paths,
                 lease_manager: leases.Manager, *,
                 exchange: Exchange | None = None,
                 berth_shim: Callable[[str, str], bool] = lambda runtime_type, path: True
                 ) -> None:
        """``berth_shim(runtime_type, runtime_path)``: whether that runtime is served by
        Berth's own shim (which writes CRI logs itself), else berthd copies output from FIFOs."""
        self.config = config
        self.images = images
        self.containers = containers
        self.snapshotter = snapshotter
        self.runtime = runtime
        self.paths = paths
        self.leases = lease_manager
        self.exchange = exchange
        self.berth_shim = berth_shim
        self.index = Index()
        self._stop = threading.Event()
        self._exit_handlers: list[Callable[[str, Exit], None]] = []
        self._oom_handlers: list[Callable[[str], None]] = []
        self._monitor: threading.Thread | None = None
        # Private to root (CVE-2021-41103): pods' files, FIFOs and status files are reached by
        # berthd and, through bind mounts, by the containers, never by a path walk of others.
        for d in (paths.root, paths.state):
            fsmode.private_dir(d)
        for d in (os.path.join(paths.root, "sandboxes"), os.path.join(paths.root, "containers"),
                  os.path.join(paths.state, "sandboxes"), os.path.join(paths.state, "containers")):
            fsmode.private_dir(d)

    # -- tasks --------------------------------------------------------------------------------

    def task(self, task_id: str) -> Task | None:
        with contextlib.suppress(errdefs.NotFound):
            return self.runtime.get(task_id)
        return None

    def wait_exit(self, task: Task, timeout: float | None, exec_id: str = "") -> Exit | None:
        """The exit of the task's init (or of ``exec_id``), waiting up to ``timeout`` seconds
        (None: forever); None if it is still running then."""
        result: list[Exit] = []
        error: list[BaseException] = []

        def wait() -> None:
            try:
                result.append(task.wait(exec_id))
            except errdefs.NotFound:
                result.append(Exit(0))
            except errdefs.BerthError as err:
                error.append(err)

        waiter = threading.Thread(target=wait, name=f"cri-wait-{task.id[:12]}", daemon=True)
        waiter.start()
        waiter.join(timeout)
        if error:
            raise error[0]
        return result[0] if result else None

    def remove_task(self, task_id: str) -> Exit | None:
        """Kill (if need be) and delete a task; its exit, None if there was no task."""
        task = self.task(task_id)
        if task is None:
            return None
        state = task.state()
        if state.status not in (Status.STOPPED, Status.CREATED):
            # SIGKILL to the init, as containerd's CRI stops a pod or container (runc's kill
            # --all freezes the cgroup, and a process that exits meanwhile can leave it frozen,
            # so that runc refuses to delete a "paused" container).
            with contextlib.suppress(errdefs.NotFound):
                task.kill(9)
            self.wait_exit(task, None)
        try:
            return self.runtime.delete(task_id)
        except errdefs.NotFound:
            return None

    # -- snapshots and records ---------------------------------------------------------------

    @contextlib.contextmanager
    def leased(self) -> Iterator[None]:
        """A lease for the block (as containerd's client takes one for NewContainer): what the
        block makes (a snapshot before its record exists) is safe from the garbage collector
        until the block ends."""
        lease = self.leases.create(f"cri-{new_id()[:16]}", {leases.LABEL_EXPIRE: _expiry()})
        try:
            with leases.use(lease.id):
                yield
        finally:
            self.leases.delete(lease.id)

    @contextlib.contextmanager
    def rootfs(self, key: str) -> Iterator[str]:
        """A snapshot mounted read-only for the block (to read its /etc/passwd and group)."""
        with temp_mount([readonly(m) for m in self.snapshotter.mounts(key)],
                        prefix="berth-cri-") as target:
            yield target

    def delete_record(self, record_id: str) -> None:
        """Delete a container record and its snapshot; gone already is fine."""
        with contextlib.suppress(errdefs.NotFound):
            self.containers.delete(record_id)
        with contextlib.suppress(errdefs.NotFound):
            self.snapshotter.remove(record_id)

    # -- exits ----------------------------------------------------------------------------------

    def on_exit(self, handler: Callable[[str, Exit], None]) -> None:
        """Call ``handler(task_id, exit)`` for each task init's exit in ``k8s.io``."""
        self._exit_handlers.append(handler)

    def on_oom(self, handler: Callable[[str], None]) -> None:
        """Call ``handler(task_id)`` when a task's cgroup runs out of memory in ``k8s.io``."""
        self._oom_handlers.append(handler)

    def start_monitor(self) -> None:
        if self.exchange is None or self._monitor is not None:
            return
        sub = self.exchange.subscribe([f'topic=="{EXIT_TOPIC}",namespace=="{NAMESPACE}"',
                                       f'topic=="{OOM_TOPIC}",namespace=="{NAMESPACE}"'])
        self._monitor = threading.Thread(target=self._follow, args=(sub,),
                                         name="cri-exit-monitor", daemon=True)
        self._monitor.start()

    def _follow(self, sub: object) -> None:
        from berth.events.exchange import Subscription

        assert isinstance(sub, Subscription)
        try:
            while not self._stop.is_set():
                env = sub.get(0.5)
                if env is None:
                    continue
                if env.topic == OOM_TOPIC:
                    oom = env.message
                    if not isinstance(oom, events_pb.TaskOOM):
                        oom = events_pb.TaskOOM.FromString(env.value)
                    for on_oom in self._oom_handlers:
                        on_oom(oom.container_id)
                    continue
                event = env.message
                if not isinstance(event, events_pb.TaskExit):
                    event = events_pb.TaskExit.FromString(env.value)
                if event.id and event.id != event.container_id:
                    continue  # an exec'd process
                exited = event.exited_at.seconds * 1_000_000_000 + event.exited_at.nanos
                self._exited(event.container_id, Exit(event.exit_status, exited, event.pid))
        finally:
            sub.close()

    def _exited(self, task_id: str, exit_: Exit) -> None:
        with namespaces.use(NAMESPACE):
            for handler in self._exit_handlers:
                try:
                    handler(task_id, exit_)
                except errdefs.BerthError as err:
                    log.warning("cri: handling the exit of task %s failed: %s", task_id, err)

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(2)

    # -- recovery -------------------------------------------------------------------------------

    def load_records(self) -> tuple[list[Sandbox], list[Container]]:
        """The pods and containers whose records are in ``k8s.io`` (after a restart)."""
        sandboxes: list[Sandbox] = []
        containers: list[Container] = []
        with namespaces.use(NAMESPACE):
            for record in self.containers.list():
                try:
                    if SANDBOX_EXTENSION in record.extensions:
                        sb = Sandbox.from_extension(record.extensions[SANDBOX_EXTENSION])
                        _same_id(record.id, sb.id)
                        sb.created_at = record.created_at
                        sandboxes.append(sb)
                    elif CONTAINER_EXTENSION in record.extensions:
                        c = Container.from_extension(record.extensions[CONTAINER_EXTENSION])
                        _same_id(record.id, c.id)
                        c.image_name = record.image
                        c.status_path = os.path.join(self.paths.container_root(c.id), "status")
                        c.io_dir = os.path.join(self.paths.container_state(c.id), "io")
                        with contextlib.suppress(OSError, errdefs.InvalidArgument):
                            c.load_status()
                        containers.append(c)
                except errdefs.InvalidArgument as err:
                    log.warning("cri: container record %s is not the CRI's: %s", record.id, err)
        return sandboxes, containers


def _same_id(record_id: str, extension_id: str) -> None:
    """A record's CRI metadata must name the record itself, and an id the CRI makes (64 hex
    digits): the id becomes directory names that are removed with the pod, so a record written
    through the containers API (``ctr -n k8s.io``) with another one must not steer that."""
    if extension_id != record_id or not _CRI_ID.fullmatch(extension_id):
        raise errdefs.InvalidArgument(
            f"its CRI metadata names {extension_id[:80]!r}, not the record's own id")


_CRI_ID = re.compile(r"[0-9a-f]{64}")


def remove_tree(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _expiry() -> str:
    """An expiry a day from now, as containerd's client gives its leases."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 24 * 3600))


def now_ns() -> int:
    return time.time_ns()
