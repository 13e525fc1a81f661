"""berthd stopped (TERM or KILL) and started again with pods running: every pod and container
comes back with the same status, exec and logs keep working (Berth's shim writes the log while
berthd is down), an exit that happened meanwhile is recorded, and a pod's network is torn down
only when the pod is stopped. Berth only: this is about berthd's own restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import require_root
from cri_fixtures import CRI, berthd_config, container_config, delete_link, pod_config
from daemon import Berthd
from images import ImageInfo

from berth.api.cri.runtime.v1 import api_pb2 as pb

BRIDGE, SUBNET = "berthcri3", "10.203.3.0/24"


@pytest.fixture
def berthd(tmp_path: Path, pause_image: str, busybox_image: ImageInfo) -> Iterator[Berthd]:
    require_root()
    config = berthd_config(tmp_path, pause_image, BRIDGE, SUBNET)
    daemon = Berthd(tmp_path / "berthd", config=str(config))
    try:
        with daemon:
            CRI(daemon.address).pull(busybox_image.ref)
            try:
                yield daemon
            finally:
                if daemon.proc is None:
                    daemon.start()
                client = CRI(daemon.address)
                client.remove_everything()
                client.close()
    finally:
        delete_link(BRIDGE)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _grows(path: Path, within: float = 5) -> bool:
    before = _lines(path)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _lines(path) > before:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("hard", [False, True], ids=["term", "kill"])
def test_pods_survive_a_restart(berthd: Berthd, busybox_image: ImageInfo, tmp_path: Path,
                                hard: bool) -> None:
    c = CRI(berthd.address)
    logs = tmp_path / "logs"
    logs.mkdir()
    pod = pod_config("survivor", logs)
    pod_id = c.run_pod(pod)
    ticker = c.run(pod_id, container_config(
        "ticker", busybox_image.ref, "while true; do echo tick; sleep 0.1; done"), pod)
    quitter = c.run(pod_id, container_config(
        "quitter", busybox_image.ref, "while [ ! -e /tmp/quit ]; do sleep 0.05; done; exit 7"),
        pod)
    before = {cid: c.container_status(cid).status for cid in (ticker, quitter)}
    quitter_pid = json.loads(c.container_status(quitter, verbose=True).info["info"])["pid"]
    pod_before = c.pod_status(pod_id).status
    netns = os.listdir("/var/run/netns")
    c.close()

    berthd.stop(hard=hard)
    # While berthd is down: the shim keeps writing the log, and a container exits.
    assert _grows(logs / "ticker.log")
    Path(f"/proc/{quitter_pid}/root/tmp/quit").touch()
    time.sleep(0.5)
    berthd.start()

    c = CRI(berthd.address)
    try:
        pod_after = c.pod_status(pod_id).status
        assert (pod_after.state, pod_after.network.ip, pod_after.created_at) == \
            (pb.SANDBOX_READY, pod_before.network.ip, pod_before.created_at)
        after = c.container_status(ticker).status
        assert (after.state, after.created_at, after.started_at, after.log_path) == \
            (pb.CONTAINER_RUNNING, before[ticker].created_at, before[ticker].started_at,
             before[ticker].log_path)
        gone = c.wait_exited(quitter)
        assert (gone.state, gone.exit_code, gone.reason) == (pb.CONTAINER_EXITED, 7, "Error")
        assert c.exec_sync(ticker, "echo", "still here").stdout == b"still here\n"
        assert _grows(logs / "ticker.log")
        listed = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert sorted(x.id for x in listed) == sorted([ticker, quitter])
        # The name is still held: a second pod of the same name is refused.
        with pytest.raises(grpc.RpcError, match="reserved"):
            c.run_pod(pod)
        # Stopping tears the network down now, not before.
        assert set(netns) <= set(os.listdir("/var/run/netns"))
        c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        info = c.pod_status(pod_id, verbose=True)
        assert info.status.state == pb.SANDBOX_NOTREADY
        assert '"netNamespaceClosed":true' in info.info["info"]
    finally:
        c.close()



def test_pods_share_shims_whole(berthd: Berthd, busybox_image: ImageInfo,
                                tmp_path: Path) -> None:
    """With namespace grouping (berthd's default) pods share shims, a pod never split: each
    container's task is served by its sandbox's shim."""
    c = CRI(berthd.address)
    try:
        tasks = berthd.state / "io.containerd.runtime.v2.task" / "k8s.io"
        pods = {}
        for name in ("one", "two"):
            pod = pod_config(name, tmp_path)
            pod_id = c.run_pod(pod)
            pods[pod_id] = [c.run(pod_id, container_config(f"c{i}", busybox_image.ref,
                                                           "exec sleep 1000"), pod)
                            for i in range(2)]

        def address(task_id: str) -> str:
            return (tasks / task_id / "address").read_text()

        for pod_id, containers in pods.items():
            assert {address(cid) for cid in containers} == {address(pod_id)}
        assert len({address(pod_id) for pod_id in pods}) == 1  # both pods in one shim
    finally:
        c.remove_everything()
        c.close()


def test_a_record_naming_another_id_is_not_recovered(berthd: Berthd, tmp_path: Path) -> None:
    """A container record written through the containers API in ``k8s.io`` (any client of
    berthd's socket can) whose CRI metadata names an id with '..' in it: after a restart it is
    not taken for a pod (it is logged and left alone), and nothing outside the CRI's directories
    is touched when the CRI cleans up."""
    from berth.api.services.containers.v1 import containers_pb2, containers_pb2_grpc

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    record_id = "a" * 64
    doc = {"Version": "v1", "Metadata": {"ID": f"../../../../../../../../..{victim}",
                                         "Name": "evil", "Config": {}, "NetNSPath": ""}}
    channel = grpc.insecure_channel(f"unix:{berthd.address}")
    try:
        stub = containers_pb2_grpc.ContainersStub(channel)
        md = (("containerd-namespace", "k8s.io"),)
        container = containers_pb2.Container(
            id=record_id, image="", runtime=containers_pb2.Container.Runtime(
                name="io.containerd.runc.v2"))
        container.spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
        container.spec.value = b"{}"
        container.extensions["io.cri-containerd.sandbox.metadata"].type_url = \
            "github.com/containerd/cri/pkg/store/sandbox/Metadata"
        container.extensions["io.cri-containerd.sandbox.metadata"].value = \
            json.dumps(doc).encode()
        stub.Create(containers_pb2.CreateContainerRequest(container=container), metadata=md,
                    timeout=30)
        berthd.restart()
        client = CRI(berthd.address)
        try:
            assert client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                 timeout=30).items == []
        finally:
            client.close()
        stub = containers_pb2_grpc.ContainersStub(channel)
        stub.Delete(containers_pb2.DeleteContainerRequest(id=record_id), metadata=md, timeout=30)
    finally:
        channel.close()
    assert (victim / "keep").read_text() == "mine"
    assert "not the record's own id" in berthd.log_path.read_text()
