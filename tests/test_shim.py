"""Berth's shim (``containerd-shim-berth-v2``) driven over ttrpc, as a daemon drives it.

Each test starts a real shim with the ``start`` action in a bundle directory, talks to it with
Berth's ttrpc client, and runs real containers with runc on a busybox rootfs (bind-mounted by
the shim from the Create request's mounts, as a snapshotter's mounts would be). Events go to a
fake daemon (:class:`EventRecorder`, an ``Events/Forward`` server at ``TTRPC_ADDRESS``).

The scenarios that describe runtime v2 behaviour run against Go's ``containerd-shim-runc-v2``
too (``shim_binary`` fixture): Berth's shim must answer as containerd's does. Berth-only checks
(its socket directory, memory, the ``delete`` action's cleanup) follow.

Clean-up kills only the shim pids a test started, deletes its runc containers with
``runc --root R delete --force`` and unmounts its rootfs, however the test ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import any_pb2

from berth import errdefs, namespaces
from berth.api.cgroups.v1 import metrics_pb2
from berth.api.events import task_pb2 as events
from berth.api.runtime.runc.options import oci_pb2
from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.api.types import mount_pb2
from berth.api.types.task import task_pb2 as types
from berth.ttrpc import Client, Server, Stub

pytestmark = pytest.mark.needs_root

T = TypeVar("T")
TASK = api.DESCRIPTOR.services_by_name["Task"]
EVENTS = events_pb2.DESCRIPTOR.services_by_name["Events"]
NAMESPACE = "berth-shim-test"
BERTH_SHIM = str(Path(sys.executable).parent / "containerd-shim-berth-v2")
GO_SHIM = shutil.which("containerd-shim-runc-v2")
RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
STATE_ROOTS = {"berth": f"/run/berth/runc/{NAMESPACE}",
               "go": f"/run/containerd/runc/{NAMESPACE}"}


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether something is mounted on ``path`` (a bind mount too, which ismount misses)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and private (USS) memory of a process, KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(value.split()[0])
    out["Uss"] = out.pop("Private_Clean") + out.pop("Private_Dirty")
    return out


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root filesystem: static busybox and a symlink per applet."""
    if not os.path.exists(BUSYBOX) or shutil.which("runc") is None:
        pytest.skip("needs runc and a static /bin/busybox (busybox-static)")
    root = tmp_path_factory.mktemp("busybox-rootfs")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return root


@pytest.fixture(scope="session")
def default_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """runc's own default spec (``runc spec``), the base of every test container's."""
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([RUNC, "spec"], cwd=d, check=True)
    spec: dict[str, Any] = json.loads((d / "config.json").read_text())
    return spec


@pytest.fixture(params=["berth", "go"])
def shim_kind(request: pytest.FixtureRequest) -> str:
    """Which shim a parity test drives: Berth's, or Go's containerd-shim-runc-v2."""
    kind: str = request.param
    if kind == "go" and GO_SHIM is None:
        pytest.skip("containerd-shim-runc-v2 is not installed")
    return kind


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: unix socket paths (the events socket) are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="shim-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- a fake daemon's event service -------------------------------------------------------------


class EventRecorder:
    """Serves ``containerd.services.events.ttrpc.v1.Events/Forward``; keeps every envelope
    with the namespace metadata it came with."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.metadata_namespaces: list[str | None] = []
        self.arrived = asyncio.Event()

    async def Forward(self, ctx: Any, request: Any) -> Any:
        from google.protobuf import empty_pb2

        self.envelopes.append(request.envelope)
        self.metadata_namespaces.append(ctx.get(namespaces.TTRPC_HEADER))
        self.arrived.set()
        return empty_pb2.Empty()

    def topics(self, container_id: str | None = None) -> list[str]:
        return [e.topic for e in self.envelopes
                if container_id is None or self.decode(e).container_id == container_id]

    @staticmethod
    def decode(envelope: Any) -> Any:
        name = envelope.event.type_url
        cls = getattr(events, name.rsplit(".", 1)[-1])
        assert name == cls.DESCRIPTOR.full_name, name  # bare names, as ctr needs
        return cls.FromString(envelope.event.value)

    async def wait_for(self, topic: str, container_id: str, process_id: str | None = None,
                       timeout: float = 10) -> Any:
        """The first ``topic`` event of the container (of one of its processes, for exits)."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.envelopes:
                event = self.decode(e)
                if e.topic == topic and event.container_id == container_id and (
                        process_id is None or event.id == process_id):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {topic} event for {container_id}; got "
                                     f"{self.topics()}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)


# -- one shim ----------------------------------------------------------------------------------


