"""Shared by the CRI tests: a runtime.v1 client, the CNI configurations the daemons use, and a
berthd and a reference containerd (its own CRI plugin) set up alike, each on a bridge network
of its own so the two never share an address range, with everything each test made removed at
the end (pods stopped and removed, so no netns, shim, mount or CNI allocation is left).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from daemon import Berthd
from reference_containerd import ReferenceContainerd

from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.api.cri.runtime.v1 import api_pb2_grpc

NS = "k8s.io"
CNI_BIN = "/usr/lib/cni"


class CRI:
    """A runtime.v1 client on one daemon's socket."""

    def __init__(self, address: str, name: str = "", pid: int = 0) -> None:
        self.address = address
        self.name = name
        self.pid = pid  # the daemon's, when known
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    # images
    def status(self, ref: str) -> pb.ImageStatusResponse:
        return self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)),
                                       timeout=30)

    def remove(self, ref: str) -> None:
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)

    def list(self) -> list[pb.Image]:
        return list(self.images.ListImages(pb.ListImagesRequest(), timeout=30).images)

    def pull(self, ref: str) -> str:
        return str(self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)),
                                         timeout=120).image_ref)

    # pods and containers
    def run_pod(self, config: pb.PodSandboxConfig, handler: str = "") -> str:
        return str(self.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
            timeout=60).pod_sandbox_id)

    def pod_status(self, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        return self.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose), timeout=30)

    def create(self, pod_id: str, config: pb.ContainerConfig,
               pod_config: pb.PodSandboxConfig) -> str:
        return str(self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config),
            timeout=60).container_id)

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id),
                                    timeout=60)

    def run(self, pod_id: str, config: pb.ContainerConfig,
            pod_config: pb.PodSandboxConfig) -> str:
        cid = self.create(pod_id, config, pod_config)
        self.start(cid)
        return cid

    def container_status(self, container_id: str, verbose: bool = False
                         ) -> pb.ContainerStatusResponse:
        return self.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id, verbose=verbose), timeout=30)

    def exec_sync(self, container_id: str, *cmd: str, timeout: int = 10
                  ) -> pb.ExecSyncResponse:
        return self.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                        timeout=timeout), timeout=timeout + 30)

    def stop(self, container_id: str, timeout: int = 0) -> None:
        self.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id,
                                                           timeout=timeout), timeout=60)

    def wait_exited(self, container_id: str, within: float = 20) -> pb.ContainerStatus:
        deadline = time.monotonic() + within
        while True:
            status = self.container_status(container_id).status
            if status.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def remove_everything(self) -> None:
        for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            with contextlib.suppress(grpc.RpcError):
                self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                            timeout=60)
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                          timeout=60)

    def close(self) -> None:
        self.channel.close()


def bridge_conflist(name: str, bridge: str, subnet: str, data_dir: Path) -> dict[str, Any]:
    """A bridge + host-local + portmap network, as a kubelet node's CNI config would have."""
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                  "dataDir": str(data_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def pod_config(name: str, log_dir: Path, *, uid: str = "", namespace: str = "default",
               **kwargs: Any) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid or f"uid-{name}",
                                       namespace=namespace),
        hostname=name, log_directory=str(log_dir), **kwargs)


def container_config(name: str, image: str, *args: str, **kwargs: Any) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                              image=pb.ImageSpec(image=image), command=["sh", "-c"] if args
                              else [], args=list(args), log_path=f"{name}.log", **kwargs)


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def berthd_config(base: Path, pause: str, bridge: str, subnet: str, extra: str = "") -> Path:
    """A berthd configuration file for the CRI: ``pause`` as the sandbox image, a CNI
    configuration directory holding a bridge network, containerd's restrict_oom_score_adj
    (root here lacks CAP_SYS_RESOURCE)."""
    cni = base / "berthd-net.d"
    cni.mkdir()
    (cni / "10-bridge.conflist").write_text(json.dumps(bridge_conflist(
        "berth-cri", bridge, subnet, base / "berthd-ipam")))
    config = base / "berthd.toml"
    config.write_text(f'''version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
{extra}
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
    bin_dir = "{CNI_BIN}"
''')
    return config


@contextlib.contextmanager
def cri_daemons(base: Path, pause: str, *, net: int = 0, berthd_extra: str = "",
                containerd_extra: str = "", log_level: str = "debug"
                ) -> Iterator[dict[str, CRI]]:
    """{"berthd": ..., "containerd": ...} with ``pause`` as the sandbox image, each with a
    bridge network of its own: berthcri<net> on 10.203.<net>.0/24 and berthref<net> on
    10.204.<net>.0/24 (each test module takes its own ``net``, so modules never share a
    bridge)."""
    ours, theirs = f"berthcri{net}", f"berthref{net}"
    config = berthd_config(base, pause, ours, f"10.203.{net}.0/24", berthd_extra)
    clients: dict[str, CRI] = {}
    try:
        with Berthd(base / "berthd", config=str(config), log_level=log_level) as berthd, \
                ReferenceContainerd(cri=True, cri_config=f'  sandbox_image = "{pause}"\n'
                                    + containerd_extra) as containerd:
            (containerd.cni_conf_dir / "10-bridge.conflist").write_text(json.dumps(
                bridge_conflist("berth-ref", theirs, f"10.204.{net}.0/24",
                                base / "containerd-ipam")))
            assert berthd.proc is not None
            clients = {"berthd": CRI(berthd.address, "berthd", berthd.proc.pid),
                       "containerd": CRI(containerd.address, "containerd", containerd.pid)}
            _wait_network_ready(clients["containerd"])
            try:
                yield clients
            finally:
                for c in clients.values():
                    c.remove_everything()
    finally:
        for c in clients.values():
            c.close()
        delete_link(ours)
        delete_link(theirs)


def _wait_network_ready(c: CRI, within: float = 10) -> None:
    """containerd notices a CNI config written after its start a moment later."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        conditions = c.runtime.Status(pb.StatusRequest(), timeout=10).status.conditions
        if all(cond.status for cond in conditions):
            return
        time.sleep(0.1)
    raise AssertionError(f"{c.name}: the network did not become ready")
