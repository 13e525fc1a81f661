"""The runtime's types to and from the shim's protobuf messages (``containerd.task.v2`` and the
``containerd.types`` it uses). Private to berth.runtime: the API's messages are converted at
the gRPC edge (berth.services), these at the ttrpc one."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import any_pb2

from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.api.types import mount_pb2
from berth.api.types.task import task_pb2
from berth.clock import from_timestamp
from berth.containers import AnyValue
from berth.mount import Mount
from berth.runtime.runtime import IO, Exit, ProcessInfo, ProcessState, Status

_STATUS = {task_pb2.CREATED: Status.CREATED, task_pb2.RUNNING: Status.RUNNING,
           task_pb2.STOPPED: Status.STOPPED, task_pb2.PAUSED: Status.PAUSED,
           task_pb2.PAUSING: Status.PAUSING}


def mounts(ms: Iterable[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)
            for m in ms]


def any_message(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def any_value(message: any_pb2.Any) -> AnyValue:
    return AnyValue(message.type_url, message.value)


def state(resp: api.StateResponse) -> ProcessState:
    return ProcessState(
        pid=resp.pid, status=_STATUS.get(resp.status, Status.UNKNOWN),
        io=IO(resp.stdin, resp.stdout, resp.stderr, resp.terminal),
        exit_status=resp.exit_status, exited_at=from_timestamp(resp.exited_at))


def deleted(resp: api.DeleteResponse) -> Exit:
    return Exit(resp.exit_status, from_timestamp(resp.exited_at), resp.pid)


def waited(resp: api.WaitResponse) -> Exit:
    return Exit(resp.exit_status, from_timestamp(resp.exited_at))


def process_info(info: task_pb2.ProcessInfo) -> ProcessInfo:
    return ProcessInfo(info.pid, any_value(info.info) if info.HasField("info") else None)
