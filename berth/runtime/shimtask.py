"""A task served by a shim: the :class:`~berth.runtime.runtime.Task` the task manager hands out.
Each method is one call to the task's shim (``containerd.task.v2.Task`` over ttrpc)."""

from __future__ import annotations

from collections.abc import Mapping

from berth import errdefs, identifiers
from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.containers import AnyValue
from berth.runtime import shimproto
from berth.runtime.bundle import Bundle
from berth.runtime.runtime import ExecOpts, Exit, ProcessInfo, ProcessState
from berth.runtime.shim import ShimLog
from berth.runtime.taskclient import TaskClient

# How long a task's state or stats may take (containerd's state timeout): a shim that cannot
# say in that time is stuck, and listing the other tasks must not wait for it.
STATE_TIMEOUT = 2.0


class ShimTask:
    def __init__(self, task_id: str, namespace: str, bundle: Bundle, shim: TaskClient,
                 runtime: str, pid: int = 0, logs: ShimLog | None = None) -> None:
        self.id = task_id
        self.namespace = namespace
        self.bundle = bundle
        self.shim = shim
        self.runtime = runtime
        self.pid = pid
        self.logs = logs
        self.gone = False  # deleted, or its shim died: see _client

    def __repr__(self) -> str:
        return f"ShimTask({self.namespace}/{self.id}, pid {self.pid}, shim {self.shim.address})"

    def _client(self) -> TaskClient:
        if self.gone:
            raise errdefs.NotFound(f"task {self.id} not found")
        return self.shim

    def state(self, exec_id: str = "") -> ProcessState:
        return shimproto.state(self._client().State(
            api.StateRequest(id=self.id, exec_id=exec_id), timeout=STATE_TIMEOUT))

    def start(self, exec_id: str = "") -> int:
        resp = self._client().Start(api.StartRequest(id=self.id, exec_id=exec_id))
        if not exec_id:
            self.pid = resp.pid
        return resp.pid

    def kill(self, signal: int, *, all_processes: bool = False, exec_id: str = "") -> None:
        self._client().Kill(api.KillRequest(id=self.id, exec_id=exec_id, signal=signal,
                                            all=all_processes))

    def exec(self, exec_id: str, opts: ExecOpts) -> None:
        identifiers.validate(exec_id, "exec id")
        io = opts.io
        self._client().Exec(api.ExecProcessRequest(
            id=self.id, exec_id=exec_id, terminal=io.terminal, stdin=io.stdin,
            stdout=io.stdout, stderr=io.stderr, spec=shimproto.any_message(opts.spec)))

    def delete_process(self, exec_id: str) -> Exit:
        if not exec_id:
            raise errdefs.InvalidArgument("delete the task itself, not its init process")
        return shimproto.deleted(self._client().Delete(
            api.DeleteRequest(id=self.id, exec_id=exec_id)))

    def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        self._client().ResizePty(api.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width,
                                                      height=height))

    def close_io(self, exec_id: str = "", *, stdin: bool = True) -> None:
        self._client().CloseIO(api.CloseIORequest(id=self.id, exec_id=exec_id, stdin=stdin))

    def pause(self) -> None:
        self._client().Pause(api.PauseRequest(id=self.id))

    def resume(self) -> None:
        self._client().Resume(api.ResumeRequest(id=self.id))

    def pids(self) -> list[ProcessInfo]:
        resp = self._client().Pids(api.PidsRequest(id=self.id))
        return [shimproto.process_info(p) for p in resp.processes]

    def update(self, resources: AnyValue, annotations: Mapping[str, str] | None = None) -> None:
        self._client().Update(api.UpdateTaskRequest(
            id=self.id, resources=shimproto.any_message(resources),
            annotations=dict(annotations or {})))

    def stats(self) -> AnyValue:
        resp = self._client().Stats(api.StatsRequest(id=self.id), timeout=STATE_TIMEOUT)
        return shimproto.any_value(resp.stats)

    def wait(self, exec_id: str = "") -> Exit:
        return shimproto.waited(self._client().Wait(
            api.WaitRequest(id=self.id, exec_id=exec_id), timeout=None))
