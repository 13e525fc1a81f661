"""containerd.services.tasks.v1.Tasks over the task manager."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc
from google.protobuf import empty_pb2

from berth import errdefs, filters
from berth.api.runtime.task.v2 import shim_pb2
from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc
from berth.api.types import metrics_pb2
from berth.api.types.task import task_pb2
from berth.clock import now_ns
from berth.runtime.manager import CreateRequest, TaskManager
from berth.services.convert import timestamp


def _process(container_id: str, exec_id: str, st: shim_pb2.StateResponse) -> task_pb2.Process:
    return task_pb2.Process(
        container_id=container_id, id=exec_id or container_id, pid=st.pid, status=st.status,
        stdin=st.stdin, stdout=st.stdout, stderr=st.stderr, terminal=st.terminal,
        exit_status=st.exit_status, exited_at=st.exited_at)


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, manager: TaskManager) -> None:
        self.tasks = manager

    def Create(self, request: pb.CreateTaskRequest,
               context: grpc.ServicerContext) -> pb.CreateTaskResponse:
        if request.checkpoint.digest:
            raise errdefs.NotImplementedByBerth("creating a task from a checkpoint")
        task = self.tasks.create(CreateRequest(
            request.container_id, list(request.rootfs), request.stdin, request.stdout,
            request.stderr, request.terminal,
            request.options if request.HasField("options") else None, request.runtime_path))
        return pb.CreateTaskResponse(container_id=task.id, pid=task.pid)

    def Start(self, request: pb.StartRequest, context: grpc.ServicerContext) -> pb.StartResponse:
        return pb.StartResponse(pid=self.tasks.start(request.container_id, request.exec_id))

    def Delete(self, request: pb.DeleteTaskRequest,
               context: grpc.ServicerContext) -> pb.DeleteResponse:
        r = self.tasks.delete(request.container_id)
        return pb.DeleteResponse(id=request.container_id, pid=r.pid, exit_status=r.exit_status,
                                 exited_at=r.exited_at)

    def DeleteProcess(self, request: pb.DeleteProcessRequest,
                      context: grpc.ServicerContext) -> pb.DeleteResponse:
        r = self.tasks.delete_process(request.container_id, request.exec_id)
        return pb.DeleteResponse(id=request.exec_id, pid=r.pid, exit_status=r.exit_status,
                                 exited_at=r.exited_at)

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        st = self.tasks.state(request.container_id, request.exec_id)
        return pb.GetResponse(process=_process(request.container_id, request.exec_id, st))

    def List(self, request: pb.ListTasksRequest,
             context: grpc.ServicerContext) -> pb.ListTasksResponse:
        flt = filters.parse([request.filter] if request.filter else [])
        out = []
        for task, state in self.tasks.states():
            proc = _process(task.id, "", state)
            if flt.match(functools.partial(_adapt, proc)):
                out.append(proc)
        return pb.ListTasksResponse(tasks=out)

    def Kill(self, request: pb.KillRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.kill(request.container_id, request.exec_id, request.signal, request.all)
        return empty_pb2.Empty()

    def Exec(self, request: pb.ExecProcessRequest,
             context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.exec(request.container_id, request.exec_id, request.spec,
                        stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                        terminal=request.terminal)
        return empty_pb2.Empty()

    def ResizePty(self, request: pb.ResizePtyRequest,
                  context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.resize_pty(request.container_id, request.exec_id, request.width,
                              request.height)
        return empty_pb2.Empty()

    def CloseIO(self, request: pb.CloseIORequest,
                context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.close_io(request.container_id, request.exec_id, request.stdin)
        return empty_pb2.Empty()

    def Pause(self, request: pb.PauseTaskRequest,
              context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.pause(request.container_id)
        return empty_pb2.Empty()

    def Resume(self, request: pb.ResumeTaskRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.resume(request.container_id)
        return empty_pb2.Empty()

    def ListPids(self, request: pb.ListPidsRequest,
                 context: grpc.ServicerContext) -> pb.ListPidsResponse:
        return pb.ListPidsResponse(processes=self.tasks.pids(request.container_id).processes)

    def Checkpoint(self, request: pb.CheckpointTaskRequest,
                   context: grpc.ServicerContext) -> pb.CheckpointTaskResponse:
        raise errdefs.NotImplementedByBerth("checkpointing tasks is not supported yet")

    def Update(self, request: pb.UpdateTaskRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.tasks.update(request.container_id, request.resources, request.annotations)
        return empty_pb2.Empty()

    def Metrics(self, request: pb.MetricsRequest,
                context: grpc.ServicerContext) -> pb.MetricsResponse:
        flt = filters.parse(request.filters)
        wanted = [task for task in self.tasks.list()
                  if flt.match(functools.partial(_adapt_task, task.id, task.runtime))]
        return pb.MetricsResponse(metrics=[
            metrics_pb2.Metric(timestamp=timestamp(now_ns()), id=task.id, data=data)
            for task, data in self.tasks.stats_of(wanted)])

    def Wait(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.WaitResponse:
        r = self.tasks.wait(request.container_id, request.exec_id)
        return pb.WaitResponse(exit_status=r.exit_status, exited_at=r.exited_at)


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