class Shim:
    """One shim for one test: ``async with Shim(...) as shim:`` starts it (``start`` action in
    a fresh bundle) and connects; leaving shuts it down and cleans up whatever is left."""

    def __init__(self, kind: str, workdir: Path, rootfs: Path, spec: dict[str, Any],
                 *, events_address: str = "", container_id: str = "") -> None:
        self.kind = kind
        self.binary = BERTH_SHIM if kind == "berth" else str(GO_SHIM)
        self.workdir = workdir
        self.rootfs_source = rootfs
        self.spec = spec
        self.events_address = events_address
        self.id = container_id or f"shim-test-{uuid.uuid4().hex[:12]}"
        self.bundle = workdir / self.id
        self.pid = 0
        self.address = ""
        self.client: Client | None = None
        self.task: Any = None
        self._log_fd = -1

    @property
    def state_root(self) -> str:
        return STATE_ROOTS[self.kind]

    def run_action(self, action: str, *, stdin: bytes = b"", extra: tuple[str, ...] = (),
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "TTRPC_ADDRESS": self.events_address, **(env or {})}
        return subprocess.run(
            [self.binary, "-namespace", NAMESPACE, "-address", f"{self.workdir}/daemon.sock",
             "-publish-binary", "/bin/true", "-id", self.id, "-debug", *extra, action],
            cwd=self.bundle, env=env, input=stdin, capture_output=True, timeout=30,
            check=False)

    async def __aenter__(self) -> Shim:
        self.bundle.mkdir()
        (self.bundle / "rootfs").mkdir()
        (self.bundle / "config.json").write_text(json.dumps(self.spec))
        os.mkfifo(self.bundle / "log")
        # The daemon keeps the shim's log FIFO open for reading; so do we.
        self._log_fd = os.open(self.bundle / "log", os.O_RDWR | os.O_NONBLOCK)
        try:
            done = self.run_action("start")
            assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
            self.address = done.stdout.decode().strip()
            self.client = await Client.connect(self.address)
            self.task = Stub(self.client, TASK, metadata={namespaces.TTRPC_HEADER: NAMESPACE},
                             timeout=30)
            self.pid = (await self.task.Connect(api.ConnectRequest(id=self.id))).shim_pid
        except BaseException:
            await self.cleanup()
            raise
        return self

    def join(self, first: Shim) -> None:
        """Run ``start`` for this task in a bundle of its own, which must find ``first``'s
        shim (one shim serving both: the same group). Clean up with :meth:`cleanup`."""
        self.bundle.mkdir()
        (self.bundle / "rootfs").mkdir()
        (self.bundle / "config.json").write_text(json.dumps(self.spec))
        done = self.run_action("start")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == first.address  # one shim serves both

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.task is not None and self.pid and is_running(self.pid):
                with contextlib.suppress(errdefs.BerthError):
                    await self.task.Shutdown(api.ShutdownRequest(id=self.id), timeout=5)
        finally:
            await self.cleanup()

    async def cleanup(self) -> None:
        """Whatever the test left: containers, the shim, mounts, the socket."""
        if self.client is not None:
            await self.client.close()
        subprocess.run([RUNC, "--root", self.state_root, "delete", "--force", self.id],
                       capture_output=True, check=False)
        if self.pid:
            deadline = time.monotonic() + 5  # a shut-down shim exits by itself
            while is_running(self.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        rootfs = self.bundle / "rootfs"
        while is_mounted(rootfs):
            subprocess.run(["umount", "-l", str(rootfs)], check=False)
        socket_path = self.address.removeprefix("unix://")
        if socket_path and self.pid and not is_running(self.pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
        if self._log_fd >= 0:
            with contextlib.suppress(BlockingIOError):
                log = os.read(self._log_fd, 1 << 20)
                if log:
                    print(f"--- {self.kind} shim log ---\n{log.decode(errors='replace')}")
            os.close(self._log_fd)
            self._log_fd = -1

    def create_request(self, **kwargs: Any) -> Any:
        mount = mount_pb2.Mount(type="bind", source=str(self.rootfs_source),
                                options=["rbind", "rw"])
        return api.CreateTaskRequest(id=self.id, bundle=str(self.bundle), rootfs=[mount],
                                     **kwargs)


def container_spec(base: dict[str, Any], args: list[str], *, terminal: bool = False,
                   memory_limit: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(base))
    spec["process"]["args"] = args
    spec["process"]["terminal"] = terminal
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["linux"]["cgroupsPath"] = f"/{NAMESPACE}/{uuid.uuid4().hex[:12]}"
    if memory_limit:
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": memory_limit,
                                                               "swap": memory_limit}
    return spec


def write_logger(directory: Path) -> Path:
    """A logging binary for ``binary://PATH?path=BASE``: stdout to BASE.out, stderr to
    BASE.err, its environment and arguments to BASE.env."""
    logger = directory / "logger.sh"
    logger.write_text(
        "#!/bin/sh\n"
        'echo "$CONTAINER_NAMESPACE/$CONTAINER_ID $*" > "$2.env"\n'
        # fd 5 is the readiness pipe: closing it (in every process) says "ready".
        'cat <&3 5>&- > "$2.out" &\ncat <&4 5>&- > "$2.err" &\n'
        "exec 5>&-\nwait\n")
    logger.chmod(0o755)
    return logger


class Fifo:
    """A FIFO the test reads (a client's stdout) or writes (stdin)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        os.mkfifo(path)
        flags = os.O_RDONLY if mode == "r" else os.O_RDWR
        self.fd = os.open(path, flags | os.O_NONBLOCK)

    async def read_all(self, timeout: float = 10) -> bytes:
        """Read until EOF (every writer closed)."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)
        raise AssertionError(f"no EOF on {self.path} within {timeout}s; read {chunks}")

    async def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout
        while needle not in got:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen on {self.path}; got {got!r}")
            try:
                got += os.read(self.fd, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.02)
        return got

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.asynccontextmanager
async def event_server(path: Path) -> AsyncIterator[EventRecorder]:
    recorder = EventRecorder()
    server = Server()
    server.register(EVENTS, recorder)
    await server.serve(str(path))
    try:
        yield recorder
    finally:
        await server.shutdown()


# -- runtime v2 behaviour: Berth's shim and Go's -----------------------------------------------


def test_echo_to_stdout_fifo_with_events(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                                         default_spec: dict[str, Any]) -> None:
    """Create + Start ``echo hello``: the output arrives on the stdout FIFO, Wait reports 0,
    the daemon gets create, start, exit and delete events, in that order."""
    spec = container_spec(default_spec, ["echo", "hello"])

    async def main() -> None:
        async with event_server(workdir / "events.sock") as recorder, \
                Shim(shim_kind, workdir, busybox_rootfs, spec,
                     events_address=str(workdir / "events.sock")) as shim:
            out = Fifo(workdir / "stdout", "r")
            err = Fifo(workdir / "stderr", "r")  # Go's shim wants both or neither
            created = await shim.task.Create(shim.create_request(stdout=str(out.path),
                                                                 stderr=str(err.path)))
            assert created.pid > 0
            state = await shim.task.State(api.StateRequest(id=shim.id))
            assert state.status == types.CREATED and state.pid == created.pid
            assert is_mounted(shim.bundle / "rootfs")
            started = await shim.task.Start(api.StartRequest(id=shim.id))
            assert started.pid == created.pid
            waited = await shim.task.Wait(api.WaitRequest(id=shim.id))
            assert waited.exit_status == 0
            assert waited.exited_at.seconds > 0
            assert await out.read_all() == b"hello\n"
            assert await err.read_all() == b""
            state = await shim.task.State(api.StateRequest(id=shim.id))
            assert state.status == types.STOPPED and state.exit_status == 0
            deleted = await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert deleted.pid == created.pid and deleted.exit_status == 0
            assert not is_mounted(shim.bundle / "rootfs")
            exit_event = await recorder.wait_for("/tasks/exit", shim.id)
            await recorder.wait_for("/tasks/delete", shim.id)
            assert exit_event.id == shim.id and exit_event.pid == created.pid
            assert exit_event.exit_status == 0
            assert recorder.topics(shim.id) == ["/tasks/create", "/tasks/start", "/tasks/exit",
                                                "/tasks/delete"]
            assert {e.namespace for e in recorder.envelopes} == {NAMESPACE}
            assert set(recorder.metadata_namespaces) == {NAMESPACE}
            with pytest.raises(errdefs.NotFound):
                await shim.task.State(api.StateRequest(id=shim.id))
            out.close()

    run(main())


def test_process_starts_with_default_signals(shim_kind: str, workdir: Path,
                                             busybox_rootfs: Path,
                                             default_spec: dict[str, Any]) -> None:
    """The container's process ignores no signal the shim or its starter ignored (Python
    ignores SIGPIPE; a shell's background job, SIGINT and SIGQUIT) and blocks none."""
    spec = container_spec(default_spec, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            out = Fifo(workdir / "stdout", "r")
            err = Fifo(workdir / "stderr", "r")
            await shim.task.Create(shim.create_request(stdout=str(out.path),
                                                       stderr=str(err.path)))
            await shim.task.Start(api.StartRequest(id=shim.id))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            lines = (await out.read_all()).decode().splitlines()
            masks = dict(line.split(":\t") for line in lines)
            assert int(masks["SigBlk"], 16) == 0
            for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE,
                        signal.SIGTERM, signal.SIGXFSZ, signal.SIGUSR1):
                assert not int(masks["SigIgn"], 16) & (1 << (sig - 1)), sig
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            out.close()
            err.close()

    run(main())


def test_exit_status_and_signals(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                                 default_spec: dict[str, Any]) -> None:
    """``exit 3`` is 3; a process killed by SIGTERM is 128+15, in Wait and in the event. (The
    SIGTERM goes to an exec'd process: a PID namespace's init ignores signals it has no
    handler for.)"""
    spec = container_spec(default_spec, ["sh", "-c", "sleep 0.5; exit 3"])
    sleep = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                        value=json.dumps({**spec["process"], "args": ["sleep", "1000"]}).encode())

    async def main() -> None:
        async with event_server(workdir / "ev.sock") as recorder, \
                Shim(shim_kind, workdir, busybox_rootfs, spec,
                     events_address=str(workdir / "ev.sock")) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            await shim.task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="s", spec=sleep))
            await shim.task.Start(api.StartRequest(id=shim.id, exec_id="s"))
            await shim.task.Kill(api.KillRequest(id=shim.id, exec_id="s", signal=signal.SIGTERM))
            waited = await shim.task.Wait(api.WaitRequest(id=shim.id, exec_id="s"))
            assert waited.exit_status == 128 + signal.SIGTERM
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 3
            await recorder.wait_for("/tasks/exit", shim.id, shim.id)
            exits = {(e.id, e.exit_status) for e in map(recorder.decode, recorder.envelopes)
                     if isinstance(e, events.TaskExit)}
            assert exits == {("s", 143), (shim.id, 3)}
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_exec_pause_resume_pids_stats_kill(shim_kind: str, workdir: Path,
                                           busybox_rootfs: Path,
                                           default_spec: dict[str, Any]) -> None:
    """A running ``sleep``: exec into it (output, exit status, duplicate and unknown ids),
    Pids with the exec's details, Pause/Resume, Stats, Kill, and their events."""
    spec = container_spec(default_spec, ["sleep", "1000"])
    process = json.dumps({**spec["process"], "args": ["sh", "-c", "echo from-exec; exit 5"]})
    exec_spec = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
        value=process.encode())

    async def main() -> None:
        async with event_server(workdir / "ev.sock") as recorder, \
                Shim(shim_kind, workdir, busybox_rootfs, spec,
                     events_address=str(workdir / "ev.sock")) as shim:
            task = shim.task
            init_pid = (await task.Create(shim.create_request())).pid
            await task.Start(api.StartRequest(id=shim.id))

            out = Fifo(workdir / "exec-out", "r")
            err = Fifo(workdir / "exec-err", "r")
            await task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="e1",
                                                   stdout=str(out.path), stderr=str(err.path),
                                                   spec=exec_spec))
            with pytest.raises(errdefs.AlreadyExists):
                await task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="e1",
                                                       spec=exec_spec))
            state = await task.State(api.StateRequest(id=shim.id, exec_id="e1"))
            assert state.status == types.CREATED
            exec_pid = (await task.Start(api.StartRequest(id=shim.id, exec_id="e1"))).pid
            assert exec_pid > 0 and exec_pid != init_pid
            waited = await task.Wait(api.WaitRequest(id=shim.id, exec_id="e1"))
            assert waited.exit_status == 5
            assert await out.read_all() == b"from-exec\n"
            exit_event = await recorder.wait_for("/tasks/exit", shim.id, "e1")
            assert exit_event.exit_status == 5
            deleted = await task.Delete(api.DeleteRequest(id=shim.id, exec_id="e1"))
            assert deleted.exit_status == 5 and deleted.pid == exec_pid
            for call, request in ((task.State, api.StateRequest), (task.Wait, api.WaitRequest),
                                  (task.Delete, api.DeleteRequest)):
                with pytest.raises(errdefs.NotFound):
                    await call(request(id=shim.id, exec_id="e1"))
            with pytest.raises(errdefs.NotFound):
                await task.Kill(api.KillRequest(id=shim.id, exec_id="nope", signal=9))

            # A long exec shows in Pids with its exec id.
            long_spec = any_pb2.Any(type_url=exec_spec.type_url, value=json.dumps(
                {**spec["process"], "args": ["sleep", "1000"]}).encode())
            await task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="e2", spec=long_spec))
            e2_pid = (await task.Start(api.StartRequest(id=shim.id, exec_id="e2"))).pid
            pids = await task.Pids(api.PidsRequest(id=shim.id))
            by_pid = {p.pid: p for p in pids.processes}
            assert init_pid in by_pid and e2_pid in by_pid
            info = by_pid[e2_pid].info
            assert info.type_url == "containerd.runc.v1.ProcessDetails"
            assert oci_pb2.ProcessDetails.FromString(info.value).exec_id == "e2"

            await task.Pause(api.PauseRequest(id=shim.id))
            assert (await task.State(api.StateRequest(id=shim.id))).status == types.PAUSED
            assert (await task.State(api.StateRequest(id=shim.id, exec_id="e2"))).status \
                == types.PAUSED
            await task.Resume(api.ResumeRequest(id=shim.id))
            assert (await task.State(api.StateRequest(id=shim.id))).status == types.RUNNING

            stats = (await task.Stats(api.StatsRequest(id=shim.id))).stats
            assert stats.type_url == "io.containerd.cgroups.v1.Metrics"
            metrics = metrics_pb2.Metrics.FromString(stats.value)
            assert metrics.memory.usage.usage > 0
            assert metrics.pids.current >= 2
            assert metrics.cpu.usage.total > 0

            await task.Kill(api.KillRequest(id=shim.id, exec_id="e2", signal=signal.SIGKILL))
            assert (await task.Wait(api.WaitRequest(id=shim.id, exec_id="e2"))).exit_status \
                == 137
            await task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            assert (await task.Wait(api.WaitRequest(id=shim.id))).exit_status == 137
            await task.Delete(api.DeleteRequest(id=shim.id))
            await recorder.wait_for("/tasks/delete", shim.id)
            topics = recorder.topics(shim.id)
            for topic in ("/tasks/exec-added", "/tasks/exec-started", "/tasks/paused",
                          "/tasks/resumed"):
                assert topic in topics
            assert topics.index("/tasks/exec-started") < topics.index("/tasks/exit")
            out.close()

    run(main(), timeout=90)


