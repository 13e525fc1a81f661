"""`shim_group = "namespace"`: one Berth shim serves every container of a namespace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from processes import pids_with_argument_pair

pytestmark = pytest.mark.needs_root


def _shims(address: str) -> list[int]:
    """Processes serving berthd at ``address`` as shims (by their -address argument)."""
    return pids_with_argument_pair("-address", address)


@pytest.fixture
def grouped(tmp_path: Path) -> Iterator[Berthd]:
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.runtime.v2.task"]\n'
                      '  shim_group = "namespace"\n')
    with Berthd(tmp_path / "berthd", config=str(config)) as daemon:
        yield daemon


def test_one_shim_serves_the_namespace(grouped: Berthd, busybox_image: ImageInfo) -> None:
    c = Ctr(grouped.address, "grouped")
    c("images", "pull", "--plain-http", busybox_image.ref)
    ids = ["g1", "g2", "g3"]
    try:
        for cid in ids:
            c("run", "-d", busybox_image.ref, cid, "sleep", "300")
        assert len(_shims(grouped.address)) == 1
        assert c("tasks", "exec", "--exec-id", "e1", "g2", "echo", "in-g2").stdout == "in-g2\n"
        c("tasks", "kill", "-s", "KILL", "g1")
        deadline = time.monotonic() + 10
        while "STOPPED" not in c("tasks", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        c("tasks", "rm", "g1")
        listed = c("tasks", "ls").stdout
        assert "g2" in listed and "g3" in listed and "g1" not in listed
        assert len(_shims(grouped.address)) == 1  # the others' shim lives on
        assert c("run", "--rm", busybox_image.ref, "g4", "echo", "hi").stdout == "hi\n"
    finally:
        for cid in ids:
            c("tasks", "kill", "-s", "KILL", cid, check=False)
        time.sleep(0.5)
        for cid in ids:
            c("tasks", "rm", "-f", cid, check=False)
            c("containers", "rm", cid, check=False)
    deadline = time.monotonic() + 10
    while _shims(grouped.address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shims(grouped.address) == []  # the last task gone, the shim exits
