"""`berth run`, `ps`, `exec`, `logs`, `stop`, `kill`, `rm`, `start`, `events` and `stats`: the
installed `berth` as a child process against a real berthd, real runc and the busybox image
from the loopback registry.

Every test runs twice: with Debian's Go `containerd-shim-runc-v2` as io.containerd.runc.v2
(configured in berthd), and with Berth's own shim (berthd's default). The Berth runs are real
information about that shim: they fail where it misbehaves. They are skipped when `berth/shim/`
does not exist.

Logs go to a private directory (`BERTH_LOG_DIR`). Each daemon's containers are all removed
(`rm -f`) when its tests end, so no shim or container outlives them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import Berthd
from images import ImageInfo
from registry import loopback_env

from berth.client import Client

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"
GO_SHIM = shutil.which("containerd-shim-runc-v2")
GO_SHIM_CONFIG = (
    "version = 2\n"
    '[plugins."io.containerd.runtime.v2.task".shims]\n'
    '  "io.containerd.runc.v2" = "containerd-shim-runc-v2"\n'
)


@dataclass
class Env:
    """A berthd with busybox pulled, and `berth` bound to it."""

    daemon: Berthd
    ref: str
    log_dir: Path
    shim: str

    def env(self) -> dict[str, str]:
        return loopback_env({"BERTH_LOG_DIR": str(self.log_dir), "TERM": "dumb"})

    def argv(self, *args: str) -> list[str]:
        return [str(BERTH), "--address", self.daemon.address, *args]

    def __call__(self, *args: str, input: str | None = None, ok: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True,
                           timeout=timeout, env=self.env(), check=False)
        if ok:
            assert r.returncode == 0, _show(r)
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """berth in the background, its stdout and stderr piped."""
        return subprocess.Popen(self.argv(*args), env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def client(self) -> Client:
        return Client(self.daemon.address)

    def remove_all(self) -> None:
        ids = self("ps", "-aq", ok=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, ok=False)


def _show(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}"


def one_error_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, _show(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("berth:"), _show(r)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], _show(r)


@pytest.fixture(scope="module", params=["go", "berth"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        busybox_image: ImageInfo) -> Iterator[Env]:
    shim = request.param
    if shim == "go" and GO_SHIM is None:
        pytest.skip("containerd-shim-runc-v2 is not installed")
    base = tmp_path_factory.mktemp(f"run-{shim}")
    config = None
    if shim == "go":
        path = base / "config.toml"
        path.write_text(GO_SHIM_CONFIG)
        config = str(path)
    with Berthd(base / "berthd", config=config) as daemon:
        e = Env(daemon, busybox_image.ref, base / "logs", shim)
        try:
            e("pull", "--plain-http", "-q", busybox_image.ref)
            yield e
        finally:
            e.remove_all()


@pytest.fixture
def name(env: Env) -> Iterator[str]:
    """A fresh container name, removed (with whatever runs in it) after the test."""
    n = f"t-{uuid.uuid4().hex[:10]}"
    yield n
    env("rm", "-f", n, ok=False)


def ps_json(env: Env, *args: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(env("ps", "-a", "--format", "json", *args).stdout)
    return rows


def row(env: Env, cid: str) -> dict[str, object]:
    found = [r for r in ps_json(env) if r["id"] == cid]
    assert len(found) == 1, found
    return found[0]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot_keys(env: Env) -> set[str]:
    client = env.client()
    try:
        return {info.name for info in client.snapshotter("overlayfs").walk()}
    finally:
        client.close()


# -- run in the foreground ---------------------------------------------------------------------


def test_run_rm_prints_output_and_propagates_the_exit_code(env: Env) -> None:
    r = env("run", "--rm", env.ref, "echo", "hello", "world")
    assert r.stdout == "hello world\n"
    r = env("run", "--rm", env.ref, "sh", "-c", "echo out; echo err >&2; exit 3", ok=False)
    assert r.returncode == 3, _show(r)
    assert r.stdout == "out\n" and r.stderr == "err\n"
    # Options after the image belong to the command.
    assert env("run", "--rm", env.ref, "ls", "-d", "/etc").stdout == "/etc\n"
    assert env("ps", "-aq").stdout == ""
    # Nothing left: no active snapshot (only the image's layers), no log file.
    assert all(k.startswith("sha256:") for k in snapshot_keys(env))
    assert not list(env.log_dir.glob("*/*.log"))


def test_run_keeps_a_stopped_container_with_its_output(env: Env, name: str) -> None:
    r = env("run", "--name", name, env.ref, "sh", "-c", "echo kept; exit 2", ok=False)
    assert r.returncode == 2 and r.stdout == "kept\n", _show(r)
    info = row(env, name)
    assert info["state"] == "stopped" and info["exit_code"] == 2
    assert str(info["status"]).startswith("Exited (2)")
    assert env("logs", name).stdout == "kept\n"
    table = env("ps", "-a").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "NAMES"]
    line = next(ln for ln in table if ln.endswith(name))
    assert "Exited (2)" in line and env.ref in line and '"sh -c' in line
    assert name not in env("ps").stdout  # not running
    assert name in env("container", "ls", "-a").stdout
    # The name is taken until the container is removed.
    one_error_line(env("run", "--name", name, env.ref, "true", ok=False), "already in use")


def test_stdin_with_i(env: Env) -> None:
    r = env("run", "--rm", "-i", env.ref, "sh", "-c", "cat; echo done", input="line 1\nline 2\n")
    assert r.stdout == "line 1\nline 2\ndone\n"
    # Without -i the process reads /dev/null.
    assert env("run", "--rm", env.ref, "cat", input="ignored\n").stdout == ""


def test_signals_are_forwarded_in_the_foreground(env: Env) -> None:
    proc = env.popen("run", "--rm", env.ref, "sh", "-c",
                     'trap "echo got TERM; exit 42" TERM; echo ready; '
                     "while true; do sleep 0.1; done")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, (out, err)
    assert out == "got TERM\n"


def _run_in_pty(env: Env, *args: str, input: bytes = b"",
                timeout: float = 30) -> tuple[int, bytes]:
    """Run berth with a terminal as its stdio; its exit status and everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(env.argv(*args), stdin=slave, stdout=slave, stderr=slave,
                            env=env.env(), start_new_session=True)
    os.close(slave)
    out = b""
    try:
        if input:
            time.sleep(1.0)
            os.write(master, input)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every slave side closed
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out


