"""CRI containers: Create, Start, Stop, Remove, Status, List, UpdateContainerResources,
ReopenContainerLog and ExecSync, as containerd 1.6.20's CRI plugin does them.

A container is a record in ``k8s.io`` (spec from the image config, the CRI config and its pod;
a snapshot on the image's layers) made by CreateContainer; StartContainer creates and starts its
task. Its output goes to the CRI log file the kubelet names (``<log_directory>/<log_path>``):
with Berth's shim the shim writes the log itself (a ``crilog://`` stdout, see
:mod:`berth.crilog`), so the daemon never carries a container's output and the log keeps being
written while berthd restarts; with another runtime (a third-party shim configured as a
handler) berthd copies from FIFOs (:mod:`berth.cri.logs`), as containerd does.

State follows containerd's: CREATED → RUNNING (Start) → EXITED (the process ended, or Stop);
Start of anything but a CREATED container, and ExecSync into one not RUNNING, fail with
containerd's messages (gRPC Unknown). Stop sends the image's stop signal (SIGTERM by default),
waits the grace period, then SIGKILL, and returns once the process is gone. Remove stops first;
removing an unknown container succeeds.

ExecSync runs a process in the container with its output in memory, each stream capped at
16 MiB (CVE-2022-31030: beyond it, output is read and dropped), killed when the timeout passes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import secrets
import select
import signal
import threading
from dataclasses import dataclass
from typing import Any

from berth import crilog, errdefs, namespaces
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.containers import AnyValue, RuntimeInfo, pack_spec, unpack_spec
from berth.containers import Container as Record
from berth.cri import NAMESPACE
from berth.cri import spec as crispec
from berth.cri.attach import Output
from berth.cri.base import (
    REASON_COMPLETED,
    REASON_ERROR,
    REASON_OOM,
    Core,
    new_id,
    now_ns,
    remove_tree,
)
from berth.cri.logs import LogCopier
from berth.cri.store import (
    CONTAINER_EXTENSION,
    KIND_CONTAINER,
    Container,
    SandboxState,
    Status,
    build_labels,
    container_name,
)
from berth.oci.spec import host_devices
from berth.runtime.runtime import IO, CreateOpts, ExecOpts, Exit
from berth.runtime.runtime import Status as TaskStatus

log = logging.getLogger(__name__)

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
EXEC_OUTPUT_LIMIT = 16 << 20  # per stream (CVE-2022-31030)
STOP_SIGNAL = "SIGTERM"


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def parse_signal(name: str) -> int:
    """A stop signal as an image names it (``SIGTERM``, ``TERM``, ``15``)."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise errdefs.InvalidArgument(f"unknown stop signal {name!r}") from None


