"""The ``containerd.task.v2.Task`` service: what containerd and berthd call on the shim.

Each RPC is ``async def Name(self, ctx, request) -> response`` with the request and response
messages of ``containerd.task.v2.Task`` (the shape :mod:`berth.ttrpc` serves). A shim usually
holds one container; with grouping (a pod) it holds several, keyed by container id.
``exec_id`` selects an exec'd process; empty means the container's init.

Errors follow containerd's shim: an unknown container or exec id is NotFound, a duplicate exec
id AlreadyExists, a call the process's state forbids FailedPrecondition, a runtime failure
carries the runtime's message (UNKNOWN). Checkpoint is Unimplemented.

Events (``/tasks/create``, ``start``, ``exec-added``, ``exec-started``, ``paused``,
``resumed``, ``oom``, ``exit``, ``delete``) go to the :class:`~berth.shim.events.Publisher`; a
process's exit is never published before its start: exits that come while Start runs wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from berth import errdefs, identifiers
from berth.api.events import task_pb2 as events
from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.api.types.task import task_pb2 as types
from berth.shim.container import Container
from berth.shim.events import Publisher
from berth.shim.process import Process, in_background, signal_number
from berth.shim.reaper import Exit, Reaper
from berth.shim.stdio import StdioRequest
from berth.shimgroups import bundle_inode
from berth.ttrpc.server import RequestContext

log = logging.getLogger("berth.shim")

_EMPTY = empty_pb2.Empty()
_STATUS = {"created": types.CREATED, "running": types.RUNNING, "stopped": types.STOPPED,
           "paused": types.PAUSED, "pausing": types.PAUSING}
PROCESS_DETAILS_TYPE = "containerd.runc.v1.ProcessDetails"


S = TypeVar("S")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def _uninterrupted(method: Callable[[S, RequestContext, Req], Awaitable[Resp]]
                   ) -> Callable[[S, RequestContext, Req], Awaitable[Resp]]:
    """Let a call that changes the container finish even if its caller goes away or times
    out (ttrpc cancels the handler then): half a ``runc create`` helps nobody."""

    async def call(self: S, ctx: RequestContext, request: Req) -> Resp:
        task = asyncio.ensure_future(method(self, ctx, request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)  # nobody else will look at its outcome
            raise

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("abandoned call failed: %s", task.exception())


def _timestamp(target: Timestamp, at: float | None) -> None:
    if at is not None:
        target.FromNanoseconds(int(at * 1e9))


class TaskService:
    def __init__(self, namespace: str, reaper: Reaper, publisher: Publisher,
                 on_idle_shutdown: Callable[[str], None], log_owner: str = "") -> None:
        self.namespace = namespace
        # whose bundle's ``log`` FIFO is our stderr: the task ``start`` ran for
        self.log_owner = log_owner
        # the tasks this shim was asked to create (or released unmade): id -> (bundle, its
        # inode). A bundle naming our socket that is not among them is a task on its way here
        # (see berth.shimgroups).
        self._served: dict[str, tuple[str, int]] = {}
        self.reaper = reaper
        self.publisher = publisher
        self._shutdown = on_idle_shutdown
        self.ran = False
        """Whether a task's init ever started here (a shim only ever used by tasks that failed
        before they ran does not linger for a next one)."""
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        # processes whose Start is running, with the exit events held back meanwhile
        self._starting: dict[Process, list[Message]] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise errdefs.NotFound("container not created")
        return container

    def _publish(self, event: Message) -> None:
        self.publisher.publish(event)

    def _watch(self, container: Container, process: Process, since: float) -> None:
        """Follow ``process`` (its pid read from runc's pid file) to its exit; ``since``:
        before the runc command that started it (see :meth:`Reaper.watch`)."""
        self.reaper.watch(process.pid, lambda exit_: self._exited(container, process, exit_),
                          since=since)

    def _exited(self, container: Container, process: Process, exit_: Exit) -> None:
        log.debug("%s/%s (pid %d) exited with %d", container.id, process.id, exit_.pid,
                  exit_.status)
        if self.containers.get(container.id) is not container:
            return  # deleted before it exited (a created container's init)
        if process is container.init and container.kill_all_on_exit:
            # As containerd's shim: the rest of the container is killed before the exit is
            # known. A daemon that deletes the task once it sees the exit must not find runc
            # freezing the cgroup for the kill ("cannot delete container ... paused").
            in_background(self._kill_all_then_exit(container, process, exit_))
            return
        self._finish_exit(container, process, exit_)

    async def _kill_all_then_exit(self, container: Container, process: Process,
                                  exit_: Exit) -> None:
        try:
            await self._kill_all(container)
        finally:
            self._finish_exit(container, process, exit_)

    def _finish_exit(self, container: Container, process: Process, exit_: Exit) -> None:
        process.set_exited(exit_)
        event = events.TaskExit(container_id=container.id, id=process.id, pid=exit_.pid,
                                exit_status=exit_.status)
        _timestamp(event.exited_at, exit_.at)
        held = self._starting.get(process)
        if held is not None:
            held.append(event)
        else:
            self._publish(event)

    def served(self) -> dict[str, int]:
        """The tasks this shim knows, with their bundle's inode (for grouping.joining)."""
        return {cid: inode for cid, (_bundle, inode) in self._served.items()}

    def release(self, task_id: str, bundle: str) -> None:
        """Count ``task_id`` (in ``bundle``) as known though it was never created here: its
        daemon is done with it (Shutdown named it)."""
        self._served.setdefault(task_id, (bundle, bundle_inode(bundle)))

    def _forget_gone(self) -> None:
        """Forget the served tasks that are deleted and whose bundle is gone too."""
        for cid, (bundle, inode) in list(self._served.items()):
            if cid not in self.containers and cid not in self._creating \
                    and bundle_inode(bundle) != inode:
                del self._served[cid]

    def _hand_over_log(self) -> None:
        """The daemon reads a bundle's ``log`` FIFO only while its task exists: when the task
        whose FIFO is our stderr goes, a shim serving others (a group) writes to one of
        theirs instead."""
        for other in self.containers.values():
            try:
                fd = os.open(os.path.join(other.bundle, "log"),
                             os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.dup2(fd, 2)
            finally:
                os.close(fd)
            self.log_owner = other.id
            log.debug("shim log goes to task %s's bundle now", other.id)
            return

    async def _kill_all(self, container: Container) -> None:
        try:
            await container.ctx.runc.kill(self.reaper, container.id, 9, all_processes=True)
        except (errdefs.BerthError, OSError) as err:
            log.debug("kill --all after init exit of %s: %s", container.id, err)

    # -- RPCs ------------------------------------------------------------------------------

    async def State(self, ctx: RequestContext, request: api.StateRequest) -> api.StateResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        response = api.StateResponse(
            id=process.id, bundle=container.bundle, pid=process.pid,
            status=_STATUS.get(process.status(), types.UNKNOWN), stdin=process.stdio.stdin,
            stdout=process.stdio.stdout, stderr=process.stdio.stderr,
            terminal=process.stdio.terminal, exit_status=process.exit_status,
            exec_id=request.exec_id)
        _timestamp(response.exited_at, process.exited_at)
        return response

    @_uninterrupted
    async def Create(self, ctx: RequestContext,
                     request: api.CreateTaskRequest) -> api.CreateTaskResponse:
        identifiers.validate(request.id, "container id")
        if request.checkpoint:
            raise errdefs.NotImplementedByBerth("restoring from a checkpoint is not supported")
        if request.id in self.containers or request.id in self._creating:
            raise errdefs.AlreadyExists(f"container {request.id} already exists in this shim")
        self._creating.add(request.id)
        self._served[request.id] = (request.bundle, bundle_inode(request.bundle))
        started = time.monotonic()
        try:
            container = await Container.create(request, self.namespace, self.reaper)
        finally:
            self._creating.discard(request.id)
        self.containers[request.id] = container
        self._watch(container, container.init, started)
        if self.log_owner not in self.containers:  # its task failed or went while we created
            self._hand_over_log()
        event = events.TaskCreate(
            container_id=request.id, bundle=request.bundle, rootfs=request.rootfs,
            io=events.TaskIO(stdin=request.stdin, stdout=request.stdout,
                             stderr=request.stderr, terminal=request.terminal),
            checkpoint=request.checkpoint, pid=container.init.pid)
        self._publish(event)
        return api.CreateTaskResponse(pid=container.init.pid)

    @_uninterrupted
    async def Start(self, ctx: RequestContext, request: api.StartRequest) -> api.StartResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        held: list[Message] = []
        self._starting[process] = held
        started = time.monotonic()
        try:
            await process.start()
            if request.exec_id:
                self._watch(container, process, started)
                self._publish(events.TaskExecStarted(container_id=container.id,
                                                     exec_id=request.exec_id, pid=process.pid))
            else:
                self.ran = True
                if container.oom is None and container.cgroup is not None:
                    container.oom = container.cgroup.watch_oom(
                        lambda: self._publish(events.TaskOOM(container_id=container.id)))
                self._publish(events.TaskStart(container_id=container.id, pid=process.pid))
        finally:
            del self._starting[process]
            for event in held:
                self._publish(event)
        return api.StartResponse(pid=process.pid)

    @_uninterrupted
    async def Delete(self, ctx: RequestContext, request: api.DeleteRequest) -> api.DeleteResponse:
        container = self._container(request.id)
        process = await container.delete(request.exec_id)
        if not request.exec_id:
            if self.containers.get(request.id) is container:
                del self.containers[request.id]
            if container.id == self.log_owner:
                self._hand_over_log()
            self._forget_gone()
            event = events.TaskDelete(container_id=container.id, pid=process.pid,
                                      exit_status=process.exit_status, id=container.id)
            _timestamp(event.exited_at, process.exited_at)
            self._publish(event)
        response = api.DeleteResponse(pid=process.pid, exit_status=process.exit_status)
        _timestamp(response.exited_at, process.exited_at)
        return response

    async def Pids(self, ctx: RequestContext, request: api.PidsRequest) -> api.PidsResponse:
        container = self._container(request.id)
        pids = await container.ctx.runc.ps(self.reaper, container.id)
        by_pid = {p.pid: p.id for p in container.execs.values() if p.pid}
        response = api.PidsResponse()
        for pid in pids:
            info = response.processes.add(pid=pid)
            exec_id = by_pid.get(pid)
            if exec_id is not None:
                from berth.api.runtime.runc.options import oci_pb2

                info.info.type_url = PROCESS_DETAILS_TYPE
                info.info.value = oci_pb2.ProcessDetails(exec_id=exec_id).SerializeToString()
        return response

    @_uninterrupted
    async def Pause(self, ctx: RequestContext, request: api.PauseRequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        await container.init.pause()
        self._publish(events.TaskPaused(container_id=container.id))
        return _EMPTY

    @_uninterrupted
    async def Resume(self, ctx: RequestContext, request: api.ResumeRequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        await container.init.resume()
        self._publish(events.TaskResumed(container_id=container.id))
        return _EMPTY

    async def Checkpoint(self, ctx: RequestContext,
                         request: api.CheckpointTaskRequest) -> empty_pb2.Empty:
        self._container(request.id)
        raise errdefs.NotImplementedByBerth("checkpoint is not supported by the berth shim")

    @_uninterrupted
    async def Kill(self, ctx: RequestContext, request: api.KillRequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        sig = signal_number(request.signal)
        if request.exec_id:
            exec_process = container.execs.get(request.exec_id)
            if exec_process is None:
                raise errdefs.NotFound(f"process does not exist {request.exec_id}")
            await exec_process.kill(sig)
        else:
            await container.init.kill(sig, all_processes=request.all)
        return _EMPTY

    @_uninterrupted
    async def Exec(self, ctx: RequestContext, request: api.ExecProcessRequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        identifiers.validate(request.exec_id, "exec id")
        stdio = StdioRequest(request.stdin, request.stdout, request.stderr, request.terminal)
        container.add_exec(request.exec_id, stdio, request.spec.value)
        self._publish(events.TaskExecAdded(container_id=container.id, exec_id=request.exec_id))
        return _EMPTY

    async def ResizePty(self, ctx: RequestContext,
                        request: api.ResizePtyRequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        container.process(request.exec_id).resize(request.width, request.height)
        return _EMPTY

    async def CloseIO(self, ctx: RequestContext, request: api.CloseIORequest) -> empty_pb2.Empty:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        if request.stdin:
            process.close_stdin()
        return _EMPTY

    @_uninterrupted
    async def Update(self, ctx: RequestContext, request: api.UpdateTaskRequest) -> empty_pb2.Empty:
        from berth.shim.runc import check_resources  # (loaded already: the shim drives runc)

        # Bounded at the edge, before any work: a shim serves its whole group from one loop.
        check_resources(request.resources.value)
        container = self._container(request.id)
        await container.init.update(request.resources.value)
        return _EMPTY

    async def Wait(self, ctx: RequestContext, request: api.WaitRequest) -> api.WaitResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        await process.wait()
        response = api.WaitResponse(exit_status=process.exit_status)
        _timestamp(response.exited_at, process.exited_at)
        return response

    async def Stats(self, ctx: RequestContext, request: api.StatsRequest) -> api.StatsResponse:
        container = self._container(request.id)
        cgroup = container.cgroup
        if cgroup is None or not cgroup.exists():
            raise errdefs.NotFound("cgroup does not exist")
        metrics = cgroup.stats()
        response = api.StatsResponse()
        response.stats.type_url = cgroup.type_url
        response.stats.value = metrics.SerializeToString()
        return response

    async def Connect(self, ctx: RequestContext,
                      request: api.ConnectRequest) -> api.ConnectResponse:
        container = self.containers.get(request.id)
        return api.ConnectResponse(shim_pid=os.getpid(),
                                   task_pid=container.init.pid if container else 0)

    def busy(self) -> bool:
        """Whether any task is here or on its way in."""
        return bool(self.containers or self._creating)

    async def Shutdown(self, ctx: RequestContext, request: api.ShutdownRequest) -> empty_pb2.Empty:
        if not self.busy():
            self._shutdown(request.id)  # (the task named is done with us, created or not)
        return _EMPTY

    # -- the end ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop watching; the containers themselves live on (a shim exits, its tasks stay)."""
        for container in self.containers.values():
            container.stop_watching()
            for process in container.processes():
                with contextlib.suppress(Exception):
                    process.close_stdin()

