"""containerd.services.tasks.v1.Tasks over a :class:`~berth.runtime.runtime.Runtime`: the API's
messages to the runtime's types and back, one call into the runtime per method."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, empty_pb2

from berth import errdefs, filters
from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc
from berth.api.types import metrics_pb2
from berth.api.types.task import task_pb2
from berth.clock import now_ns
from berth.containers import AnyValue
from berth.runtime.runtime import IO, CreateOpts, ExecOpts, Exit, ProcessState, Runtime, Status
from berth.services.convert import from_mounts, timestamp

_STATUS = {Status.UNKNOWN: task_pb2.UNKNOWN, Status.CREATED: task_pb2.CREATED,
           Status.RUNNING: task_pb2.RUNNING, Status.STOPPED: task_pb2.STOPPED,
           Status.PAUSED: task_pb2.PAUSED, Status.PAUSING: task_pb2.PAUSING}


def _process(container_id: str, exec_id: str, st: ProcessState) -> task_pb2.Process:
    return task_pb2.Process(
        container_id=container_id, id=exec_id or container_id, pid=st.pid,
        status=_STATUS[st.status], stdin=st.io.stdin, stdout=st.io.stdout,
        stderr=st.io.stderr, terminal=st.io.terminal, exit_status=st.exit_status,
        exited_at=timestamp(st.exited_at))


def _deleted(id_: str, exit_: Exit) -> pb.DeleteResponse:
    return pb.DeleteResponse(id=id_, pid=exit_.pid, exit_status=exit_.status,
                             exited_at=timestamp(exit_.exited_at))


def _value(message: any_pb2.Any) -> AnyValue:
    return AnyValue(message.type_url, message.value)


def _message(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def Create(self, request: pb.CreateTaskRequest,
               context: grpc.ServicerContext) -> pb.CreateTaskResponse:
        if request.checkpoint.digest:
            raise errdefs.NotImplementedByBerth("creating a task from a checkpoint")
        task = self.runtime.create(request.container_id, CreateOpts(
            rootfs=tuple(from_mounts(request.rootfs)),
            io=IO(request.stdin, request.stdout, request.stderr, request.terminal),
            runtime_options=_value(request.options) if request.HasField("options") else None,
            runtime_path=request.runtime_path))
        return pb.CreateTaskResponse(container_id=task.id, pid=task.pid)

    def Start(self, request: pb.StartRequest, context: grpc.ServicerContext) -> pb.StartResponse:
        return pb.StartResponse(pid=self.runtime.get(request.container_id).start(request.exec_id))

    def Delete(self, request: pb.DeleteTaskRequest,
               context: grpc.ServicerContext) -> pb.DeleteResponse:
        return _deleted(request.container_id, self.runtime.delete(request.container_id))

    def DeleteProcess(self, request: pb.DeleteProcessRequest,
                      context: grpc.ServicerContext) -> pb.DeleteResponse:
        task = self.runtime.get(request.container_id)
        return _deleted(request.exec_id, task.delete_process(request.exec_id))

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        st = self.runtime.get(request.container_id).state(request.exec_id)
        return pb.GetResponse(process=_process(request.container_id, request.exec_id, st))

    def List(self, request: pb.ListTasksRequest,
             context: grpc.ServicerContext) -> pb.ListTasksResponse:
        flt = filters.parse([request.filter] if request.filter else [])
        out = []
        for task, state in self.runtime.states():
            proc = _process(task.id, "", state)
            if flt.match(functools.partial(_adapt, proc)):
                out.append(proc)
        return pb.ListTasksResponse(tasks=out)

    def Kill(self, request: pb.KillRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).kill(request.signal, all_processes=request.all,
                                                     exec_id=request.exec_id)
        return empty_pb2.Empty()

    def Exec(self, request: pb.ExecProcessRequest,
             context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).exec(request.exec_id, ExecOpts(
            _value(request.spec),
            IO(request.stdin, request.stdout, request.stderr, request.terminal)))
        return empty_pb2.Empty()

    def ResizePty(self, request: pb.ResizePtyRequest,
                  context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).resize_pty(request.width, request.height,
                                                           request.exec_id)
        return empty_pb2.Empty()

    def CloseIO(self, request: pb.CloseIORequest,
                context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).close_io(request.exec_id, stdin=request.stdin)
        return empty_pb2.Empty()

    def Pause(self, request: pb.PauseTaskRequest,
              context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).pause()
        return empty_pb2.Empty()

    def Resume(self, request: pb.ResumeTaskRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).resume()
        return empty_pb2.Empty()

    def ListPids(self, request: pb.ListPidsRequest,
                 context: grpc.ServicerContext) -> pb.ListPidsResponse:
        return pb.ListPidsResponse(processes=[
            task_pb2.ProcessInfo(pid=p.pid, info=None if p.info is None else _message(p.info))
            for p in self.runtime.get(request.container_id).pids()])

    def Checkpoint(self, request: pb.CheckpointTaskRequest,
                   context: grpc.ServicerContext) -> pb.CheckpointTaskResponse:
        raise errdefs.NotImplementedByBerth("checkpointing tasks is not supported yet")

    def Update(self, request: pb.UpdateTaskRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.runtime.get(request.container_id).update(_value(request.resources),
                                                       request.annotations)
        return empty_pb2.Empty()

    def Metrics(self, request: pb.MetricsRequest,
                context: grpc.ServicerContext) -> pb.MetricsResponse:
        flt = filters.parse(request.filters)
        wanted = [task for task in self.runtime.list()
                  if flt.match(functools.partial(_adapt_task, task.id, task.runtime))]
        return pb.MetricsResponse(metrics=[
            metrics_pb2.Metric(timestamp=timestamp(now_ns()), id=task.id, data=_message(data))
            for task, data in self.runtime.stats_of(wanted)])

    def Wait(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.WaitResponse:
        exit_ = self.runtime.get(request.container_id).wait(request.exec_id)
        return pb.WaitResponse(exit_status=exit_.status, exited_at=timestamp(exit_.exited_at))


def _adapt(proc: task_pb2.Process, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    if path[0] in ("id", "container_id"):
        return proc.container_id, True
    if path[0] == "pid":
        return str(proc.pid), True
    if path[0] == "status":
        return task_pb2.Status.Name(proc.status).lower(), True
    return "", False


def _adapt_task(task_id: str, runtime: str, path: Sequence[str]) -> tuple[str, bool]:
    if path and path[0] == "id":
        return task_id, True
    if path and path[0] == "runtime":
        return runtime, True
    return "", False
