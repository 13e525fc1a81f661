"""A runtime handler that is not Berth's shim: the Go ``containerd-shim-runc-v2`` from Debian's
containerd, configured under ``[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME]``.
Its tasks take FIFOs, so berthd copies their output into the CRI log itself, as containerd does;
everything else (exec, stop, status) works as with Berth's shim. An unknown handler is refused.
"""

from __future__ import annotations

import re
import time
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
def daemon(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
           busybox_image: ImageInfo) -> Iterator[Berthd]:
    require_root()
    base = tmp_path_factory.mktemp("cri-handlers")
    config = berthd_config(base, pause_image, BRIDGE, SUBNET, HANDLER)
    try:
        with Berthd(base / "berthd", config=str(config)) as berthd:
            client = CRI(berthd.address)
            client.pull(busybox_image.ref)
            client.close()
            try:
                yield berthd
            finally:
                if berthd.proc is None:
                    berthd.start()
                client = CRI(berthd.address)
                client.remove_everything()
                client.close()
    finally:
        delete_link(BRIDGE)


@pytest.fixture
def cri(daemon: Berthd) -> Iterator[CRI]:
    client = CRI(daemon.address)
    try:
        yield client
    finally:
        client.close()


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


def test_go_shim_output_after_a_restart(daemon: Berthd, busybox_image: ImageInfo,
                                        tmp_path: Path) -> None:
    """berthd copies a Go-shim container's FIFOs into its log again after a restart (nobody
    reading them, the container would block once they filled up)."""
    client = CRI(daemon.address)
    pod = pod_config("gorestart", tmp_path)
    pod_id = client.run_pod(pod, handler="gorunc")
    client.run(pod_id, container_config(
        "chatty", busybox_image.ref,
        "while true; do head -c 20000 /dev/zero | tr '\\0' x; echo; sleep 0.02; done"), pod)
    client.close()
    log = tmp_path / "chatty.log"

    def lines() -> int:
        return len(log.read_bytes().splitlines()) if log.exists() else 0

    deadline = time.monotonic() + 10
    while lines() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.restart()
    before = lines()
    deadline = time.monotonic() + 10
    while lines() < before + 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines() >= before + 50, (before, lines())  # 20 KB lines: far more than a FIFO holds
    client = CRI(daemon.address)
    try:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                        timeout=60)
    finally:
        client.close()
