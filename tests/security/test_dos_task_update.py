"""``Tasks.Update`` cannot stall a shim, whatever its size.

Berth's shim groups up to 16 containers of a namespace in one process, all served by one asyncio
loop. It handed an Update's resources (an OCI ``LinuxResources`` JSON document) to ``runc update
--resources -`` by writing them into a pipe with blocking writes, before runc even ran: a
document over the pipe's 64 KiB buffer blocked that write for ever, and with it every container
of the shim (no State, Exec, Kill or Wait answered again). containerd's shim (go-runc) feeds the
same stdin from a goroutine; Berth's now writes it as the pipe drains, and refuses documents
over 1 MiB (a real ``LinuxResources`` is a few KiB) with InvalidArgument naming the limit.

Both tests run two containers in one shim, send a large Update for one and need the other to
answer within a few seconds, then send an oversized one and need a clear error: first on the
shim's ttrpc API directly, then through berthd (started containers with the real ``ctr``; ctr
1.6 has no ``tasks update``, so the Update goes over berthd's gRPC API as containerd's client
sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Ctr
from daemon import Berthd
from google.protobuf import any_pb2
from images import ImageInfo
from processes import pids_with_argument_pair
from test_shim import Shim, api, busybox_rootfs, container_spec, default_spec, run, workdir

from berth import errdefs
from berth.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from berth.api.types.task import task_pb2 as types

__all__ = ["busybox_rootfs", "default_spec", "workdir"]  # fixtures shared with test_shim

pytestmark = pytest.mark.needs_root

RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
#: How long the other container of the shim may take to answer: a blocked loop never does.
DEADLINE = 5.0
LARGE = 256 << 10  # well over a pipe's 64 KiB buffer, well under the limit
OVERSIZED = (1 << 20) + 1


def resources(size: int, pids_limit: int) -> bytes:
    """A ``LinuxResources`` document of at least ``size`` bytes: a pids limit runc applies, and
    a device rule list runc's ``update`` parses and ignores (it updates no device rules)."""
    rule = {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    count = size // len(json.dumps(rule)) + 1
    doc = {"pids": {"limit": pids_limit}, "devices": [rule] * count}
    data = json.dumps(doc).encode()
    assert len(data) >= size
    return data


def pids_max(pid: int) -> int:
    """The ``pids.max`` of the pids cgroup (v1 or v2) process ``pid`` is in."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/pids{path}/pids.max").read_text())
        if controllers == "":
            return int(Path(f"/sys/fs/cgroup{path}/pids.max").read_text())
    raise AssertionError(f"no pids cgroup for {pid}")


# -- on the shim's ttrpc API -------------------------------------------------------------------


def test_large_update_leaves_the_shim_serving(workdir: Path, busybox_rootfs: Path,
                                              default_spec: dict[str, Any]) -> None:
    group = f"dos-{uuid.uuid4().hex[:8]}"

    def spec() -> dict[str, Any]:
        s = container_spec(default_spec, ["sleep", "1000"])
        s["annotations"] = {"io.containerd.runc.v2.group": group}
        return s

    def update(shim: Shim, data: bytes) -> Any:
        return api.UpdateTaskRequest(id=shim.id, resources=any_pb2.Any(
            type_url=RESOURCES_URL, value=data))

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec()) as first:
            second = Shim("berth", workdir, busybox_rootfs, spec())
            try:
                second.join(first)
                for shim in (first, second):
                    await first.task.Create(shim.create_request())
                    await first.task.Start(api.StartRequest(id=shim.id))
                init = (await first.task.State(api.StateRequest(id=first.id))).pid

                # The large Update in flight: the other container still answers, and the
                # update itself arrives whole (runc applies the pids limit at its head).
                updating = asyncio.ensure_future(
                    first.task.Update(update(first, resources(LARGE, 321)), timeout=30))
                await asyncio.sleep(0.5)  # (the shim has the Update in hand)
                started = time.monotonic()
                state = await first.task.State(api.StateRequest(id=second.id),
                                                timeout=DEADLINE)
                assert state.status == types.RUNNING
                assert time.monotonic() - started < DEADLINE
                await asyncio.wait_for(updating, DEADLINE)
                assert pids_max(init) == 321

                # runc refusing a large document before reading it all: its error, at once
                # (what it left unread in the pipe is dropped, not waited on).
                with pytest.raises(errdefs.BerthError, match="OCI runtime update failed"):
                    await first.task.Update(update(first, b"x" * LARGE), timeout=DEADLINE)

                # Over the limit: refused, naming it, and the shim goes on serving.
                with pytest.raises(errdefs.InvalidArgument, match="1 MiB"):
                    await first.task.Update(update(first, resources(OVERSIZED, 123)),
                                            timeout=DEADLINE)
                assert pids_max(init) == 321
                state = await first.task.State(api.StateRequest(id=second.id),
                                                timeout=DEADLINE)
                assert state.status == types.RUNNING

                for shim in (first, second):
                    await first.task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
                    await first.task.Wait(api.WaitRequest(id=shim.id))
                    await first.task.Delete(api.DeleteRequest(id=shim.id))
            finally:
                await second.cleanup()

    run(main())


# -- through berthd ----------------------------------------------------------------------------


class Pair:
    """Two containers of one namespace on berthd (so in one shim); removed at the end, the
    shim killed by pid if it no longer answers."""

    def __init__(self, daemon: Berthd, image: ImageInfo) -> None:
        self.daemon = daemon
        self.namespace = f"dos-{uuid.uuid4().hex[:8]}"
        self.c = Ctr(daemon.address, self.namespace, timeout=60)
        self.ids = [f"upd-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"]
        self.started: list[str] = []
        self.c("images", "pull", "--plain-http", image.ref)
        for cid in self.ids:
            self.started.append(cid)
            self.c("run", "-d", image.ref, cid, "sleep", "1000")

    def bundle(self, cid: str) -> Path:
        return self.daemon.state / "io.containerd.runtime.v2.task" / self.namespace / cid

    def address(self, cid: str) -> str:
        return (self.bundle(cid) / "address").read_text().strip()

    def pid(self, cid: str) -> int:
        row = next(r for r in self.c("tasks", "ls").stdout.splitlines()
                   if r.split()[:1] == [cid])
        return int(row.split()[1])

    def update(self, cid: str, data: bytes, timeout: float) -> None:
        with grpc.insecure_channel(f"unix:{self.daemon.address}") as channel:
            tasks_pb2_grpc.TasksStub(channel).Update(
                tasks_pb2.UpdateTaskRequest(container_id=cid, resources=any_pb2.Any(
                    type_url=RESOURCES_URL, value=data)),
                metadata=(("containerd-namespace", self.namespace),), timeout=timeout)

    def close(self) -> None:
        quick = Ctr(self.daemon.address, self.namespace, timeout=15)
        shims = {self.address(cid) for cid in self.started if (self.bundle(cid) / "address")
                 .exists()}
        for cid in self.started:
            with contextlib.suppress(AssertionError):  # (a timeout: a stuck shim)
                quick("tasks", "kill", "-s", "KILL", cid, check=False)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and "RUNNING" in quick(
                        "tasks", "ls", check=False).stdout:
                    time.sleep(0.1)
                quick("tasks", "rm", "-f", cid, check=False)
        # A shim that never answered again: kill it by pid, and what it left behind.
        for shim in pids_with_argument_pair("-address", self.daemon.address):
            if any(shim_serves(shim, a) for a in shims):
                os.kill(shim, signal.SIGKILL)
                for a in shims:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(a.removeprefix("unix://"))
        root = f"/run/berth/runc/{self.namespace}"
        for cid in self.started:
            subprocess.run(["runc", "--root", root, "delete", "--force", cid],
                           capture_output=True, check=False)
            with contextlib.suppress(AssertionError):
                quick("tasks", "rm", "-f", cid, check=False)
                quick("containers", "rm", cid, check=False)
        with contextlib.suppress(OSError):  # (runc's state root of the namespace, now empty)
            os.rmdir(root)


def shim_serves(pid: int, address: str) -> bool:
    """Whether process ``pid`` holds the listening socket at ``address``."""
    path = address.removeprefix("unix://")
    inodes = set()
    with open("/proc/net/unix") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path:
                inodes.add(f"socket:[{fields[6]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


@pytest.fixture
def pair(module_berthd: Berthd, busybox_image: ImageInfo) -> Iterator[Pair]:
    p = Pair(module_berthd, busybox_image)
    try:
        yield p
    finally:
        p.close()


def test_large_update_through_berthd_leaves_the_shim_serving(pair: Pair) -> None:
    target, other = pair.ids
    assert pair.address(target) == pair.address(other), "the two tasks are not in one shim"
    errors: list[BaseException] = []

    def send() -> None:
        try:
            pair.update(target, resources(LARGE, 321), timeout=30)
        except grpc.RpcError as err:
            errors.append(err)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)  # (the shim has the Update in hand)
    try:
        probe = Ctr(pair.daemon.address, pair.namespace, timeout=DEADLINE)
        started = time.monotonic()
        out = probe("tasks", "exec", "--exec-id", "probe", other, "echo", "answered")
        assert out.stdout == "answered\n"
        assert time.monotonic() - started < DEADLINE
    finally:
        sender.join(35)
    assert not sender.is_alive() and not errors, errors
    assert pids_max(pair.pid(target)) == 321

    with pytest.raises(grpc.RpcError) as refused:
        pair.update(target, resources(OVERSIZED, 123), timeout=DEADLINE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    assert "1 MiB" in str(refused.value.details()), refused.value.details()
    assert pids_max(pair.pid(target)) == 321
    out = probe("tasks", "exec", "--exec-id", "probe2", other, "echo", "still")
    assert out.stdout == "still\n"
