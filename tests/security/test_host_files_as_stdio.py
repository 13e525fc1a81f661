"""No host file becomes a container's fd: its stdio are pipes the shim made and copies from.

The attack: with ``file://`` stdio (what ``berth run -d`` and ``ctr run --log-uri file://``
use), or any stdout path that is not a FIFO, the shim handed the host file's own descriptor to
the container. The container could ``chmod 4755 /proc/self/fd/1`` and leave a setuid-root file
on the host, and runc chowned the file to the container's user. With FIFOs the container could
do the same to the client's FIFO. containerd gives runc pipes and copies; so does Berth now.

Run through the real ``ctr`` and ``berth`` against a real berthd on Berth's shim, real runc and
the busybox image.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from test_cli_run import Env

pytestmark = pytest.mark.needs_root

# What the container does to its own stdio: show what they are, then try to make them
# setuid-root and hand them to its user.
PROBE = ("for fd in 0 1 2; do echo fd$fd=$(readlink /proc/self/fd/$fd); done; "
         "chmod 4755 /proc/self/fd/1 /proc/self/fd/2; chown 1000:1000 /proc/self/fd/1; "
         "echo probed")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, busybox_image: ImageInfo
           ) -> Iterator[Berthd]:
    with Berthd(tmp_path_factory.mktemp("stdio") / "berthd") as d:
        Ctr(d.address)("images", "pull", "--plain-http", busybox_image.ref)
        yield d


def fd_targets(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if line.startswith("fd"))


def assert_private(path: Path) -> None:
    st = path.stat()
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path} became set-id"
    assert stat.S_IMODE(st.st_mode) & 0o7777 in (0o600, 0o640), oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (0, 0), f"{path} was handed to {st.st_uid}:{st.st_gid}"


def test_file_log_uri_is_not_the_containers_fd(daemon: Berthd, busybox_image: ImageInfo,
                                               tmp_path: Path) -> None:
    c = Ctr(daemon.address)
    log = tmp_path / "ctr.log"
    cid = f"stdio-{uuid.uuid4().hex[:10]}"
    try:
        c("run", "--log-uri", f"file://{log}", busybox_image.ref, cid, "sh", "-c", PROBE)
    finally:
        c("tasks", "rm", "-f", cid, check=False)
        c("containers", "rm", cid, check=False)
    out = log.read_text()
    assert "probed" in out, out
    targets = fd_targets(out)
    assert targets["fd1"].startswith("pipe:") and targets["fd2"].startswith("pipe:"), targets
    assert_private(log)


def test_fifo_stdio_is_not_the_containers_fd(daemon: Berthd, busybox_image: ImageInfo) -> None:
    """``ctr run`` hands the shim FIFOs it made: the container sees pipes, not the FIFOs."""
    c = Ctr(daemon.address)
    cid = f"stdio-{uuid.uuid4().hex[:10]}"
    r = c("run", "--rm", busybox_image.ref, cid, "sh", "-c", PROBE, input="")
    targets = fd_targets(r.stdout)
    assert all(t.startswith("pipe:") for t in targets.values()), targets
    assert "probed" in r.stdout


def test_berth_run_detached_log_is_not_the_containers_fd(daemon: Berthd,
                                                         busybox_image: ImageInfo,
                                                         tmp_path: Path) -> None:
    """``berth run -d`` logs through ``file://``; the container runs as a user of its own."""
    env = Env(daemon, busybox_image.ref, tmp_path / "logs", "berth")
    name = f"stdio-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--name", name, "-u", "1000:1000", env.ref, "sh", "-c", PROBE)
        deadline = time.monotonic() + 30
        while "probed" not in (out := env("logs", name).stdout) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "probed" in out, out
        targets = fd_targets(out)
        assert targets["fd1"].startswith("pipe:"), targets
        logs = [p for p in (tmp_path / "logs").rglob("*.log")]
        assert logs, "no log file written"
        for path in logs:
            assert_private(path)
    finally:
        env("rm", "-f", name, ok=False)


def test_regular_file_as_stdout_path_is_copied(daemon: Berthd, busybox_image: ImageInfo,
                                               tmp_path: Path) -> None:
    """A stdout path that is a plain file (any API client may name one) is copied to, not
    handed over: driven through the shim's own API by ``ctr`` is not possible (ctr makes
    FIFOs), so through Berth's client as any API user could."""
    from berth.client import Client
    from berth.runtime.runtime import IO, CreateOpts

    target = tmp_path / "plain-out"
    target.write_text("")
    os.chmod(target, 0o600)
    c = Ctr(daemon.address)
    cid = f"stdio-{uuid.uuid4().hex[:10]}"
    c("containers", "create", busybox_image.ref, cid, "--", "sh", "-c", PROBE)
    client = Client(daemon.address, namespace="default")
    try:
        task = client.tasks.create(cid, CreateOpts(io=IO(stdout=str(target), stderr=str(target))))
        waiter = task.waiter()
        task.start()
        waiter.result(timeout=30)
    finally:
        c("tasks", "rm", "-f", cid, check=False)
        c("containers", "rm", cid, check=False)
        client.close()
    out = target.read_text()
    assert "probed" in out, out
    assert fd_targets(out)["fd1"].startswith("pipe:")
    assert_private(target)


def test_a_log_fifo_nobody_reads_is_refused_without_stalling_the_shim(
        daemon: Berthd, busybox_image: ImageInfo, tmp_path: Path) -> None:
    """``file://`` naming a FIFO with no reader: opening it for writing would wait for a
    reader, and a group shim serves other containers from the same loop. It is refused at
    once, and the namespace's shim still runs containers."""
    c = Ctr(daemon.address, timeout=30)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo, 0o600)
    cid = f"stdio-{uuid.uuid4().hex[:10]}"
    other = f"stdio-{uuid.uuid4().hex[:10]}"
    try:
        c("run", "-d", busybox_image.ref, other, "sleep", "60")  # a task in the same shim
        r = c("run", "--log-uri", f"file://{fifo}", busybox_image.ref, cid, "true", check=False)
        assert r.returncode != 0 and "FIFO that nobody reads" in r.stderr, r.stderr
        r = c("run", "--rm", busybox_image.ref, f"{cid}-after", "echo", "still-serving")
        assert "still-serving" in r.stdout
        assert c("tasks", "ls").stdout.count(other) == 1
    finally:
        for name in (cid, other):
            c("tasks", "kill", "-s", "KILL", name, check=False)
            c("tasks", "rm", "-f", name, check=False)
            c("containers", "rm", name, check=False)