def test_terminal(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                  default_spec: dict[str, Any]) -> None:
    """A shell on a pty: input from the stdin FIFO echoes back on stdout, ResizePty shows
    in ``stty size``, and the exit status comes through."""
    spec = container_spec(default_spec, ["sh"], terminal=True)

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            stdin = Fifo(workdir / "stdin", "w")
            out = Fifo(workdir / "stdout", "r")
            await shim.task.Create(shim.create_request(terminal=True, stdin=str(stdin.path),
                                                       stdout=str(out.path)))
            await shim.task.Start(api.StartRequest(id=shim.id))
            await shim.task.ResizePty(api.ResizePtyRequest(id=shim.id, width=91, height=37))
            stdin.write(b"echo tty-$((6*7)); stty size; exit 7\n")
            got = await out.read_until(b"37 91")
            assert b"tty-42" in got
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 7
            stdin.close()
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            await out.read_all()
            out.close()

    run(main())


def test_stdin_and_close_io(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                            default_spec: dict[str, Any]) -> None:
    """``cat`` reads the stdin FIFO; it sees EOF only after the client closed its end *and*
    called CloseIO; output reaches the stdout FIFO, errors the stderr FIFO."""
    spec = container_spec(default_spec, ["sh", "-c", "cat; echo done >&2"])

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            stdin = Fifo(workdir / "stdin", "w")
            out = Fifo(workdir / "stdout", "r")
            err = Fifo(workdir / "stderr", "r")
            await shim.task.Create(shim.create_request(stdin=str(stdin.path),
                                                       stdout=str(out.path),
                                                       stderr=str(err.path)))
            await shim.task.Start(api.StartRequest(id=shim.id))
            stdin.write(b"ping\n")
            assert await out.read_until(b"ping\n") == b"ping\n"
            stdin.close()  # the client goes away: the shim's own writer keeps stdin open
            await asyncio.sleep(0.3)
            state = await shim.task.State(api.StateRequest(id=shim.id))
            assert state.status == types.RUNNING
            await shim.task.CloseIO(api.CloseIORequest(id=shim.id, stdin=True))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            assert await err.read_all() == b"done\n"
            assert await out.read_all() == b""
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            out.close()
            err.close()

    run(main())


