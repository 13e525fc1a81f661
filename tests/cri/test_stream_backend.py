"""The streaming backend's port-forward dial: into the pod's network namespace, never the host's
loopback for a pod that has a network of its own (whatever its record says)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.processes import StreamBackend
from berth.cri.store import Sandbox, SandboxState


def _backend(sandbox: Sandbox) -> StreamBackend:
    core = SimpleNamespace(index=SimpleNamespace(sandbox=lambda sandbox_id: sandbox))
    return StreamBackend(cast(Any, core), cast(Any, None))


def _sandbox(*, host_network: bool, netns_path: str) -> Sandbox:
    mode = pb.NODE if host_network else pb.POD
    config = pb.PodSandboxConfig(linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=mode))))
    return Sandbox("s" * 64, "pod", config, netns_path=netns_path, state=SandboxState.READY)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def test_a_pod_network_without_a_namespace_is_not_dialled_on_the_host(
        listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    backend = _backend(_sandbox(host_network=False, netns_path=""))
    with pytest.raises(errdefs.FailedPrecondition, match=r"network namespace .* is closed"):
        backend.dial("s" * 64, port)
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing reached the host's loopback


def test_a_host_network_pod_is_dialled_on_the_host(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    conn = _backend(_sandbox(host_network=True, netns_path="")).dial("s" * 64, port)
    try:
        accepted, _ = listener.accept()
        accepted.close()
    finally:
        conn.close()
