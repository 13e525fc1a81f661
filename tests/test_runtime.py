"""The runtime's typed edges, checked without a shim: the task client covers the shim's Task
service method for method, with its messages; the command line berthd builds is the one Berth's
shim parses; shim messages become the runtime's types (timestamps, statuses, absent fields)."""

from __future__ import annotations

import typing

from google.protobuf import any_pb2
from google.protobuf.message_factory import GetMessageClass

from berth import shimcontract
from berth.api.runtime.task.v2 import shim_pb2
from berth.api.types.task import task_pb2
from berth.containers import AnyValue
from berth.runtime import shimproto
from berth.runtime.runtime import Status
from berth.runtime.taskclient import SERVICE, TaskClient
from berth.shim.cmdline import parse_flags

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


def test_task_client_has_every_rpc_with_its_messages() -> None:
    assert TASK.full_name == SERVICE
    for method in TASK.methods:
        hints = typing.get_type_hints(getattr(TaskClient, method.name))
        assert hints["request"] is GetMessageClass(method.input_type), method.name
        assert hints["return"] is GetMessageClass(method.output_type), method.name


def test_the_shim_parses_the_command_line_berthd_builds() -> None:
    argv = shimcontract.command("/bin/shim", shimcontract.ACTION_START, namespace="ns",
                                address="/run/berth/berth.sock", publish_binary="/bin/berthd",
                                task_id="c1")
    assert argv[0] == "/bin/shim"
    flags = parse_flags(argv[1:])
    assert (flags.namespace, flags.address, flags.publish_binary, flags.id, flags.action) == (
        "ns", "/run/berth/berth.sock", "/bin/berthd", "c1", "start")


def test_shim_messages_become_runtime_types() -> None:
    st = shimproto.state(shim_pb2.StateResponse(pid=7, status=task_pb2.RUNNING, stdin="in",
                                                terminal=True))
    assert (st.pid, st.status, st.io.stdin, st.io.terminal, st.exited_at) == (
        7, Status.RUNNING, "in", True, 0)
    assert shimproto.state(shim_pb2.StateResponse(status=42)).status is Status.UNKNOWN
    done = shim_pb2.DeleteResponse(pid=7, exit_status=3)
    done.exited_at.FromNanoseconds(1_700_000_000_123_456_789)
    exit_ = shimproto.deleted(done)
    assert (exit_.pid, exit_.status, exit_.exited_at) == (7, 3, 1_700_000_000_123_456_789)
    go_zero = shim_pb2.WaitResponse(exit_status=1)
    go_zero.exited_at.seconds = -62135596800  # Go's zero time: unset
    assert shimproto.waited(go_zero).exited_at == 0
    bare, detailed = shimproto.process_info(task_pb2.ProcessInfo(pid=1)), shimproto.process_info(
        task_pb2.ProcessInfo(pid=2, info=any_pb2.Any(type_url="t", value=b"v")))
    assert (bare.info, detailed.info) == (None, AnyValue("t", b"v"))
