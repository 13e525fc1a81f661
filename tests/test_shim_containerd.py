"""The real containerd 1.6 runs containers on Berth's shim: ``ctr run --runtime
io.containerd.berth.v2``.

containerd looks the shim up as ``containerd-shim-berth-v2`` on its PATH, so the daemon of this
module starts with the virtualenv's bin directory first on PATH. Images come from the loopback
registry. Clean-up, however a test ends: the daemon's own stop (it kills the shims it started,
found by their ``-address``), then ``runc delete --force`` of every container id used here in
Berth's state root, and the shims' sockets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr, require_root
from images import ImageInfo
from processes import argument_after, pids_with_argument_pair, read_argv
from reference_containerd import ReferenceContainerd, mounts_under

from berth.shimgroups import socket_address

pytestmark = pytest.mark.needs_root

RUNTIME = "io.containerd.berth.v2"
BERTH_RUNC_ROOT = "/run/berth/runc/default"
RUNC = "/usr/sbin/runc"

_used_ids: list[str] = []


def container_id(name: str) -> str:
    cid = f"{name}-{os.getpid()}"
    _used_ids.append(cid)
    return cid


@pytest.fixture(scope="module")
def daemon() -> Iterator[ReferenceContainerd]:
    """A private containerd that finds ``containerd-shim-berth-v2`` on its PATH."""
    require_root()
    venv_bin = str(Path(sys.executable).parent)
    assert os.access(os.path.join(venv_bin, "containerd-shim-berth-v2"), os.X_OK)
    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{venv_bin}:{saved}"
    try:
        daemon = ReferenceContainerd()
        daemon.start()  # the daemon keeps the environment it was started with
    finally:
        os.environ["PATH"] = saved
    try:
        yield daemon
    finally:
        address = daemon.address
        daemon.stop()
        import subprocess

        for cid in _used_ids:
            subprocess.run([RUNC, "--root", BERTH_RUNC_ROOT, "delete", "--force", cid],
                           capture_output=True, check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_address(address, "default", cid).removeprefix("unix://"))


@pytest.fixture(scope="module")
def c(daemon: ReferenceContainerd, busybox_image: ImageInfo) -> Ctr:
    ctr = Ctr(daemon.address)
    ctr("images", "pull", "--plain-http", busybox_image.ref)
    return ctr


def berth_shims(daemon: ReferenceContainerd) -> list[int]:
    """Berth shim processes serving this daemon (the long-running ones, not ``start``)."""
    return [pid for pid in pids_with_argument_pair("-address", daemon.address)
            if "berth.shim.main" in " ".join(read_argv(pid))]


def shim_of(daemon: ReferenceContainerd, cid: str) -> int:
    for pid in pids_with_argument_pair("-address", daemon.address):
        if argument_after(read_argv(pid), "-id") == cid:
            return pid
    raise AssertionError(f"no shim for {cid}")


def wait_for_status(c: Ctr, cid: str, status: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in c("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid and fields[-1] == status:
                return
        time.sleep(0.1)
    raise AssertionError(f"task {cid} not {status}: {c('tasks', 'ls').stdout}")


def test_run_rm_echo(c: Ctr, daemon: ReferenceContainerd, busybox_image: ImageInfo) -> None:
    """``ctr run --rm`` on our shim prints the container's output and leaves nothing."""
    cid = container_id("berth-echo")
    out = c("run", "--rm", "--runtime", RUNTIME, busybox_image.ref, cid, "echo", "hi")
    assert out.stdout == "hi\n"
    assert cid not in c("containers", "ls", "-q").stdout.split()
    assert not os.path.exists(f"{BERTH_RUNC_ROOT}/{cid}")
    deadline = time.monotonic() + 10
    while berth_shims(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert berth_shims(daemon) == []


def test_events_reach_ctr(c: Ctr, busybox_image: ImageInfo) -> None:
    """The shim's events go through containerd to ``ctr events``, which decodes them."""
    import subprocess

    from processes import loopback_env

    cid = container_id("berth-events")
    watcher = subprocess.Popen(c.command("events"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=loopback_env())
    try:
        time.sleep(0.5)
        c("run", "--rm", "--runtime", RUNTIME, busybox_image.ref, cid, "sh", "-c", "exit 7",
          check=False)
        time.sleep(0.5)
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=10)
    # "2026-11-28 20:24:41.1 +0000 UTC default /tasks/exit {...}"
    lines = [line for line in out.splitlines() if cid in line]
    topics = [line.split()[5] for line in lines]
    for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"):
        assert topic in topics, out + err
    exit_line = next(line for line in lines if "/tasks/exit" in line)
    assert '"exit_status":7' in exit_line.replace(" ", ""), exit_line


def test_run_exit_status(c: Ctr, busybox_image: ImageInfo) -> None:
    cid = container_id("berth-exit")
    done = c("run", "--rm", "--runtime", RUNTIME, busybox_image.ref, cid, "sh", "-c", "exit 3",
             check=False)
    assert done.returncode == 3, done.stderr


@pytest.mark.parametrize("runtime", [RUNTIME, "io.containerd.runc.v2"])
def test_stdin_through_ctr(c: Ctr, busybox_image: ImageInfo, runtime: str) -> None:
    """ctr copies its stdin into the task's stdin FIFO and calls CloseIO at EOF; the task
    then sees EOF. (ctr only calls CloseIO if its stdin ends after the task exists: an
    immediate EOF hangs ``ctr run`` on containerd's own shim as well, so input comes late.)"""
    import subprocess

    from processes import loopback_env

    cid = container_id(f"stdin-{runtime.split('.')[-2]}")
    proc = subprocess.Popen(
        c.command("run", "--rm", "--runtime", runtime, busybox_image.ref, cid, "sh", "-c",
                  "cat; echo end"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=loopback_env())
    try:
        time.sleep(1.0)
        assert proc.stdin is not None
        proc.stdin.write(b"line one\nline two\n")
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() must not flush it
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b"line one\nline two\nend\n"


def on_a_terminal(c: Ctr, *args: str) -> str:
    """Run ctr with a 33x77 pty of its own (script(1)); its output."""
    import shlex
    import subprocess

    from processes import loopback_env

    command = shlex.join(c.command(*args))
    done = subprocess.run(["script", "-qec", f"stty rows 33 cols 77; {command}", "/dev/null"],
                          capture_output=True, text=True, timeout=60, env=loopback_env(),
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_terminal_through_ctr(c: Ctr, busybox_image: ImageInfo) -> None:
    """``ctr run -t`` and ``ctr tasks exec -t``: the process gets a terminal of ctr's size
    (ResizePty) and its output comes back through the console."""
    cid = container_id("berth-tty")
    # ctr sizes the console once the task runs: the process waits a little
    out = on_a_terminal(c, "run", "--rm", "-t", "--runtime", RUNTIME, busybox_image.ref, cid,
                        "sh", "-c", "sleep 0.5; stty size; tty; exit 0")
    assert "33 77" in out and "/dev/pts/" in out
    cid = container_id("berth-exec-tty")
    c("run", "-d", "--runtime", RUNTIME, busybox_image.ref, cid, "sleep", "1000")
    try:
        wait_for_status(c, cid, "RUNNING")
        out = on_a_terminal(c, "tasks", "exec", "-t", "--exec-id", "t1", cid, "sh", "-c",
                            "sleep 0.5; stty size; tty")
        assert "33 77" in out and "/dev/pts/" in out
    finally:
        c("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        with contextlib.suppress(AssertionError):
            wait_for_status(c, cid, "STOPPED", timeout=5)
        c("tasks", "rm", "-f", cid, check=False)
        c("containers", "rm", cid, check=False)


def test_detached_exec_kill_rm(c: Ctr, daemon: ReferenceContainerd,
                               busybox_image: ImageInfo) -> None:
    """``run -d``, ``tasks exec``, ps, pause/resume, metrics, ``tasks kill`` (SIGTERM),
    ``tasks rm``: the whole life of a detached task on our shim."""
    cid = container_id("berth-detached")
    script = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
    c("run", "-d", "--runtime", RUNTIME, busybox_image.ref, cid, "sh", "-c", script)
    try:
        wait_for_status(c, cid, "RUNNING")
        out = c("tasks", "exec", "--exec-id", "e1", cid, "echo", "from-exec")
        assert out.stdout == "from-exec\n"
        failed = c("tasks", "exec", "--exec-id", "e2", cid, "sh", "-c", "exit 4", check=False)
        assert failed.returncode == 4
        ps = c("tasks", "ps", cid).stdout
        assert len(ps.splitlines()) >= 2
        c("tasks", "pause", cid)
        wait_for_status(c, cid, "PAUSED")
        c("tasks", "resume", cid)
        wait_for_status(c, cid, "RUNNING")
        metrics = c("tasks", "metrics", cid).stdout
        assert "memory.usage_in_bytes" in metrics
        shim = shim_of(daemon, cid)
        c("tasks", "kill", cid)
        wait_for_status(c, cid, "STOPPED")
        c("tasks", "rm", cid)
        assert cid not in c("tasks", "ls", "-q").stdout.split()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{shim}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{shim}"), "the shim did not exit"
    finally:
        c("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        c("tasks", "rm", "-f", cid, check=False)
        c("containers", "rm", cid, check=False)
    assert not os.path.exists(f"{BERTH_RUNC_ROOT}/{cid}")
    assert not [m for m in mounts_under(daemon.state) if cid in m]


def test_memory_beside_the_go_shim(c: Ctr, daemon: ReferenceContainerd,
                                   busybox_image: ImageInfo) -> None:
    """One ``sleep`` container on each runtime; the shims' memory, printed side by side."""
    figures = {}
    for runtime, name in ((RUNTIME, "berth"), ("io.containerd.runc.v2", "go")):
        cid = container_id(f"mem-{name}")
        c("run", "-d", "--runtime", runtime, busybox_image.ref, cid, "sleep", "1000")
        try:
            wait_for_status(c, cid, "RUNNING")
            c("tasks", "metrics", cid)
            time.sleep(0.5)
            figures[name] = _memory_kib(shim_of(daemon, cid))
        finally:
            c("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            with contextlib.suppress(AssertionError):
                wait_for_status(c, cid, "STOPPED", timeout=5)
            c("tasks", "rm", "-f", cid, check=False)
            c("containers", "rm", cid, check=False)
    print("\nshim memory (KiB) with one running container:")
    for name, usage in figures.items():
        print(f"  {name:5} RSS {usage['Rss']:6}  PSS {usage['Pss']:6}  USS {usage['Uss']:6}")
    assert figures["berth"]["Rss"] < 28 * 1024


def _memory_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(value.split()[0])
    out["Uss"] = out.pop("Private_Clean") + out.pop("Private_Dirty")
    return out


def test_no_berth_shim_left(daemon: ReferenceContainerd, c: Ctr) -> None:
    """After the tests above, every Berth shim of this daemon has exited."""
    deadline = time.monotonic() + 10
    while berth_shims(daemon) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = berth_shims(daemon)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