def test_shared_pid_namespace_kills_all_on_init_exit(shim_kind: str, workdir: Path,
                                                     busybox_rootfs: Path,
                                                     default_spec: dict[str, Any]) -> None:
    """Without a PID namespace of its own, a container's other processes do not die with its
    init: the shim kills them (containerd's rule), and their exits are reported."""
    spec = container_spec(default_spec, ["sleep", "1000"])
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                   if ns["type"] != "pid"]
    sleep = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                        value=json.dumps({**spec["process"], "args": ["sleep", "999"]}).encode())

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            await shim.task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="x", spec=sleep))
            exec_pid = (await shim.task.Start(api.StartRequest(id=shim.id, exec_id="x"))).pid
            await shim.task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 137
            waited = await shim.task.Wait(api.WaitRequest(id=shim.id, exec_id="x"))
            assert waited.exit_status == 137
            assert not is_running(exec_pid)
            await shim.task.Delete(api.DeleteRequest(id=shim.id, exec_id="x"))
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_update_resources(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                          default_spec: dict[str, Any]) -> None:
    """Update hands the OCI LinuxResources JSON to ``runc update``: the cgroup follows."""
    spec = container_spec(default_spec, ["sleep", "1000"], memory_limit=64 << 20)
    cgroup = f"/sys/fs/cgroup/memory{spec['linux']['cgroupsPath']}"

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            limit = Path(f"{cgroup}/memory.limit_in_bytes")
            assert int(limit.read_text()) == 64 << 20
            resources = {"memory": {"limit": 96 << 20, "swap": 96 << 20}}
            await shim.task.Update(api.UpdateTaskRequest(id=shim.id, resources=any_pb2.Any(
                type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                value=json.dumps(resources).encode())))
            assert int(limit.read_text()) == 96 << 20
            await shim.task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            await shim.task.Wait(api.WaitRequest(id=shim.id))
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_runtime_failure_stays_out_of_the_streams(shim_kind: str, workdir: Path,
                                                  busybox_rootfs: Path,
                                                  default_spec: dict[str, Any]) -> None:
    """When runc cannot start the process, its message is the RPC's error, and nothing of it
    reaches the client's stdout or stderr; the rootfs is unmounted again."""
    spec = container_spec(default_spec, ["no-such-command"])

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            out = Fifo(workdir / "stdout", "r")
            err = Fifo(workdir / "stderr", "r")
            with pytest.raises(errdefs.BerthError,
                               match=r"OCI runtime create failed: .*no-such-command"):
                await shim.task.Create(shim.create_request(stdout=str(out.path),
                                                           stderr=str(err.path)))
            assert await out.read_all() == b""
            assert await err.read_all() == b""
            assert not is_mounted(shim.bundle / "rootfs")
            with pytest.raises(errdefs.NotFound):
                await shim.task.State(api.StateRequest(id=shim.id))
            out.close()
            err.close()

    run(main())


