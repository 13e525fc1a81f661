"""The CRI plugin starts with berthd only when ``k8s.io`` holds containers (pods to recover);
otherwise with the first CRI call, so an idle daemon with no kubelet does not carry it. Either
way a client sees the same service."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import grpc
import pytest
from conftest import require_root
from daemon import Berthd

from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.api.cri.runtime.v1 import api_pb2_grpc


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()

LISTENING = "cri streaming server listening"
DEFERRED = "the CRI starts with its first call"


def _version(address: str) -> pb.VersionResponse:
    with grpc.insecure_channel(f"unix:{address}") as channel:
        return api_pb2_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=30)


def test_an_idle_daemon_starts_the_cri_with_its_first_call(tmp_path: Path) -> None:
    with Berthd(tmp_path) as d:
        assert DEFERRED in d.log()
        assert LISTENING not in d.log()
        assert _version(d.address).runtime_api_version == "v1"
        assert d.log().count(LISTENING) == 1
        with grpc.insecure_channel(f"unix:{d.address}") as channel:
            images = api_pb2_grpc.ImageServiceStub(channel).ListImages(pb.ListImagesRequest())
        assert list(images.images) == []
        assert d.log().count(LISTENING) == 1  # built once, for both services


def test_recorded_containers_start_the_cri_with_the_daemon(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with Berthd(tmp_path / "d") as d:
        # Any container in k8s.io: the CRI must be there at start to recover what is its own.
        subprocess.run(["ctr", "--address", d.address, "-n", "k8s.io", "containers", "create",
                        "--rootfs", str(rootfs), "x"], capture_output=True, check=True)
        d.restart()
        log = d.log()
        assert log.count(DEFERRED) == 1  # the first start only
        assert log.count(LISTENING) == 1  # the second, with no CRI call
        assert _version(d.address).runtime_api_version == "v1"


def test_a_cri_that_cannot_start_answers_unimplemented(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        config = tmp_path / "config.toml"
        config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                          '  stream_server_address = "127.0.0.1"\n'
                          f'  stream_server_port = "{taken.getsockname()[1]}"\n')
        with Berthd(tmp_path / "d", config=str(config)) as d:
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as err:
                    _version(d.address)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            log = d.log()
            assert log.count("failed to start; they stay unimplemented") == 1
            assert "cannot listen on 127.0.0.1" in log
    finally:
        taken.close()
