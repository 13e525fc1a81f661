"""What the streaming server drives, made from the CRI's objects: processes exec'd into a
container, attach sessions to a container, and connections dialled inside a pod's network
namespace (:class:`StreamBackend`, the server's :class:`~berth.cri.streaming.server.Backend`).

An exec'd process gets FIFOs of its own (``<container io dir>/stream-<id>/``) for the streams
the request asks for, and its exec id is deleted when the session ends. An attach session reads
the container's live output (:mod:`berth.cri.attach`) and writes into its stdin FIFO (made at
StartContainer for a container whose config asks for stdin). A port-forward dials
``localhost:PORT`` from inside the pod's network namespace (the host's for a host-network pod),
as containerd does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket

from berth import errdefs, namespaces
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.containers import AnyValue, unpack_spec
from berth.cri import NAMESPACE
from berth.cri import spec as crispec
from berth.cri.attach import Session
from berth.cri.base import Core, remove_tree
from berth.cri.containers import PROCESS_TYPE_URL, Containers
from berth.cri.netns import NetNS
from berth.cri.store import Container, SandboxState
from berth.runtime.runtime import IO, ExecOpts, Status, Task

DIAL_TIMEOUT = 10.0

log = logging.getLogger(__name__)


def _mkfifo(path: str) -> str:
    os.mkfifo(path, 0o600)
    return path


class ExecProcess:
    """A process exec'd into a running container for a streaming session."""

    session: Session | None = None
    stdin_once = True

    def __init__(self, task: Task, container: Container, spec: dict[str, object],
                 request: pb.ExecRequest) -> None:
        self.task = task
        self.outputs: dict[str, int] = {}
        self.exec_id = secrets.token_hex(16)
        self.dir = os.path.join(container.io_dir, f"stream-{self.exec_id[:12]}")
        os.makedirs(self.dir, mode=0o700)
        try:
            tty = request.tty
            self.stdin = _mkfifo(os.path.join(self.dir, "stdin")) if request.stdin else ""
            paths: dict[str, str] = {}
            if request.stdout:
                paths["stdout"] = _mkfifo(os.path.join(self.dir, "stdout"))
            if request.stderr and not tty:
                paths["stderr"] = _mkfifo(os.path.join(self.dir, "stderr"))
            # Read ends open before the process starts: a FIFO nobody holds loses its content.
            self.outputs.update({name: os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                                 for name, path in paths.items()})
            process = crispec.exec_process(spec, list(request.cmd), tty)
            io = IO(stdin=self.stdin, stdout=paths.get("stdout", ""),
                    stderr=paths.get("stderr", ""), terminal=tty)
            task.exec(self.exec_id, ExecOpts(AnyValue(
                PROCESS_TYPE_URL, json.dumps(process, separators=(",", ":")).encode()), io))
        except BaseException:
            self._close_outputs()
            remove_tree(self.dir)
            raise
        try:
            task.start(self.exec_id)
        except BaseException as err:
            try:
                self.release()  # whatever failed (a shim gone mid-call too): nothing is left
            except (errdefs.BerthError, OSError) as cleanup:
                log.warning("cri: cleaning up exec %s after a failed start: %s", self.exec_id,
                            cleanup)
            if not isinstance(err, errdefs.BerthError):
                raise
            raise errdefs.Unknown(f"failed to exec in container: failed to start exec "
                                  f"\"{self.exec_id}\": {err}") from None

    def resize(self, width: int, height: int) -> None:
        self.task.resize_pty(width, height, self.exec_id)

    def close_stdin(self) -> None:
        self.task.close_io(self.exec_id)

    def wait(self) -> int:
        return self.task.wait(self.exec_id).status

    def exited(self) -> bool:
        return self.task.state(self.exec_id).status == Status.STOPPED

    def kill(self) -> None:
        with contextlib.suppress(errdefs.NotFound):
            self.task.kill(signal.SIGKILL, exec_id=self.exec_id)

    def _close_outputs(self) -> None:
        for fd in self.outputs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.outputs = {}

    def release(self) -> None:
        self._close_outputs()
        with contextlib.suppress(errdefs.BerthError):
            self.task.delete_process(self.exec_id)
        remove_tree(self.dir)


class AttachProcess:
    """A streaming session attached to a running container."""

    def __init__(self, task: Task, container: Container, session: Session,
                 request: pb.AttachRequest) -> None:
        self.outputs: dict[str, int] = {}
        self.task = task
        self.container = container
        self.session: Session | None = session
        self.stdin = os.path.join(container.io_dir, "stdin") \
            if request.stdin and container.config.stdin else ""
        self.stdin_once = container.config.stdin_once

    def resize(self, width: int, height: int) -> None:
        self.task.resize_pty(width, height)

    def close_stdin(self) -> None:
        self.task.close_io()

    def wait(self) -> int:
        return self.task.wait().status

    def exited(self) -> bool:
        """The container is no longer running (its exit is recorded by the CRI's exit
        monitor on the container this attach holds)."""
        return self.container.status.state != pb.CONTAINER_RUNNING

    def kill(self) -> None:
        """An attach never ends the container."""

    def release(self) -> None:
        if self.session is not None:
            self.session.close()


class StreamBackend:
    def __init__(self, core: Core, containers: Containers) -> None:
        self.core = core
        self.containers = containers

    def _running(self, container_id: str) -> tuple[Container, Task]:
        c = self.containers.get(container_id)
        self.containers.refresh(c)
        if c.status.state != pb.CONTAINER_RUNNING:
            raise errdefs.Unknown(
                f"container is in {pb.ContainerState.Name(c.status.state)} state")
        with namespaces.use(NAMESPACE):
            task = self.core.task(c.id)
        if task is None:
            raise errdefs.NotFound(f"no running task found: task {c.id} not found")
        return c, task

    def exec_process(self, request: pb.ExecRequest) -> ExecProcess:
        c, task = self._running(request.container_id)
        with namespaces.use(NAMESPACE):
            spec = unpack_spec(self.core.containers.get(c.id).spec)
            return ExecProcess(task, c, spec, request)

    def attach_process(self, request: pb.AttachRequest) -> AttachProcess:
        c, task = self._running(request.container_id)
        output = self.containers.outputs.get(c.id)
        if output is None:
            raise errdefs.FailedPrecondition(
                f"container {c.id} has no output to attach to (it was started without a log "
                "path, or before berthd restarted with a runtime whose output berthd copies)")
        return AttachProcess(task, c, output.subscribe(), request)

    def dial(self, sandbox_id: str, port: int) -> socket.socket:
        sb = self.core.index.sandbox(sandbox_id)
        if sb.state != SandboxState.READY:
            raise errdefs.Unknown("sandbox container is not running")

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=DIAL_TIMEOUT)

        if sb.host_network:
            return connect()  # the pod's network is the host's
        if not sb.netns_path:
            # Never the host's loopback for a pod with a network of its own (containerd: the
            # namespace is closed).
            raise errdefs.FailedPrecondition(
                f"network namespace for sandbox {sb.id} is closed")
        try:
            return NetNS.load(sb.netns_path).run(connect)
        except OSError as err:
            # containerd's words (it dials tcp4 localhost inside the namespace).
            reason = (err.strerror or str(err)).lower()
            raise errdefs.Unknown(
                f"failed to execute portforward in network namespace \"{sb.netns_path}\": "
                f"failed to connect to localhost:{port} inside namespace \"{sb.id}\", IPv4: "
                f"dial tcp4 127.0.0.1:{port}: connect: {reason} IPv6 dial tcp6: address "
                "localhost: no suitable address found") from None