def test_lifecycle_errors(shim_kind: str, workdir: Path, busybox_rootfs: Path,
                          default_spec: dict[str, Any]) -> None:
    """Unknown containers are NotFound, Checkpoint is refused, a runtime failure carries
    runc's own message, and a running task cannot be deleted or started again."""
    spec = container_spec(default_spec, ["sleep", "1000"])

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            task = shim.task
            with pytest.raises(errdefs.NotFound):
                await task.Start(api.StartRequest(id="nope"))
            with pytest.raises(errdefs.NotFound):
                await task.Wait(api.WaitRequest(id="nope"))
            await task.Create(shim.create_request())
            await task.Start(api.StartRequest(id=shim.id))
            with pytest.raises(errdefs.BerthError, match="cannot start a running process"):
                await task.Start(api.StartRequest(id=shim.id))
            with pytest.raises(errdefs.BerthError, match="cannot delete a running process"):
                await task.Delete(api.DeleteRequest(id=shim.id))
            with pytest.raises(errdefs.BerthError, match="cannot resume a running"):
                await task.Resume(api.ResumeRequest(id=shim.id))
            bad = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/"
                              "Process", value=json.dumps(
                                  {**spec["process"], "args": ["/no/such/binary"]}).encode())
            await task.Exec(api.ExecProcessRequest(id=shim.id, exec_id="bad", spec=bad))
            with pytest.raises(errdefs.BerthError, match=r"OCI runtime exec failed.*no such"):
                await task.Start(api.StartRequest(id=shim.id, exec_id="bad"))
            await task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            await task.Wait(api.WaitRequest(id=shim.id))
            with pytest.raises(errdefs.NotFound, match="process already finished"):
                await task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            await task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_terminal_to_logging_binary_or_file(shim_kind: str, workdir: Path,
                                            busybox_rootfs: Path,
                                            default_spec: dict[str, Any]) -> None:
    """A terminal's output can go to a ``binary://`` logger, and (Berth's shim, as
    containerd's later shims) to a ``file://``."""
    spec = container_spec(default_spec, ["sh", "-c", "tty; echo on-a-pty"], terminal=True)
    logger = write_logger(workdir)

    async def main() -> None:
        async with Shim(shim_kind, workdir, busybox_rootfs, spec) as shim:
            base = workdir / "bin-log"
            await shim.task.Create(shim.create_request(
                terminal=True, stdout=f"binary://{logger}?path={base}"))
            await shim.task.Start(api.StartRequest(id=shim.id))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert Path(f"{base}.out").read_text().split() == ["/dev/pts/0", "on-a-pty"]
            assert Path(f"{base}.err").read_text() == ""
            if shim_kind == "go":
                return  # containerd 1.6's shim takes only FIFOs and loggers for a terminal
            log_file = workdir / "logs" / "tty.log"
            await shim.task.Create(shim.create_request(terminal=True,
                                                       stdout=f"file://{log_file}"))
            await shim.task.Start(api.StartRequest(id=shim.id))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert log_file.read_text().split() == ["/dev/pts/0", "on-a-pty"]

    run(main())


# -- Berth's shim only -------------------------------------------------------------------------


