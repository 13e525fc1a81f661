"""berthd's Prometheus endpoint: daemon series always, container series for running tasks."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo

pytestmark = pytest.mark.needs_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def metrics_berthd(tmp_path: Path) -> Iterator[tuple[Berthd, int]]:
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 2\n"
        '[plugins."io.containerd.runtime.v2.task".shims]\n'
        '  "io.containerd.runc.v2" = "containerd-shim-runc-v2"\n'
        f'[metrics]\n  address = "127.0.0.1:{port}"\n')
    with Berthd(tmp_path / "berthd", config=str(config)) as daemon:
        yield daemon, port


def _scrape(port: int, path: str = "/v1/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        body: bytes = resp.read()
        return body.decode()


def test_metrics_for_daemon_and_containers(metrics_berthd: tuple[Berthd, int],
                                           busybox_image: ImageInfo) -> None:
    daemon, port = metrics_berthd
    c = Ctr(daemon.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    text = _scrape(port)
    assert "process_resident_memory_bytes" in text
    assert 'grpc_server_handled_total{grpc_code="OK",' in text
    assert "container_memory_usage_bytes{" not in text
    c("run", "-d", busybox_image.ref, "metered", "sleep", "300")
    try:
        text = _scrape(port)
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("container_memory_usage_bytes{"))
        assert 'container_id="metered"' in line and 'namespace="default"' in line
        assert float(line.rsplit(" ", 1)[1]) > 0
        pids = next(ln for ln in text.splitlines() if ln.startswith("container_pids_current{"))
        assert float(pids.rsplit(" ", 1)[1]) >= 1
        assert "container_cpu_total_nanoseconds{" in text
    finally:
        c("tasks", "kill", "-s", "KILL", "metered", check=False)
        c("tasks", "rm", "-f", "metered", check=False)
        c("containers", "rm", "metered", check=False)
    with pytest.raises(urllib.error.HTTPError):
        _scrape(port, "/nope")
