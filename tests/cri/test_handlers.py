"""A runtime handler that is not Berth's shim: the Go ``containerd-shim-runc-v2`` from Debian's
containerd, configured under ``[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME]``.
Its tasks take FIFOs, so berthd copies their output into the CRI log itself, as containerd does;
everything else (exec, stop, status) works as with Berth's shim. An unknown handler is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Ctr, require_root
from cri_fixtures import CRI, NS, berthd_config, container_config, delete_link, pod_config
from daemon import Berthd
from images import ImageInfo

from berth.api.cri.runtime.v1 import api_pb2 as pb

BRIDGE, SUBNET = "berthcri4", "10.203.4.0/24"
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
HANDLER = f'''
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gorunc]
    runtime_type = "io.containerd.runc.v2"
    runtime_path = "{GO_SHIM}"
'''


@pytest.fixture(scope="module")
def cri(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
        busybox_image: ImageInfo) -> Iterator[CRI]:
    require_root()
    base = tmp_path_factory.mktemp("cri-handlers")
    config = berthd_config(base, pause_image, BRIDGE, SUBNET, HANDLER)
    try:
        with Berthd(base / "berthd", config=str(config)) as daemon:
            client = CRI(daemon.address)
            client.pull(busybox_image.ref)
            try:
                yield client
            finally:
                client.remove_everything()
                client.close()
    finally:
        delete_link(BRIDGE)


def test_go_shim_handler(cri: CRI, busybox_image: ImageInfo, tmp_path: Path) -> None:
    pod = pod_config("gopod", tmp_path)
    pod_id = cri.run_pod(pod, handler="gorunc")
    try:
        status = cri.pod_status(pod_id, verbose=True)
        assert status.status.runtime_handler == "gorunc"
        cid = cri.run(pod_id, container_config(
            "out", busybox_image.ref, "echo one; echo two >&2; printf three; exec sleep 1000"),
            pod)
        assert cri.exec_sync(cid, "echo", "hi").stdout == b"hi\n"
        # The Go shim runs the tasks (berthd's own shim is not involved).
        assert cid in Ctr(cri.address, NS)("tasks", "ls").stdout
        go = [c for c in _commands() if c[0] == GO_SHIM.encode()
              and any(cri.address.encode() in arg for arg in c)]
        assert go, "no containerd-shim-runc-v2 serves berthd's pod"
        cri.stop(cid, timeout=5)
        stopped = cri.container_status(cid).status
        assert (stopped.state, stopped.exit_code) == (pb.CONTAINER_EXITED, 143)
        records = [line.split(" ", 3)[1:] for line in
                   (tmp_path / "out.log").read_text().splitlines()]
        assert [r for r in records if r[0] == "stdout"] == [["stdout", "F", "one"],
                                                             ["stdout", "P", "three"]]
        assert [r for r in records if r[0] == "stderr"] == [["stderr", "F", "two"]]
        stamp = (tmp_path / "out.log").read_text().split(" ", 1)[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)", stamp)
    finally:
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                     timeout=60)


def _commands() -> list[list[bytes]]:
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = path.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv and argv[0]:
            out.append(argv)
    return out


def test_unknown_handler(cri: CRI, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(pod_config("nohandler", tmp_path), handler="nosuch")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no runtime for \"nosuch\" is configured" in (err.value.details() or "") or \
        "'nosuch'" in (err.value.details() or "")
    assert cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