def test_start_address_grouping_and_shutdown(workdir: Path, busybox_rootfs: Path,
                                             default_spec: dict[str, Any]) -> None:
    """``start`` prints ``unix:///run/berth/s/<sha256>`` and writes it to the bundle's
    ``address`` file; a second ``start`` for the same task finds the running shim instead of
    starting another; Shutdown with no task ends the process and removes its socket."""
    spec = container_spec(default_spec, ["true"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            assert shim.address.startswith("unix:///run/berth/s/")
            assert len(shim.address.removeprefix("unix:///run/berth/s/")) == 64
            assert (shim.bundle / "address").read_text() == shim.address
            socket_path = shim.address.removeprefix("unix://")
            assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
            again = shim.run_action("start")
            assert again.returncode == 0 and again.stdout.decode() == shim.address
            assert again.stderr == b""
            # The shim process: in a session of its own, not our child, its cwd the bundle.
            assert os.getsid(shim.pid) != os.getsid(0)
            assert int(Path(f"/proc/{shim.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) \
                != os.getpid()
            assert os.readlink(f"/proc/{shim.pid}/cwd") == str(shim.bundle)
            await shim.task.Shutdown(api.ShutdownRequest(id=shim.id))
            await asyncio.wait_for(shim.client.wait_closed(), 10)  # type: ignore[union-attr]
            deadline = time.monotonic() + 10
            while is_running(shim.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not is_running(shim.pid)
            assert not os.path.exists(socket_path)

    run(main())


def test_grouped_containers_share_one_shim(workdir: Path, busybox_rootfs: Path,
                                           default_spec: dict[str, Any]) -> None:
    """Containers with the same ``io.containerd.runc.v2.group`` annotation share one shim
    (a pod); it exits only once the last of them is deleted."""
    group = f"pod-{uuid.uuid4().hex[:8]}"

    def spec() -> dict[str, Any]:
        s = container_spec(default_spec, ["sleep", "1000"])
        s["annotations"] = {"io.containerd.runc.v2.group": group}
        return s

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec()) as first:
            second = Shim("berth", workdir, busybox_rootfs, spec())
            try:
                second.join(first)
                assert (second.bundle / "address").read_text() == first.address
                for shim in (first, second):
                    await first.task.Create(shim.create_request())
                    await first.task.Start(api.StartRequest(id=shim.id))
                pids = {(await first.task.Connect(api.ConnectRequest(id=s.id))).shim_pid
                        for s in (first, second)}
                assert pids == {first.pid}
                for shim in (first, second):
                    await first.task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
                    await first.task.Wait(api.WaitRequest(id=shim.id))
                await first.task.Delete(api.DeleteRequest(id=second.id))
                await first.task.Shutdown(api.ShutdownRequest(id=second.id))
                await asyncio.sleep(0.3)
                assert is_running(first.pid)
                await first.task.Delete(api.DeleteRequest(id=first.id))
            finally:
                await second.cleanup()

    run(main())


def read_cmdline(pid: int) -> list[str]:
    return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]


def test_shims_are_forked_by_the_zygote(workdir: Path, busybox_rootfs: Path,
                                        default_spec: dict[str, Any]) -> None:
    """``start`` has the zygote fork the shim: its command line reads like a shim's, its
    environment is the caller's, and its memory is mostly shared. ``BERTH_SHIM_ZYGOTE=off``
    starts a fresh interpreter instead."""
    spec = container_spec(default_spec, ["true"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec,
                        events_address="/tmp/nowhere.sock") as shim:
            assert read_cmdline(shim.pid) == [
                "containerd-shim-berth-v2", "-namespace", NAMESPACE, "-id", shim.id,
                "-address", f"{workdir}/daemon.sock", "-debug"]
            # (Its environment is the request's: the event tests see TTRPC_ADDRESS at work.
            # /proc/PID/environ shows the zygote's own, nearly empty one.)
            environ = Path(f"/proc/{shim.pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"TTRPC_ADDRESS=")]
            assert os.readlink(f"/proc/{shim.pid}/fd/2") == os.readlink(
                f"/proc/{os.getpid()}/fd/{shim._log_fd}")  # the bundle's log FIFO
            usage = memory_kib(shim.pid)
            assert usage["Uss"] < usage["Rss"] / 2

        other = Shim("berth", workdir, busybox_rootfs, spec)
        other.bundle.mkdir()
        (other.bundle / "config.json").write_text(json.dumps(spec))
        try:
            done = other.run_action("start", env={"BERTH_SHIM_ZYGOTE": "off"})
            assert done.returncode == 0, done.stderr
            other.address = done.stdout.decode()
            other.client = await Client.connect(other.address)
            stub = Stub(other.client, TASK)
            other.pid = (await stub.Connect(api.ConnectRequest(id=other.id))).shim_pid
            assert "berth.shim.main" in " ".join(read_cmdline(other.pid))
            await stub.Shutdown(api.ShutdownRequest(id=other.id))
        finally:
            await other.cleanup()

    run(main())


def test_zygote_leaves_when_idle(workdir: Path) -> None:
    """A zygote of our own: it forks a shim on request, and exits once that shim is gone and
    no request came for a while."""
    from berth import shimlaunch
    from berth.shim import zygote

    path = str(workdir / "zygote.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(workdir / "shim.sock"))
    listener.listen(8)
    zygote_pid = 0
    shim_pid = 0

    async def main() -> None:
        nonlocal zygote_pid, shim_pid
        shim_pid = shimlaunch.fork_shim(
            path, ["-namespace", NAMESPACE, "-id", "zygote-test", "-address", "x"],
            cwd=str(workdir), env={"PATH": "/usr/bin:/bin"}, listen_fd=listener.fileno(),
            log_fd=None, python=shimlaunch.python_command())
        listener.close()
        zygote_pid = next(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                          if path in read_cmdline_safe(pid))
        client = await Client.connect(str(workdir / "shim.sock"))
        stub = Stub(client, TASK)
        assert (await stub.Connect(api.ConnectRequest(id="x"))).shim_pid == shim_pid
        assert os.getsid(shim_pid) != os.getsid(zygote_pid)
        with contextlib.suppress(errdefs.Unavailable):
            await stub.Shutdown(api.ShutdownRequest(id="x"))
        await client.close()
        deadline = time.monotonic() + 5
        while is_running(shim_pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not is_running(shim_pid)
        assert is_running(zygote_pid)  # still idle-waiting
        deadline = time.monotonic() + zygote.IDLE_EXIT + 5
        while is_running(zygote_pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not is_running(zygote_pid)
        assert not os.path.exists(path)
        # The zygote is our child (we started it, as berthd does): it was reaped, not left a
        # zombie for as long as we live.
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{zygote_pid}") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not os.path.exists(f"/proc/{zygote_pid}")

    try:
        run(main(), timeout=zygote.IDLE_EXIT + 30)
    finally:
        for pid in (shim_pid, zygote_pid):
            if pid and is_running(pid):
                os.kill(pid, signal.SIGKILL)


def read_cmdline_safe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_same_task_again_right_after_shutdown(workdir: Path, busybox_rootfs: Path,
                                              default_spec: dict[str, Any]) -> None:
    """A daemon that deletes a task and starts one with the same id at once (``berth start``
    of a stopped container) gets a new shim, never the one that is leaving."""
    spec = container_spec(default_spec, ["true"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            for _round in range(3):
                await shim.task.Create(shim.create_request())
                await shim.task.Start(api.StartRequest(id=shim.id))
                await shim.task.Wait(api.WaitRequest(id=shim.id))
                await shim.task.Delete(api.DeleteRequest(id=shim.id))
                await shim.task.Shutdown(api.ShutdownRequest(id=shim.id))
                done = shim.run_action("start")  # no pause: the old shim may still be leaving
                assert done.returncode == 0, done.stderr
                old = shim.pid
                assert shim.client is not None
                await shim.client.close()
                shim.client = await Client.connect(done.stdout.decode())
                shim.task = Stub(shim.client, TASK, timeout=30)
                shim.pid = (await shim.task.Connect(api.ConnectRequest(id=shim.id))).shim_pid
                assert shim.pid != old

    run(main())


def test_shutdown_waits_for_tasks(workdir: Path, busybox_rootfs: Path,
                                  default_spec: dict[str, Any]) -> None:
    """Shutdown while a task exists leaves the shim serving, as containerd's does."""
    spec = container_spec(default_spec, ["sleep", "1000"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            await shim.task.Create(shim.create_request())
            with pytest.raises(errdefs.NotImplementedByBerth):
                await shim.task.Checkpoint(api.CheckpointTaskRequest(id=shim.id, path="/x"))
            await shim.task.Shutdown(api.ShutdownRequest(id=shim.id))
            await asyncio.sleep(0.3)
            assert is_running(shim.pid)
            state = await shim.task.State(api.StateRequest(id=shim.id))
            assert state.status == types.CREATED
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_delete_action_after_shim_died(workdir: Path, busybox_rootfs: Path,
                                       default_spec: dict[str, Any]) -> None:
    """The ``delete`` action cleans up after a killed shim: the container is gone from runc,
    the rootfs unmounted, and stdout is a DeleteResponse saying 137."""
    spec = container_spec(default_spec, ["sleep", "1000"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            init_pid = (await shim.task.Create(shim.create_request())).pid
            await shim.task.Start(api.StartRequest(id=shim.id))
            os.kill(shim.pid, signal.SIGKILL)
            done = shim.run_action("delete", extra=("-bundle", str(shim.bundle)))
            assert done.returncode == 0, done.stderr
            response = api.DeleteResponse.FromString(done.stdout)
            assert response.exit_status == 137 and response.pid == init_pid
            assert response.exited_at.seconds > 0
            assert not is_mounted(shim.bundle / "rootfs")
            assert not os.path.exists(shim.address.removeprefix("unix://"))
            state = subprocess.run([RUNC, "--root", shim.state_root, "state", shim.id],
                                   capture_output=True, check=False)
            assert state.returncode != 0
            deadline = time.monotonic() + 5
            while is_running(init_pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not is_running(init_pid)

    run(main())


@pytest.mark.parametrize("pid,status,seconds,nanos", [
    (0, 137, 1_795_000_000, 123), (4_000_000, 0, 0, 0), (1, 255, 2**40, 999_999_999)])
def test_delete_response_encoding(pid: int, status: int, seconds: int, nanos: int) -> None:
    """The delete action's hand-written DeleteResponse parses as the generated message."""
    from berth.shim.main import encode_delete_response

    data = encode_delete_response(pid, status, seconds, nanos)
    parsed = api.DeleteResponse.FromString(data)
    assert (parsed.pid, parsed.exit_status) == (pid, status)
    assert (parsed.exited_at.seconds, parsed.exited_at.nanos) == (seconds, nanos)
    expected = api.DeleteResponse(pid=pid, exit_status=status)
    expected.exited_at.seconds, expected.exited_at.nanos = seconds, nanos
    assert data == expected.SerializeToString()


def test_runtime_options_and_runc_errors(workdir: Path, busybox_rootfs: Path,
                                         default_spec: dict[str, Any]) -> None:
    """``containerd.runc.v1.Options`` picks the runtime binary and state root (saved in the
    bundle for ``delete``); a missing binary or a failing runc is reported with its words."""
    spec = container_spec(default_spec, ["true"])
    root = str(workdir / "runc-root")

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            missing = oci_pb2.Options(binary_name="/no/such/runc")
            with pytest.raises(errdefs.BerthError, match="/no/such/runc"):
                await shim.task.Create(shim.create_request(options=any_pb2.Any(
                    type_url="containerd.runc.v1.Options", value=missing.SerializeToString())))
            assert not is_mounted(shim.bundle / "rootfs")
            options = oci_pb2.Options(binary_name=RUNC, root=root)
            await shim.task.Create(shim.create_request(options=any_pb2.Any(
                type_url="containerd.runc.v1.Options", value=options.SerializeToString())))
            assert os.path.isdir(f"{root}/{NAMESPACE}/{shim.id}")
            saved = json.loads((shim.bundle / "options.json").read_text())
            assert saved["root"] == root and saved["binary_name"] == RUNC
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert not os.path.exists(f"{root}/{NAMESPACE}/{shim.id}")
            broken = container_spec(default_spec, ["true"])
            broken["process"]["cwd"] = "relative/cwd"  # runc refuses: cwd must be absolute
            (shim.bundle / "config.json").write_text(json.dumps(broken))
            with pytest.raises(errdefs.BerthError, match=r"(?i)OCI runtime create failed: .*cwd"):
                await shim.task.Create(shim.create_request())

    run(main())


def test_crun(workdir: Path, busybox_rootfs: Path, default_spec: dict[str, Any]) -> None:
    """crun drives the same way (binary_name in the options), where the host lets it run:
    on a hybrid cgroup host crun refuses, with its own words in the error."""
    crun = shutil.which("crun")
    if crun is None:
        pytest.skip("crun is not installed")
    spec = container_spec(default_spec, ["sh", "-c", "echo from-crun; exit 4"])
    options = any_pb2.Any(type_url="containerd.runc.v1.Options",
                          value=oci_pb2.Options(binary_name=crun).SerializeToString())

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            out = Fifo(workdir / "stdout", "r")
            try:
                await shim.task.Create(shim.create_request(stdout=str(out.path),
                                                           options=options))
            except errdefs.BerthError as err:
                if "hybrid" in str(err):
                    pytest.skip(f"crun cannot run containers on this host: {err}")
                raise
            try:
                await shim.task.Start(api.StartRequest(id=shim.id))
                assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 4
                assert await out.read_all() == b"from-crun\n"
            finally:
                subprocess.run([crun, "--root", shim.state_root, "delete", "--force", shim.id],
                               capture_output=True, check=False)
                with contextlib.suppress(errdefs.BerthError):
                    await shim.task.Delete(api.DeleteRequest(id=shim.id))
                out.close()

    run(main())


def test_file_and_binary_logging(workdir: Path, busybox_rootfs: Path,
                                 default_spec: dict[str, Any]) -> None:
    """``file://`` appends both streams to a file; ``binary://`` runs a logging program with
    the streams on fds 3 and 4, the container's id and namespace in its environment."""
    spec = container_spec(default_spec, ["sh", "-c", "echo out; echo err >&2"])
    logger = write_logger(workdir)

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log_file = workdir / "logs" / "c.log"
            await shim.task.Create(shim.create_request(stdout=f"file://{log_file}"))
            await shim.task.Start(api.StartRequest(id=shim.id))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert sorted(log_file.read_text().split()) == ["err", "out"]

            base = workdir / "bin-log"
            await shim.task.Create(shim.create_request(
                stdout=f"binary://{logger}?path={base}"))
            await shim.task.Start(api.StartRequest(id=shim.id))
            assert (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status == 0
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            assert Path(f"{base}.out").read_text() == "out\n"
            assert Path(f"{base}.err").read_text() == "err\n"
            assert Path(f"{base}.env").read_text() == f"{NAMESPACE}/{shim.id} path {base}\n"

    run(main())


def test_oom_event(workdir: Path, busybox_rootfs: Path, default_spec: dict[str, Any]) -> None:
    """A container that outgrows its memory limit is OOM-killed: /tasks/oom is published."""
    spec = container_spec(default_spec, ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr "
                                                     "'\\0' a); echo survived"],
                          memory_limit=16 << 20)

    async def main() -> None:
        async with event_server(workdir / "ev.sock") as recorder, \
                Shim("berth", workdir, busybox_rootfs, spec,
                     events_address=str(workdir / "ev.sock")) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            status = (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status
            assert status == 137
            oom = await recorder.wait_for("/tasks/oom", shim.id)
            assert oom.container_id == shim.id
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_memory_of_an_idle_shim(workdir: Path, busybox_rootfs: Path,
                                default_spec: dict[str, Any]) -> None:
    """One shim holding one running container: it does not load grpc or OpenSSL, and stays
    within a memory budget. (The figures are printed; ``-s`` shows them.)"""
    spec = container_spec(default_spec, ["sleep", "1000"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            await shim.task.Stats(api.StatsRequest(id=shim.id))
            await shim.task.Pids(api.PidsRequest(id=shim.id))
            await asyncio.sleep(0.5)
            usage = memory_kib(shim.pid)
            print(f"\nberth shim with one running container: RSS {usage['Rss']} KiB, "
                  f"PSS {usage['Pss']} KiB, USS {usage['Uss']} KiB")
            maps = Path(f"/proc/{shim.pid}/maps").read_text()
            assert "cygrpc" not in maps and "libssl" not in maps and "libcrypto" not in maps
            assert usage["Rss"] < 28 * 1024
            # Forked from the zygote, most of it is shared: what is its own stays small.
            assert usage["Uss"] < 10 * 1024
            await shim.task.Kill(api.KillRequest(id=shim.id, signal=signal.SIGKILL))
            await shim.task.Wait(api.WaitRequest(id=shim.id))
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())


def test_start_imports_only_cheap_modules(tmp_path: Path) -> None:
    """``start`` runs in a new interpreter on every container start, so it imports nothing
    slow (berth.shim.lean says why each of these is kept out). Checked on a real ``start``
    that joins a shim of its namespace (a socket the test listens on: nothing is forked), run
    as the launcher runs it: ``python -IS`` (tools/shim_launcher.py)."""
    from berth.shimcontract import GROUP_ENV
    from berth.shimgroups import socket_address

    with open(BERTH_SHIM) as f:
        assert f.readline().rstrip().endswith(" -IS")

    bundle = tmp_path / "ns" / "joiner"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2"}')
    daemon = f"{tmp_path}/daemon.sock"
    address = socket_address(daemon, "imports", "berth.namespace-group.0")
    path = address.removeprefix("unix://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as shim:
        shim.bind(path)
        shim.listen(1)
        try:
            out = subprocess.run(
                [sys.executable, "-X", "importtime", "-IS", BERTH_SHIM, "-namespace", "imports",
                 "-address", daemon, "-id", "joiner", "start"],
                cwd=bundle, env={**os.environ, GROUP_ENV: "namespace"}, capture_output=True,
                text=True, stdin=subprocess.DEVNULL, check=True, timeout=30)
        finally:
            os.unlink(path)
    assert out.stdout == address
    assert (bundle / "address").read_text() == address
    loaded = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
              if line.startswith("import time:")}
    slow = {"socket", "json", "re", "typing", "hashlib", "contextlib", "signal", "enum",
            "collections", "asyncio", "google.protobuf", "dataclasses", "subprocess"}
    assert "berth.shimgroups" in loaded  # (the check sees start's own imports)
    assert loaded & slow == set()
    # and what a start that has a shim forked loads besides (the zygote's client side)
    root = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "import berth.shimlaunch, berth.spawn, resource; "
            "print(' '.join(sorted(sys.modules)))")
    forking = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True,
                                 text=True, check=True).stdout.split())
    assert forking & slow == set()


def test_zygote_messages_are_framed(tmp_path: Path) -> None:
    """A message of the zygote's protocol arrives whole, with its fds, however large (a
    request carries the caller's environment)."""
    from berth import shimlaunch

    message = {"env": {f"VAR{i}": "x" * 100 for i in range(3000)}, "argv": ["-id", "big"]}
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right, open(tmp_path / "passed", "w") as passed:
        sender = threading.Thread(target=shimlaunch.send, args=(left, message, [passed.fileno()]))
        sender.start()
        data, fds, _flags, _addr = socket.recv_fds(right, 1 << 16, 2)
        got = shimlaunch.receive(right, data)
        sender.join()
        assert got == message and len(fds) == 1
        os.write(fds[0], b"through the passed fd")
        os.close(fds[0])
    assert (tmp_path / "passed").read_text() == "through the passed fd"


def test_zygote_messages_are_checked() -> None:
    """What is not one of the zygote protocol's messages is refused with RuntimeError (which
    makes ``start`` fall back to starting the shim itself)."""
    import marshal

    from berth.shimlaunch import _decode

    assert _decode(marshal.dumps({"pid": 7})) == {"pid": 7}
    for bad in (b"", b"\x00garbage", marshal.dumps([1, 2]), marshal.dumps({"pid": 1})[:-2]):
        with pytest.raises(RuntimeError, match="unreadable"):
            _decode(bad)