class _Capped:
    """Reads a FIFO to its end in a thread, keeping at most ``limit`` bytes (the rest is read
    and dropped). The FIFO is polled before each read: with no writer yet it is not readable,
    so a read of nothing after a poll said readable is the end."""

    def __init__(self, path: str, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self._stopped = threading.Event()
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._run, name="cri-exec-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        try:
            while True:
                if not poller.poll(200):
                    if self._stopped.is_set():
                        return
                    continue
                try:
                    chunk = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                room = self.limit - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
        finally:
            os.close(self._fd)

    def wait(self, timeout: float) -> None:
        """Wait for the end; then stop reading (a writer that never came)."""
        self.thread.join(timeout)
        self._stopped.set()
        self.thread.join()


class Containers:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._copiers: dict[str, LogCopier] = {}
        self.outputs: dict[str, Output] = {}
        """Running containers' live output, for attach."""
        self._oom_killed: set[str] = set()
        core.on_exit(self._exited)
        core.on_oom(self._oom_killed.add)

    # -- helpers ------------------------------------------------------------------------------

    def get(self, container_id: str) -> Container:
        try:
            return self.core.index.container(container_id)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                f"an error occurred when try to find container {container_id!r}: not found"
            ) from None

    def _record(self, container_id: str) -> Record:
        return self.core.containers.get(container_id)

    # -- CreateContainer ----------------------------------------------------------------------

    def create(self, sandbox_id: str, config: pb.ContainerConfig,
               sandbox_config: pb.PodSandboxConfig) -> str:
        core = self.core
        try:
            sb = core.index.sandbox(sandbox_id)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                f"failed to find sandbox id {sandbox_id!r}: not found") from None
        if sb.state != SandboxState.READY:
            raise errdefs.NotFound(
                f"failed to get sandbox container task: no running task found: task {sb.id} "
                "not found: not found")
        if not config.HasField("metadata"):
            raise errdefs.InvalidArgument("container config must include metadata")
        name = container_name(config.metadata, sb.config.metadata)
        container_id = new_id()
        core.index.reserve(name, container_id)
        try:
            with namespaces.use(NAMESPACE), core.leased(), contextlib.ExitStack() as undo:
                c = self._create(container_id, name, sb.id, sb.pid, config, sb.config,
                                 sb.runtime_handler, undo)
                undo.pop_all()
        except BaseException:
            core.index.release(name)
            raise
        with core.index.lock:
            core.index.containers[c.id] = c
        return c.id

    def _create(self, container_id: str, name: str, sandbox_id: str, sandbox_pid: int,
                config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig,
                handler_name: str, undo: contextlib.ExitStack) -> Container:
        core = self.core
        ref = config.image.image
        image = core.images.local(ref)
        if image is None:
            raise errdefs.NotFound(f"failed to resolve image {ref!r}: not found")
        handler = core.config.handler(handler_name)
        log_path = ""
        if config.log_path and sandbox_config.log_directory:
            log_path = _log_path(sandbox_config.log_directory, config.log_path)
        inner = image.config.get("config") or {}
        stop_signal = str(inner.get("StopSignal") or "") if isinstance(inner, dict) else ""
        c = Container(container_id, name, sandbox_id, config, image.image.id,
                      log_path=log_path, stop_signal=stop_signal, image_name=image.name)
        c.status_path = os.path.join(core.paths.container_root(container_id), "status")
        c.io_dir = os.path.join(core.paths.container_state(container_id), "io")
        core.snapshotter.prepare(container_id, image.chain_id)
        undo.callback(core.delete_record, container_id)
        files = {d: os.path.join(core.paths.sandbox_root(sandbox_id), n)
                 for d, n in ((crispec.ETC_HOSTNAME, "hostname"), (crispec.ETC_HOSTS, "hosts"),
                              (crispec.RESOLV_CONF, "resolv.conf"))}
        privileged = config.linux.security_context.privileged
        with core.rootfs(container_id) as rootfs:
            spec = crispec.container_spec(
                container_id, config, sandbox_config, image.config, namespace=NAMESPACE,
                sandbox_id=sandbox_id, sandbox_pid=sandbox_pid, rootfs=rootfs,
                sandbox_files=files, shm_path=core.paths.shm(sandbox_id), image_name=ref,
                restrict_oom_score_adj=core.config.restrict_oom_score_adj,
                host_devices=host_devices() if privileged
                and not handler.privileged_without_host_devices else (),
                container_annotations=handler.container_annotations,
                apparmor=not core.config.disable_apparmor and crispec.apparmor_supported())
        os.makedirs(core.paths.container_root(container_id), mode=0o700)
        undo.callback(remove_tree, core.paths.container_root(container_id))
        os.makedirs(c.io_dir, mode=0o700)
        undo.callback(remove_tree, core.paths.container_state(container_id))
        record = core.containers.create(Record(
            id=container_id, runtime=RuntimeInfo(handler.runtime_type,
                                                 AnyValue(RUNC_OPTIONS_TYPE)),
            spec=pack_spec(spec), labels=build_labels(dict(config.labels), image.config,
                                                      KIND_CONTAINER),
            image=image.name, snapshotter=core.config.snapshotter, snapshot_key=container_id,
            extensions={CONTAINER_EXTENSION: c.extension()}))
        c.status = Status(created_at=record.created_at)
        c.save_status()
        return c

    # -- StartContainer ------------------------------------------------------------------------

    def start(self, container_id: str) -> None:
        c = self.get(container_id)
        core = self.core
        with namespaces.use(NAMESPACE), c.lock:
            state = c.status.state
            if state != pb.CONTAINER_CREATED:
                raise errdefs.Unknown(
                    f"failed to set starting state for container {c.id!r}: container is in "
                    f"{pb.ContainerState.Name(state)} state")
            try:
                sb = core.index.sandbox(c.sandbox_id)
            except errdefs.NotFound:
                raise errdefs.NotFound(
                    f"sandbox {c.sandbox_id!r} not found") from None
            if sb.state != SandboxState.READY:
                raise errdefs.FailedPrecondition(
                    f"sandbox container {sb.id!r} is not running")
            record = self._record(c.id)
            handler = core.config.handler(sb.runtime_handler)
            try:
                io = self._io(c, core.berth_shim(record.runtime.name, handler.runtime_path))
                task = core.runtime.create(c.id, CreateOpts(io=io,
                                                            runtime_path=handler.runtime_path))
                try:
                    pid = task.start()
                except BaseException:
                    core.remove_task(c.id)
                    raise
            except errdefs.BerthError as err:
                self._close_copier(c.id)
                c.status.finished_at = now_ns()
                c.status.exit_code = 128
                c.status.reason = REASON_ERROR
                c.status.message = str(err)
                c.save_status()
                raise type(err)(f"failed to start container {c.id!r}: {err}") from None
            c.status.pid = pid
            c.status.started_at = now_ns()
            c.save_status()

    def _io(self, c: Container, berth_shim: bool) -> IO:
        """The container's stdio: its CRI log written by Berth's shim (which also tees the
        output to attach FIFOs), or FIFOs berthd copies to the log (checked writable here
        first, so a bad log path fails the start); a stdin FIFO when the config asks for
        stdin (for attach)."""
        tty = c.config.tty
        streams = (crilog.STDOUT,) if tty else (crilog.STDOUT, crilog.STDERR)
        stdin = ""
        if c.config.stdin:
            stdin = os.path.join(c.io_dir, "stdin")
            _mkfifo(stdin)
        if not c.log_path:
            return IO(stdin=stdin, terminal=tty)
        max_line = self.core.config.max_container_log_line_size
        _check_log_path(c.log_path)
        if berth_shim:
            attach_dir = attach_fifos_dir(c)
            os.makedirs(attach_dir, mode=0o700, exist_ok=True)
            fifos = {s: os.path.join(attach_dir, s) for s in streams}
            for fifo in fifos.values():
                _mkfifo(fifo)
            self.outputs[c.id] = Output(fifos)
            return IO(stdin=stdin, stdout=crilog.format_uri(c.log_path, max_line, attach_dir),
                      terminal=tty)
        suffix = secrets.token_hex(4)
        paths = {s: os.path.join(c.io_dir, f"{suffix}-{s}") for s in streams}
        for fifo in paths.values():
            _mkfifo(fifo)
        output = self.outputs[c.id] = Output()
        copier = LogCopier(c.log_path, stdout=paths[crilog.STDOUT],
                           stderr=paths.get(crilog.STDERR, ""), max_line_size=max_line,
                           on_output=output.publish)
        self._copiers[c.id] = copier
        return IO(stdin=stdin, stdout=paths[crilog.STDOUT], stderr=paths.get(crilog.STDERR, ""),
                  terminal=tty)

    def _close_copier(self, container_id: str) -> None:
        copier = self._copiers.pop(container_id, None)
        if copier is not None:
            copier.close()

    # -- exits -----------------------------------------------------------------------------------

    def _exited(self, task_id: str, exit_: Exit) -> None:
        with self.core.index.lock:
            c = self.core.index.containers.get(task_id)
        if c is None:
            return
        self._record_exit(c, exit_)

    def _record_exit(self, c: Container, exit_: Exit) -> None:
        """Record a container's exit (once), as OOMKilled when its cgroup ran out of memory."""
        with c.lock:
            if c.status.finished_at:
                return
            oom = c.id in self._oom_killed
            self._oom_killed.discard(c.id)
            with contextlib.suppress(errdefs.NotFound, errdefs.FailedPrecondition):
                self.core.runtime.delete(c.id)
            copier = self._copiers.pop(c.id, None)
            if copier is not None:
                copier.wait(2.0)
            output = self.outputs.pop(c.id, None)
            if output is not None:
                output.end()
            c.status.pid = 0
            c.status.finished_at = exit_.exited_at or now_ns()
            c.status.exit_code = exit_.status
            c.status.reason = REASON_OOM if oom else (
                REASON_COMPLETED if exit_.status == 0 else REASON_ERROR)
            c.save_status()
        log.info("cri: container %s exited with status %d", c.id, exit_.status)

    def _reconcile(self, c: Container) -> None:
        """Record the exit of a container whose task ended while no event said so."""
        if c.status.state != pb.CONTAINER_RUNNING:
            return
        task = self.core.task(c.id)
        if task is None:
            self._record_exit(c, Exit(255, now_ns()))
            return
        state = task.state()
        if state.status == TaskStatus.STOPPED:
            self._record_exit(c, Exit(state.exit_status, state.exited_at))

    # -- StopContainer / RemoveContainer --------------------------------------------------------

    def stop(self, container_id: str, timeout: int) -> None:
        c = self.get(container_id)
        with namespaces.use(NAMESPACE), c.lock:
            self._stop(c, timeout)

    def _stop(self, c: Container, timeout: int) -> None:
        if c.status.state != pb.CONTAINER_RUNNING:
            return
        task = self.core.task(c.id)
        if task is None:
            self._reconcile(c)
            return
        if timeout > 0:
            sig = parse_signal(c.stop_signal or STOP_SIGNAL)
            with contextlib.suppress(errdefs.NotFound):
                task.kill(sig)
            exit_ = self.core.wait_exit(task, timeout)
            if exit_ is not None:
                self._reconcile_after(c, task)
                return
        with contextlib.suppress(errdefs.NotFound):
            task.kill(signal.SIGKILL)
        self.core.wait_exit(task, None)
        self._reconcile_after(c, task)

    def _reconcile_after(self, c: Container, task: Any) -> None:
        try:
            state = task.state()
            self._record_exit(c, Exit(state.exit_status, state.exited_at))
        except errdefs.NotFound:
            self._reconcile(c)

    def remove(self, container_id: str) -> None:
        try:
            c = self.core.index.container(container_id)
        except errdefs.NotFound:
            return
        core = self.core
        with namespaces.use(NAMESPACE), c.lock:
            if c.status.state in (pb.CONTAINER_RUNNING, pb.CONTAINER_UNKNOWN):
                self._stop(c, 0)
            c.status.removing = True
            core.remove_task(c.id)
            self._close_copier(c.id)
            core.delete_record(c.id)
            remove_tree(core.paths.container_root(c.id))
            remove_tree(core.paths.container_state(c.id))
        with core.index.lock:
            core.index.containers.pop(c.id, None)
        core.index.release(c.name)

    # -- status and list ------------------------------------------------------------------------

    def refresh(self, c: Container) -> Container:
        with namespaces.use(NAMESPACE), contextlib.suppress(errdefs.BerthError):
            self._reconcile(c)
        return c

    def image_ref(self, c: Container) -> str:
        image = self.core.images.status(c.image_ref)
        if image is not None and image.repo_digests:
            return image.repo_digests[0]
        return c.image_ref

    def verbose(self, c: Container) -> dict[str, str]:
        with namespaces.use(NAMESPACE):
            try:
                record: Record | None = self._record(c.id)
            except errdefs.NotFound:
                record = None
        doc: dict[str, Any] = {
            "sandboxID": c.sandbox_id, "pid": c.status.pid, "removing": c.status.removing,
            "snapshotKey": c.id, "snapshotter": self.core.config.snapshotter,
            "runtimeType": record.runtime.name if record else "", "runtimeOptions": {},
            "config": json.loads(c.extension().value)["Metadata"]["Config"]}
        if record is not None:
            doc["runtimeSpec"] = unpack_spec(record.spec)
        return {"info": json.dumps(doc, separators=(",", ":"))}

    def list(self, flt: pb.ContainerFilter | None = None) -> builtins.list[Container]:
        with self.core.index.lock:
            containers = list(self.core.index.containers.values())
        out = []
        for c in containers:
            self.refresh(c)
            if flt is not None:
                if flt.id and not c.id.startswith(flt.id):
                    continue
                if flt.pod_sandbox_id and not c.sandbox_id.startswith(flt.pod_sandbox_id):
                    continue
                if flt.HasField("state") and c.status.state != flt.state.state:
                    continue
                if any(c.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                    continue
            out.append(c)
        return sorted(out, key=lambda c: c.status.created_at)

    # -- UpdateContainerResources / ReopenContainerLog -----------------------------------------

    def update_resources(self, container_id: str, resources: pb.LinuxContainerResources) -> None:
        c = self.get(container_id)
        with namespaces.use(NAMESPACE), c.lock:
            if c.status.state not in (pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING):
                raise errdefs.Unknown(
                    f"failed to update resources: container {c.id} is in "
                    f"{pb.ContainerState.Name(c.status.state)} state")
            wanted = crispec.linux_resources(resources)
            record = self._record(c.id)
            spec = unpack_spec(record.spec)
            current = spec.setdefault("linux", {}).setdefault("resources", {})
            current.update(wanted)
            if c.status.state == pb.CONTAINER_RUNNING:
                task = self.core.task(c.id)
                if task is not None:
                    task.update(AnyValue(RESOURCES_TYPE_URL,
                                         json.dumps(current, separators=(",", ":")).encode()))
            record.spec = pack_spec(spec)
            self.core.containers.update(record, ["spec"])
            c.config.linux.resources.CopyFrom(resources)

    def reopen_log(self, container_id: str) -> None:
        c = self.get(container_id)
        if c.status.state != pb.CONTAINER_RUNNING:
            raise errdefs.Unknown("container is not running")
        copier = self._copiers.get(c.id)
        if copier is not None:
            copier.reopen()
        elif c.log_path:
            # Berth's shim writes the file at the path; a new file there is what it writes to
            # next (it notices a rotated-away file before each write).
            _check_log_path(c.log_path)

    # -- ExecSync --------------------------------------------------------------------------------

    def exec_sync(self, container_id: str, cmd: builtins.list[str], timeout: int
                  ) -> ExecResult:
        c = self.get(container_id)
        core = self.core
        with namespaces.use(NAMESPACE):
            self.refresh(c)
            if c.status.state != pb.CONTAINER_RUNNING:
                raise errdefs.Unknown(
                    f"failed to exec in container: container is in "
                    f"{pb.ContainerState.Name(c.status.state)} state")
            task = core.task(c.id)
            if task is None:
                raise errdefs.NotFound(f"no running task found: task {c.id} not found")
            process = crispec.exec_process(unpack_spec(self._record(c.id).spec), cmd)
            exec_id = secrets.token_hex(16)
            fifo_dir = os.path.join(c.io_dir, f"exec-{exec_id[:12]}")
            os.makedirs(fifo_dir, mode=0o700)
            try:
                return self._exec(task, exec_id, process, fifo_dir, timeout)
            finally:
                remove_tree(fifo_dir)

    def _exec(self, task: Any, exec_id: str, process: dict[str, Any], fifo_dir: str,
              timeout: int) -> ExecResult:
        stdout, stderr = os.path.join(fifo_dir, "stdout"), os.path.join(fifo_dir, "stderr")
        os.mkfifo(stdout, 0o600)
        os.mkfifo(stderr, 0o600)
        readers = [_Capped(stdout, EXEC_OUTPUT_LIMIT), _Capped(stderr, EXEC_OUTPUT_LIMIT)]
        spec = AnyValue(PROCESS_TYPE_URL, json.dumps(process, separators=(",", ":")).encode())
        task.exec(exec_id, ExecOpts(spec, IO(stdout=stdout, stderr=stderr)))
        try:
            task.start(exec_id)
            exit_ = self.core.wait_exit(task, timeout or None, exec_id)
            if exit_ is None:
                with contextlib.suppress(errdefs.NotFound):
                    task.kill(signal.SIGKILL, exec_id=exec_id)
                self.core.wait_exit(task, None, exec_id)
                raise errdefs.DeadlineExceeded(
                    f"command {process['args']!r} timed out after {timeout}s")
        finally:
            for r in readers:
                r.wait(5.0)
            with contextlib.suppress(errdefs.BerthError):
                task.delete_process(exec_id)
        return ExecResult(bytes(readers[0].data), bytes(readers[1].data), exit_.status)

    # -- recovery -------------------------------------------------------------------------------

    def recover(self, containers: builtins.list[Container]) -> None:
        index = self.core.index
        with namespaces.use(NAMESPACE):
            for c in containers:
                if not c.status.created_at:
                    c.status.created_at = now_ns()
                with index.lock:
                    index.containers[c.id] = c
                index.reserve(c.name, c.id)
                with contextlib.suppress(errdefs.BerthError, OSError):
                    self._reconcile(c)
                if c.status.state == pb.CONTAINER_RUNNING:
                    self._recover_output(c)

    def _recover_output(self, c: Container) -> None:
        """Take a running container's output back after a restart: Berth's shim's attach
        FIFOs, or, for another runtime, its stdout and stderr FIFOs, copied into the log again
        (as containerd reopens them: nobody reading them, the container would block once they
        are full)."""
        attach_dir = attach_fifos_dir(c)
        if os.path.isdir(attach_dir):
            self.outputs[c.id] = Output({s: os.path.join(attach_dir, s)
                                         for s in sorted(os.listdir(attach_dir))})
            return
        try:
            names = os.listdir(c.io_dir)
        except OSError:
            return
        fifos = {stream: os.path.join(c.io_dir, name) for name in sorted(names)
                 for stream in (crilog.STDOUT, crilog.STDERR)
                 if name.endswith(f"-{stream}") and not name.startswith("exec-")}
        if crilog.STDOUT not in fifos or not c.log_path:
            return
        output = self.outputs[c.id] = Output()
        try:
            self._copiers[c.id] = LogCopier(
                c.log_path, stdout=fifos[crilog.STDOUT], stderr=fifos.get(crilog.STDERR, ""),
                max_line_size=self.core.config.max_container_log_line_size,
                on_output=output.publish)
        except errdefs.BerthError as err:
            log.warning("cri: container %s: cannot copy its output again: %s", c.id, err)


def attach_fifos_dir(c: Container) -> str:
    return os.path.join(c.io_dir, "attach")


def _mkfifo(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)


def _log_path(directory: str, name: str) -> str:
    """A container's log file: the sandbox's ``log_directory`` joined with the container's
    ``log_path`` and cleaned, as containerd joins them (so an absolute ``log_path`` is still
    inside the directory). Stricter than containerd, a path that climbs out of the directory
    with ``..`` is refused (InvalidArgument): the kubelet always names a file within it."""
    if not os.path.isabs(directory):
        raise errdefs.InvalidArgument(f"log directory {directory!r} must be absolute")
    if "\0" in directory or "\0" in name:
        raise errdefs.InvalidArgument(f"log path {name!r} holds a NUL byte")
    directory = os.path.normpath(directory)
    path = os.path.normpath(directory + "/" + name)
    if not path.startswith(directory.rstrip("/") + "/"):
        raise errdefs.InvalidArgument(
            f"log path {name!r} must name a file inside the log directory {directory!r}")
    return path


def _check_log_path(path: str) -> None:
    """Create (or open) the log file and its directory, as containerd does before starting a
    container, so a bad path is a clear error of the start. It is opened as the container's
    output will be (:class:`berth.crilog.LogFile`: no symlink, a regular file only)."""
    try:
        crilog.LogFile(path).close()
    except errdefs.BerthError as err:
        raise errdefs.Unknown(str(err)) from None