def test_tty(env: Env) -> None:
    code, out = _run_in_pty(env, "run", "--rm", "-t", env.ref, "sh", "-c",
                            "tty; echo TERM=$TERM; exit 5")
    assert code == 5, out
    assert b"/dev/pts/0" in out and b"TERM=xterm" in out
    code, out = _run_in_pty(env, "run", "--rm", "-i", "-t", env.ref, "sh",
                            input=b"echo typed-$((6*7))\nexit 6\n")
    assert code == 6, out
    assert b"typed-42" in out


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_tty_size_follows_the_terminal(env: Env) -> None:
    master, slave = pty.openpty()
    _set_size(master, 123, 45)
    script = ("stty -a | head -1; "
              'while ! stty -a | grep -q "columns 77"; do sleep 0.1; done; echo resized')
    proc = subprocess.Popen(env.argv("run", "--rm", "-t", env.ref, "sh", "-c", script),
                            stdin=slave, stdout=slave, stderr=slave, env=env.env(),
                            start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        resized = False
        while time.monotonic() < deadline and b"resized" not in out:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break
            if not resized and b"rows 45; columns 123" in out:
                _set_size(master, 77, 22)
                proc.send_signal(signal.SIGWINCH)  # no controlling terminal: say it ourselves
                resized = True
        assert proc.wait(timeout=20) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"rows 45; columns 123" in out and b"resized" in out, out


def test_tty_detached_logs(env: Env, name: str) -> None:
    env("run", "-d", "-t", "--name", name, env.ref, "sh", "-c", "tty; echo on-a-terminal")
    wait_for("the container to exit", lambda: row(env, name)["state"] == "stopped")
    logs = env("logs", name).stdout
    assert "/dev/pts/0" in logs and "on-a-terminal" in logs


def test_missing_image_is_one_clear_error(env: Env) -> None:
    r = env("run", "--rm", "127.0.0.1:1/no/such:image", "true", ok=False)
    one_error_line(r, "image not found", "berth pull")
    r = env("run", "--rm", "--snapshotter", "native", env.ref, "true", ok=False)
    one_error_line(r, "not unpacked in the native snapshotter", "pull")
    one_error_line(env("run", "--rm", env.ref, "no-such-command", ok=False), "no-such-command")
    assert env("ps", "-aq").stdout == ""  # nothing left behind


# -- the spec from flags -----------------------------------------------------------------------


def test_env_workdir_user_and_volumes(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("from the host\n")
    rw = tmp_path / "rw"
    rw.mkdir()
    script = ('echo "FOO=$FOO PATH=$PATH"; pwd; id; cat /data/file.txt; '
              "touch /data/x 2>&1 | grep -o 'Read-only file system'; echo written > /rw/out")
    r = env("run", "--rm", "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody",
            "-v", f"{data}:/data:ro", "-v", f"{rw}:/rw", env.ref, "sh", "-c", script, ok=False)
    lines = r.stdout.splitlines()
    assert lines[0] == "FOO=bar PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines[1] == "/tmp"
    assert lines[2] == "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    assert lines[3] == "from the host"
    assert lines[4] == "Read-only file system"
    # nobody may not write the host directory (root's, 0755): the write was refused.
    assert not (rw / "out").exists()
    assert r.returncode != 0
    r = env("run", "--rm", "-u", "0:65534", "-v", f"{rw}:/rw", env.ref, "sh", "-c",
            "id; echo written > /rw/out")
    assert r.stdout == "uid=0(root) gid=65534(nogroup) groups=65534(nogroup)\n"
    assert (rw / "out").read_text() == "written\n"
    one_error_line(env("run", "--rm", "-u", "nosuchuser", env.ref, "id", ok=False),
                   "nosuchuser")
    one_error_line(env("run", "--rm", "-v", "/no/such/dir:/x", env.ref, "id", ok=False),
                   "/no/such/dir")
    one_error_line(env("run", "--rm", "-w", "relative", env.ref, "id", ok=False), "relative")


def test_entrypoint(env: Env) -> None:
    assert env("run", "--rm", "--entrypoint", "/bin/echo", env.ref, "a", "b").stdout == "a b\n"
    # The image's command (/bin/sh) is not appended to a replaced entrypoint.
    assert env("run", "--rm", "--entrypoint", "/bin/pwd", env.ref).stdout == "/\n"


# -- detached containers -----------------------------------------------------------------------


def test_detached_ps_logs_exec_stop_rm(env: Env, name: str) -> None:
    script = ('trap "echo stopping; exit 0" TERM; echo started; echo to-stderr >&2; '
              "while true; do sleep 0.1; done")
    r = env("run", "-d", "--name", name, env.ref, "sh", "-c", script)
    assert r.stdout == f"{name}\n"
    wait_for("output", lambda: "to-stderr" in env("logs", name).stdout)
    assert sorted(env("logs", name).stdout.splitlines()) == ["started", "to-stderr"]
    info = row(env, name)
    assert info["state"] == "running" and str(info["status"]).startswith("Up")
    assert int(str(info["pid"])) > 0
    assert name in env("ps", "-q").stdout.split()
    assert name in env("ps").stdout

    r = env("exec", name, "sh", "-c", "echo in-exec; echo exec-err >&2; exit 4", ok=False)
    assert (r.returncode, r.stdout, r.stderr) == (4, "in-exec\n", "exec-err\n"), _show(r)
    r = env("exec", "-u", "nobody", "-w", "/tmp", "-e", "X=y", name, "sh", "-c",
            'id -u; pwd; echo "$X"')
    assert r.stdout == "65534\n/tmp\ny\n"
    assert env("exec", "-i", name, "cat", input="piped\n").stdout == "piped\n"
    # exec output is not the container's log
    assert "in-exec" not in env("logs", name).stdout

    one_error_line(env("rm", name, ok=False), "running", "-f")
    assert env("stop", name).stdout == f"{name}\n"
    info = row(env, name)
    assert info["state"] == "stopped" and info["exit_code"] == 0
    assert env("logs", name).stdout.endswith("stopping\n")
    one_error_line(env("exec", name, "true", ok=False), "not running")
    one_error_line(env("kill", name, ok=False), "not running")

    log_path = Path(str(info["log_path"]))
    assert log_path.is_file() and log_path.is_relative_to(env.log_dir)
    assert env("rm", name).stdout == f"{name}\n"
    assert name not in env("ps", "-aq").stdout
    assert name not in snapshot_keys(env)
    assert not log_path.exists()
    one_error_line(env("logs", name, ok=False), "no such container")


def test_stop_kills_after_the_timeout(env: Env, name: str) -> None:
    # sleep as pid 1 ignores SIGTERM: stop has to SIGKILL it after the timeout.
    env("run", "-d", "--name", name, env.ref, "sleep", "300")
    started = time.monotonic()
    assert env("stop", "-t", "1", name).stdout == f"{name}\n"
    assert time.monotonic() - started >= 1.0
    assert row(env, name)["exit_code"] == 137
    assert env("stop", name).stdout == f"{name}\n"  # stopping a stopped one: nothing to do


def test_kill_sends_signals(env: Env, name: str) -> None:
    env("run", "-d", "--name", name, env.ref, "sh", "-c",
        'trap "echo got USR1; exit 9" USR1; while true; do sleep 0.1; done')
    assert env("kill", "-s", "USR1", name).stdout == f"{name}\n"
    wait_for("the signal to end it", lambda: row(env, name)["state"] == "stopped")
    assert row(env, name)["exit_code"] == 9
    assert env("logs", name).stdout == "got USR1\n"
    one_error_line(env("kill", "-s", "NOPE", name, ok=False), "NOPE")
    assert env("start", name).stdout == f"{name}\n"
    assert row(env, name)["state"] == "running"
    env("kill", name)  # SIGKILL by default
    wait_for("SIGKILL to end it", lambda: row(env, name)["state"] == "stopped")
    assert row(env, name)["exit_code"] == 137
    env("start", name)
    assert env("rm", "-f", name).stdout == f"{name}\n"
    assert name not in env("ps", "-aq").stdout.split()


def test_start_a_stopped_container(env: Env, name: str) -> None:
    env("run", "-d", "--name", name, env.ref, "sh", "-c", "echo run-$$-$RANDOM")
    wait_for("the first run to end", lambda: row(env, name)["state"] == "stopped")
    assert env("start", name).stdout == f"{name}\n"
    wait_for("the second run to end", lambda: len(env("logs", name).stdout.splitlines()) == 2
             and row(env, name)["state"] == "stopped")
    r = env("start", "-a", name)
    assert r.stdout.startswith("run-")
    logs = env("logs", name).stdout.splitlines()
    assert len(logs) == 3 and logs[2] == r.stdout.strip()
    assert env("logs", "--tail", "1", name).stdout == logs[2] + "\n"
    # The root filesystem is kept between runs.
    env("rm", name)
    env("run", "--name", name, env.ref, "sh", "-c", "echo one >> /state; cat /state")
    r = env("start", "-a", name)
    assert r.stdout == "one\none\n"


def test_logs_follow_until_the_container_exits(env: Env, name: str) -> None:
    env("run", "-d", "--name", name, env.ref, "sh", "-c",
        "for i in 1 2 3; do echo line $i; sleep 0.5; done")
    r = env("logs", "-f", name, timeout=30)
    assert r.stdout == "line 1\nline 2\nline 3\n"


def test_ids_prefixes_and_ambiguity(env: Env) -> None:
    anonymous = env("run", "-d", env.ref, "sleep", "300").stdout.strip()
    prefix = f"p{uuid.uuid4().hex[:6]}"
    try:
        assert len(anonymous) == 12 and all(ch in "0123456789abcdef" for ch in anonymous)
        assert row(env, anonymous)["name"] == anonymous
        env("run", "-d", "--name", f"{prefix}-one", env.ref, "sleep", "300")
        env("run", "-d", "--name", f"{prefix}-two", env.ref, "sleep", "300")
        assert env("exec", f"{prefix}-o", "true").returncode == 0  # a unique prefix
        one_error_line(env("stop", prefix, ok=False), "ambiguous")
        one_error_line(env("stop", "zz-no-such", ok=False), "no such container")
        # Several containers: each is tried, failures reported, status 1.
        r = env("rm", "-f", f"{prefix}-one", "zz-no-such", f"{prefix}-two", ok=False)
        assert r.returncode == 1 and r.stdout.split() == [f"{prefix}-one", f"{prefix}-two"]
        assert "zz-no-such" in r.stderr
    finally:
        env("rm", "-f", anonymous, f"{prefix}-one", f"{prefix}-two", ok=False)


# -- events and stats --------------------------------------------------------------------------


def test_events(env: Env) -> None:
    # A process started with SIGINT ignored keeps it ignored (Python too), and a shell's
    # background job starts so: give `berth events` a Ctrl-C that reaches it wherever the
    # tests run, as a terminal would. (A caught signal is reset to its default on exec.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = env.popen("events")
    finally:
        signal.signal(signal.SIGINT, previous)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in stdout),
                              daemon=True)
    reader.start()
    try:
        # Subscribed once a namespace change shows up.
        marker = f"events-{uuid.uuid4().hex[:8]}"

        def subscribed() -> bool:
            subprocess.run(["ctr", "--address", env.daemon.address, "namespaces", "label",
                            "default", f"marker={marker}"], check=False, capture_output=True)
            return any("/namespaces/update" in ln for ln in lines)

        wait_for("the subscription", subscribed)
        lines.clear()
        env("run", "--rm", env.ref, "sh", "-c", "exit 7", ok=False)

        wait_for("the events of a run",
                 lambda: any(" /containers/delete " in ln for ln in lines))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    topics = []
    for ln in lines:
        when, namespace, topic, body = ln.split(" ", 3)
        assert when.endswith("Z") and namespace == "default"
        topics.append((topic, json.loads(body)))
    names = [t for t, _ in topics]
    for expected in ("/snapshot/prepare", "/containers/create", "/tasks/create", "/tasks/start",
                     "/tasks/exit", "/tasks/delete", "/containers/delete", "/snapshot/remove"):
        assert expected in names, names
    assert names.index("/tasks/start") < names.index("/tasks/exit")
    exit_event = next(body for t, body in topics if t == "/tasks/exit")
    assert exit_event["exit_status"] == 7 and exit_event["pid"] > 0
    create = next(body for t, body in topics if t == "/containers/create")
    assert create["image"] == env.ref


def test_stats_no_stream(env: Env, name: str) -> None:
    env("run", "-d", "--name", name, env.ref, "sh", "-c", "while true; do :; done")
    rows = json.loads(env("stats", "--no-stream", "--format", "json", name).stdout)
    assert len(rows) == 1
    s = rows[0]
    assert s["id"] == name and s["name"] == name
    assert s["pids"] >= 1
    assert 0 < s["memory_usage"] <= s["memory_limit"]
    assert s["cpu_percent"] is not None and s["cpu_percent"] > 10  # a busy loop
    table = env("stats", "--no-stream").stdout.splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert any(ln.startswith(name[:12]) and "%" in ln and " / " in ln for ln in table[1:])
    env("stop", "-t", "0", name)
    one_error_line(env("stats", "--no-stream", name, ok=False), "not running")
