"""The CRI's Exec, Attach and PortForward calls: each request is checked as containerd checks
it (the container running, the pod ready, the streams asked for making sense) and answered with
the URL of the streaming server (:mod:`berth.cri.streaming.server`) where the client carries it
out."""

from __future__ import annotations

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.containers import Containers
from berth.cri.sandboxes import Sandboxes
from berth.cri.store import SandboxState
from berth.cri.streaming.server import StreamServer


def _check_streams(container_id: str, stdin: bool, stdout: bool, stderr: bool,
                   tty: bool) -> None:
    """The kubelet streaming library's checks of an Exec or Attach request."""
    if not container_id:
        raise errdefs.InvalidArgument("missing required container_id")
    if tty and stderr:
        raise errdefs.InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise errdefs.InvalidArgument("one of stdin, stdout, or stderr must be set")


class Streaming:
    def __init__(self, server: StreamServer, sandboxes: Sandboxes,
                 containers: Containers) -> None:
        self.server = server
        self.sandboxes = sandboxes
        self.containers = containers

    def _running(self, container_id: str) -> None:
        try:
            c = self.containers.get(container_id)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                f"failed to find container {container_id!r} in store: not found") from None
        self.containers.refresh(c)
        if c.status.state != pb.CONTAINER_RUNNING:
            raise errdefs.Unknown(
                f"container is in {pb.ContainerState.Name(c.status.state)} state")

    def exec_url(self, request: pb.ExecRequest) -> str:
        self._running(request.container_id)
        _check_streams(request.container_id, request.stdin, request.stdout, request.stderr,
                       request.tty)
        if not request.cmd:
            raise errdefs.InvalidArgument("missing required cmd")
        return self.server.url("exec", request)

    def attach_url(self, request: pb.AttachRequest) -> str:
        self._running(request.container_id)
        _check_streams(request.container_id, request.stdin, request.stdout, request.stderr,
                       request.tty)
        return self.server.url("attach", request)

    def port_forward_url(self, request: pb.PortForwardRequest) -> str:
        if not request.pod_sandbox_id:
            raise errdefs.InvalidArgument("missing required pod_sandbox_id")
        info = self.sandboxes.status(request.pod_sandbox_id)
        if info.state != SandboxState.READY:
            raise errdefs.Unknown("sandbox container is not running")
        return self.server.url("portforward", request)
