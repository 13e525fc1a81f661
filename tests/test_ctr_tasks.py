"""Tasks through the real `ctr` (containerd 1.6's client) against berthd, with each shim.

Every test runs twice: with Debian's Go shim (`go`: a berthd config maps
`io.containerd.runc.v2` to `containerd-shim-runc-v2`) and with Berth's own shim (`berth`: the
default mapping to `containerd-shim-berth-v2`).

Each test works in a namespace of its own, so that the runc state directory of that namespace
(`/run/containerd/runc/<ns>` for the Go shim, `/run/berth/runc/<ns>` for Berth's) must be empty
when the test is done. Tests that do not restart berthd share one berthd per shim; those that
restart it, or kill a shim behind its back, get their own.

After each scenario the test checks that nothing is left behind: no container, snapshot, task
bundle, mount under the berthd base, runc state or shim process (found by `-address <berthd>`
and `-id <container>` in /proc/*/cmdline). Whatever a test started is torn down by a
finalizer however it ends: `ctr tasks kill -s KILL`, `tasks rm -f`, `containers rm`, then, as
a safety net, SIGKILL to the test's own shims (by pid) and their children, `runc delete
--force` in the namespace's runc root and a lazy unmount of the bundles' rootfs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd, mounts_under
from images import ImageInfo
from processes import accepts_connections, argument_after, children_of, loopback_env, read_argv
from reference_containerd import ReferenceContainerd

pytestmark = pytest.mark.needs_root

TASK_STATE = "io.containerd.runtime.v2.task"
RUNC = "/usr/sbin/runc"
#: Where each shim keeps runc's state: one directory per namespace below it.
RUNC_ROOTS = {"go": "/run/containerd/runc", "berth": "/run/berth/runc"}
#: A runtime name of our own, mapped in the config to the shim under test (item: "berthd
#: drives a shim under another runtime name").
OTHER_RUNTIME = {"go": ("io.containerd.gorunc.v1", "containerd-shim-runc-v2"),
                 "berth": ("io.containerd.berthrunc.v1", "containerd-shim-berth-v2")}

SHIMS = [pytest.param("go", id="go"), pytest.param("berth", id="berth")]

SLEEP = ("sleep", "1000")


def _config(shim: str, directory: Path) -> str:
    lines = ["version = 2", '[plugins."io.containerd.runtime.v2.task".shims]']
    if shim == "go":
        lines.append('  "io.containerd.runc.v2" = "containerd-shim-runc-v2"')
    name, binary = OTHER_RUNTIME[shim]
    lines.append(f'  "{name}" = "{binary}"')
    path = directory / f"berthd-{shim}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- processes -------------------------------------------------------------------------------


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def shim_pids(address: str, container_id: str) -> list[int]:
    """Live shim processes berthd at ``address`` started for ``container_id`` (both shims run
    with ``-id ID -address ADDRESS`` on their command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = read_argv(int(entry))
        if (argument_after(argv, "-id") == container_id
                and argument_after(argv, "-address") == address
                and is_running(int(entry))):
            found.append(int(entry))
    return found


# -- events ----------------------------------------------------------------------------------


@dataclass
class Event:
    namespace: str
    topic: str
    payload: dict[str, object]


class EventLog:
    """`ctr events` in the background; `wait_for` reads what it printed so far."""

    def __init__(self, c: Ctr) -> None:
        self.c = c
        self.text = ""
        self.proc = subprocess.Popen(c.command("events"), stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=loopback_env())
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        # Subscribed once a namespace label change of ours shows up.
        for n in range(100):
            c("namespaces", "label", c.namespace, f"probe={n}")
            if self.wait_for(functools.partial(_probed, str(n)), timeout=0.3):
                return
        self.close()
        raise AssertionError(f"ctr events never showed our namespace update:\n{self.text}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(TypeError, BlockingIOError):
            self.text += self.proc.stdout.read() or ""

    def events(self) -> list[Event]:
        self._read()
        out = []
        for line in self.text.splitlines():
            # 2026-11-28 19:46:58.239895878 +0000 UTC NS TOPIC {json}
            parts = line.split(" ", 6)
            if len(parts) < 6 or parts[4] != self.c.namespace:
                continue
            payload = json.loads(parts[6]) if len(parts) > 6 and parts[6].strip() else {}
            out.append(Event(parts[4], parts[5], payload))
        return out

    def task_events(self) -> list[Event]:
        return [e for e in self.events() if e.topic.startswith("/tasks/")]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 10.0) -> bool:
        return wait_until(lambda: predicate(self.events()), timeout, 0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._read()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _probed(value: str, events: list[Event]) -> bool:
    """Whether our namespace's label ``probe`` was set to ``value``."""
    for e in events:
        labels = e.payload.get("labels")
        if e.topic == "/namespaces/update" and isinstance(labels, dict) \
                and labels.get("probe") == value:
            return True
    return False


def exit_of(container_id: str, process_id: str) -> Callable[[list[Event]], bool]:
    return lambda evs: any(e.topic == "/tasks/exit" and e.payload.get("container_id") ==
                           container_id and e.payload.get("id") == process_id for e in evs)


# -- a test's containers ----------------------------------------------------------------------


@dataclass
class Session:
    """One test's view of a berthd: its namespace, client, containers, and their clean-up."""

    berthd: Berthd
    shim: str
    image: ImageInfo
    namespace: str = field(default_factory=lambda: f"tasks-{uuid.uuid4().hex[:10]}")
    ids: list[str] = field(default_factory=list)
    sockets: dict[str, str] = field(default_factory=dict)  # container id -> shim socket
    killed: set[str] = field(default_factory=set)  # ids whose shim a test SIGKILLed
    _events: list[EventLog] = field(default_factory=list)

    @property
    def c(self) -> Ctr:
        return Ctr(self.berthd.address, self.namespace, timeout=60)

    @property
    def runc_root(self) -> str:
        return f"{RUNC_ROOTS[self.shim]}/{self.namespace}"

    def bundle(self, container_id: str) -> Path:
        return self.berthd.state / TASK_STATE / self.namespace / container_id

    def new_id(self, prefix: str) -> str:
        cid = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.ids.append(cid)
        return cid

    def pull(self) -> None:
        self.c("images", "pull", "--plain-http", self.image.ref)

    def run_detached(self, prefix: str, *command: str) -> str:
        cid = self.new_id(prefix)
        self.c("run", "-d", self.image.ref, cid, *command)
        self._remember_socket(cid)
        return cid

    def _remember_socket(self, cid: str) -> None:
        address = (self.bundle(cid) / "address").read_text().strip() \
            if (self.bundle(cid) / "address").exists() else ""
        if address:
            self.sockets[cid] = address.removeprefix("unix://")

    def tasks(self) -> dict[str, tuple[int, str]]:
        """``ctr tasks ls``: id -> (pid, status)."""
        out = self.c("tasks", "ls").stdout
        rows = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) == 3:
                rows[cols[0]] = (int(cols[1]), cols[2])
        return rows

    def status(self, cid: str) -> str:
        return self.tasks().get(cid, (0, ""))[1]

    def _stopped(self, cid: str) -> bool:
        return self.status(cid) != "RUNNING"

    def wait_status(self, cid: str, status: str, timeout: float = 10.0) -> None:
        assert wait_until(lambda: self.status(cid) == status, timeout, 0.1), \
            f"task {cid} never became {status}: {self.c('tasks', 'ls').stdout}"

    def events(self) -> EventLog:
        log = EventLog(self.c)
        self._events.append(log)
        return log

    # -- what must be gone ---------------------------------------------------------------------

    def leftovers(self, pids: tuple[int, ...] = ()) -> list[str]:
        """Everything this test's containers left behind (empty when all is clean)."""
        problems = []
        for cid in self.ids:
            shims = shim_pids(self.berthd.address, cid)
            if shims:
                problems.append(f"shim for {cid} still running: {shims}")
            socket = self.sockets.get(cid, "")
            if cid not in self.killed and socket and os.path.exists(socket):
                problems.append(f"shim socket {socket} of {cid} still there")
            if self.bundle(cid).exists():
                problems.append(f"bundle {self.bundle(cid)} still there: "
                                f"{sorted(os.listdir(self.bundle(cid)))}")
        problems += [f"still mounted: {m}" for m in mounts_under(str(self.berthd.base))]
        if os.path.isdir(self.runc_root) and os.listdir(self.runc_root):
            problems.append(f"runc state left in {self.runc_root}: {os.listdir(self.runc_root)}")
        problems += [f"container process {pid} still running" for pid in pids if is_running(pid)]
        if self.berthd.proc is not None:
            containers = self.c("containers", "ls", "-q").stdout.split()
            problems += [f"container {cid} still listed" for cid in self.ids if cid in containers]
            snapshots = [line.split()[0] for line in
                         self.c("snapshots", "ls").stdout.splitlines()[1:] if line.strip()]
            problems += [f"snapshot {cid} still listed" for cid in self.ids if cid in snapshots]
            tasks = self.c("tasks", "ls").stdout
            problems += [f"task {cid} still listed" for cid in self.ids if cid in tasks]
        return problems

    def assert_clean(self, pids: tuple[int, ...] = ()) -> None:
        assert wait_until(lambda: not self.leftovers(pids), 5, 0.1), self.leftovers(pids)

    # -- clean-up, however the test ended ------------------------------------------------------

    def cleanup(self) -> None:
        for log in self._events:
            log.close()
        if self.berthd.proc is not None:
            for cid in self.ids:
                if self.c("tasks", "kill", "-s", "KILL", cid, check=False).returncode == 0:
                    wait_until(functools.partial(self._stopped, cid), 5, 0.1)
                self.c("tasks", "rm", "-f", cid, check=False)
                self.c("containers", "rm", cid, check=False)
        for cid in self.ids:
            shims = shim_pids(self.berthd.address, cid)
            for pid in [*children_of(shims), *shims]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run([RUNC, "--root", self.runc_root, "delete", "--force", cid],
                           capture_output=True, check=False)
            rootfs = self.bundle(cid) / "rootfs"
            if str(rootfs) in mounts_under(str(rootfs)):
                subprocess.run(["umount", "-l", str(rootfs)], capture_output=True, check=False)
        for path in self.sockets.values():  # a killed shim leaves its socket (containerd too)
            if os.path.exists(path) and not accepts_connections(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.runc_root)  # only when empty


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SHIMS)
def shim(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def shared_berthd(shim: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Berthd]:
    """One berthd per shim for the tests that do not restart it."""
    base = tmp_path_factory.mktemp(f"tasks-{shim}")
    with Berthd(base / "d", config=_config(shim, base)) as daemon:
        yield daemon


@pytest.fixture
def own_berthd(shim: str, tmp_path: Path) -> Iterator[Berthd]:
    """A berthd of this test's own, for restarts and killed shims."""
    with Berthd(tmp_path / "d", config=_config(shim, tmp_path)) as daemon:
        yield daemon


def _session(berthd: Berthd, shim: str, image: ImageInfo) -> Iterator[Session]:
    s = Session(berthd, shim, image)
    try:
        s.pull()
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def s(shared_berthd: Berthd, shim: str, busybox_image: ImageInfo) -> Iterator[Session]:
    yield from _session(shared_berthd, shim, busybox_image)


@pytest.fixture
def own(own_berthd: Berthd, shim: str, busybox_image: ImageInfo) -> Iterator[Session]:
    yield from _session(own_berthd, shim, busybox_image)


# -- 1. run and the task commands ------------------------------------------------------------


def test_run_rm_output_and_exit_codes(s: Session) -> None:
    ref = s.image.ref
    hello = s.c("run", "--rm", ref, s.new_id("hello"), "echo", "hello")
    assert hello.stdout == "hello\n"
    split = s.c("run", "--rm", ref, s.new_id("split"), "sh", "-c", "echo out; echo err >&2")
    assert (split.stdout, split.stderr) == ("out\n", "err\n")
    three = s.c("run", "--rm", ref, s.new_id("exit3"), "sh", "-c", "exit 3", check=False)
    assert three.returncode == 3, three
    missing = s.c("run", "--rm", ref, s.new_id("missing"), "/nonexistent", check=False)
    assert missing.returncode != 0
    assert "/nonexistent" in missing.stderr and "no such file" in missing.stderr, missing.stderr
    s.assert_clean()


def test_detached_task_lifecycle(s: Session) -> None:
    cid = s.run_detached("life", *SLEEP)
    pid, status = s.tasks()[cid]
    assert status == "RUNNING" and is_running(pid)
    assert shim_pids(s.berthd.address, cid), "no shim process for the task"

    ps = s.c("tasks", "ps", cid).stdout.split()
    assert ps[:2] == ["PID", "INFO"] and str(pid) in ps[2:], ps

    out = s.c("tasks", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo $0", "x")
    assert out.stdout == "x\n"
    failing = s.c("tasks", "exec", "--exec-id", "e2", cid, "sh", "-c", "exit 4", check=False)
    assert failing.returncode == 4, failing
    s.c("tasks", "exec", "-d", "--exec-id", "bg", cid, *SLEEP)
    assert wait_until(lambda: len(s.c("tasks", "ps", cid).stdout.splitlines()) == 3), \
        s.c("tasks", "ps", cid).stdout  # the header, init and the background exec

    s.c("tasks", "pause", cid)
    assert s.status(cid) == "PAUSED"
    s.c("tasks", "resume", cid)
    assert s.status(cid) == "RUNNING"

    metrics = s.c("tasks", "metrics", cid).stdout
    assert cid in metrics and "METRIC" in metrics, metrics
    values = dict(line.split(None, 1) for line in metrics.splitlines()
                  if line.strip() and not line.startswith(("ID", cid, "METRIC")))
    assert int(values["pids.current"]) >= 1, metrics
    assert int(values["memory.usage_in_bytes"]) > 0, metrics

    s.c("tasks", "kill", "-s", "KILL", cid)
    s.wait_status(cid, "STOPPED")
    assert not is_running(pid)
    rm = s.c("tasks", "rm", cid)
    assert "exit code 137" in rm.stderr, rm.stderr
    assert cid not in s.tasks()
    s.c("containers", "rm", cid)
    s.assert_clean((pid,))


def test_run_tty_under_pty(s: Session) -> None:
    """`ctr run -t` needs a terminal: util-linux `script` gives it one."""
    cid = s.new_id("tty")
    cmd = shlex.join(s.c.command("run", "-t", "--rm", s.image.ref, cid, "sh", "-c",
                                 "tty; echo done"))
    out = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, text=True,
                         timeout=60, env=loopback_env(), stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, out
    lines = [ln.strip("\r\x00^@") for ln in out.stdout.splitlines()]
    assert any(ln.startswith("/dev/pts/") for ln in lines), out.stdout
    assert "done" in lines, out.stdout

    code = s.new_id("ttyexit")
    cmd = shlex.join(s.c.command("run", "-t", "--rm", s.image.ref, code, "sh", "-c", "exit 5"))
    out = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, text=True,
                         timeout=60, env=loopback_env(), stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 5, out
    s.assert_clean()


# -- 3. events ---------------------------------------------------------------------------------


def _run_exec_kill(c: Ctr, ref: str, cid: str) -> str:
    """run -d, an exec that exits 2, kill, rm; what `ctr tasks rm` wrote on stderr."""
    c("run", "-d", ref, cid, *SLEEP)
    execed = c("tasks", "exec", "--exec-id", "e1", cid, "sh", "-c", "exit 2", check=False)
    assert execed.returncode == 2, execed
    c("tasks", "kill", "-s", "KILL", cid)
    wait_until(lambda: "STOPPED" in c("tasks", "ls").stdout, 10, 0.1)
    removed = c("tasks", "rm", cid)
    c("containers", "rm", cid)
    return str(removed.stderr).split("level=", 1)[-1].replace(cid, "ID")


def _task_not_found(c: Ctr, ref: str, cid: str) -> subprocess.CompletedProcess[str]:
    c("containers", "create", ref, cid, *SLEEP)
    return c("tasks", "rm", cid, check=False)


def _task_exists(c: Ctr, ref: str, cid: str) -> subprocess.CompletedProcess[str]:
    c("containers", "create", ref, cid, *SLEEP)
    c("tasks", "start", "-d", cid)
    return c("tasks", "start", "-d", cid, check=False)


def _container_not_found(c: Ctr, ref: str, cid: str) -> subprocess.CompletedProcess[str]:
    return c("tasks", "kill", "-s", "KILL", cid, check=False)


def _rm_running(c: Ctr, ref: str, cid: str) -> subprocess.CompletedProcess[str]:
    c("run", "-d", ref, cid, *SLEEP)
    return c("tasks", "rm", cid, check=False)


def _exec_id_taken(c: Ctr, ref: str, cid: str) -> subprocess.CompletedProcess[str]:
    c("run", "-d", ref, cid, *SLEEP)
    c("tasks", "exec", "-d", "--exec-id", "x", cid, *SLEEP)
    return c("tasks", "exec", "--exec-id", "x", cid, "true", check=False)


#: Failing task commands, run against containerd and berthd: ctr must print the same error.
ERROR_CASES: dict[str, Callable[[Ctr, str, str], subprocess.CompletedProcess[str]]] = {
    "task-not-found": _task_not_found,
    "task-exists": _task_exists,
    "container-not-found": _container_not_found,
    "rm-running": _rm_running,
    "exec-id-taken": _exec_id_taken,
}


def _error_line(c: Ctr, proc: subprocess.CompletedProcess[str], cid: str) -> str:
    """ctr's last stderr line, with the test's own names replaced."""
    assert proc.returncode != 0, proc
    last = proc.stderr.strip().splitlines()[-1]
    return last.replace(cid, "ID").replace(c.namespace, "NS")


def _remove(c: Ctr, cid: str) -> None:
    c("tasks", "kill", "-a", "-s", "KILL", cid, check=False)
    wait_until(lambda: "RUNNING" not in c("tasks", "ls").stdout, 5, 0.1)
    c("tasks", "rm", "-f", cid, check=False)
    c("containers", "rm", cid, check=False)


@dataclass
class Reference:
    task_topics: list[str]
    rm_stderr: str
    errors: dict[str, str]


@pytest.fixture(scope="module")
def reference(reference_containerd: ReferenceContainerd,
              busybox_image: ImageInfo) -> Iterator[Reference]:
    """What the real containerd publishes and ctr prints for `_run_exec_kill`."""
    namespace = f"reference-{uuid.uuid4().hex[:8]}"
    c = Ctr(reference_containerd.address, namespace)
    c("images", "pull", "--plain-http", busybox_image.ref)
    log = EventLog(c)
    try:
        rm_stderr = _run_exec_kill(c, busybox_image.ref, "ref")
        assert log.wait_for(lambda evs: any(e.topic == "/tasks/delete" for e in evs))
        topics = [e.topic for e in log.task_events()]
        errors = {}
        for name, case in ERROR_CASES.items():
            cid = f"ref-{name}"
            try:
                errors[name] = _error_line(c, case(c, busybox_image.ref, cid), cid)
            finally:
                _remove(c, cid)
        yield Reference(topics, rm_stderr, errors)
    finally:
        log.close()
        with contextlib.suppress(OSError):
            os.rmdir(f"{RUNC_ROOTS['go']}/{namespace}")


def test_events_for_run_with_exec(s: Session, reference: Reference) -> None:
    log = s.events()
    cid = s.new_id("ev")
    rm_stderr = _run_exec_kill(s.c, s.image.ref, cid)
    assert rm_stderr == reference.rm_stderr
    assert log.wait_for(lambda evs: any(e.topic == "/tasks/delete" for e in evs)), log.text
    events = log.task_events()
    topics = [e.topic for e in events]
    assert topics == reference.task_topics, (topics, log.text)

    by_topic = {e.topic: e.payload for e in events if e.topic != "/tasks/exit"}
    assert by_topic["/tasks/create"]["container_id"] == cid
    assert by_topic["/tasks/create"]["bundle"] == str(s.bundle(cid))
    init_pid = by_topic["/tasks/start"]["pid"]
    assert by_topic["/tasks/create"]["pid"] == init_pid
    assert by_topic["/tasks/exec-added"] == {"container_id": cid, "exec_id": "e1"}
    started = by_topic["/tasks/exec-started"]
    assert started["exec_id"] == "e1" and started["pid"] not in (0, init_pid)
    exits = {e.payload["id"]: e.payload for e in events if e.topic == "/tasks/exit"}
    assert exits["e1"]["exit_status"] == 2 and exits["e1"]["pid"] == started["pid"]
    assert exits[cid]["exit_status"] == 137 and exits[cid]["pid"] == init_pid
    assert by_topic["/tasks/delete"]["exit_status"] == 137
    s.assert_clean()


@pytest.mark.parametrize("case", [
    "task-not-found",
    "task-exists",
    "container-not-found",
    "rm-running",
    "exec-id-taken",
])
def test_error_messages_match_containerd(s: Session, reference: Reference, case: str) -> None:
    cid = s.new_id(case)
    assert _error_line(s.c, ERROR_CASES[case](s.c, s.image.ref, cid), cid) \
        == reference.errors[case]
    _remove(s.c, cid)
    s.assert_clean()


# -- 5. berthd restarted under running containers --------------------------------------------


@pytest.mark.parametrize("hard", [False, True], ids=["term", "kill"])
def test_restart_keeps_tasks_running(own: Session, hard: bool) -> None:
    s = own
    keep = s.run_detached("keep", *SLEEP)
    # exits 7 once /go exists: made to exit while berthd is down
    quits = s.run_detached("quits", "sh", "-c", "while [ ! -e /go ]; do sleep 0.05; done; exit 7")
    before = s.tasks()
    keep_pid, quit_pid = before[keep][0], before[quits][0]
    shims = {cid: shim_pids(s.berthd.address, cid) for cid in (keep, quits)}

    s.berthd.stop(hard=hard)
    assert is_running(keep_pid) and is_running(quit_pid)
    assert all(is_running(p) for pids in shims.values() for p in pids), shims
    (s.bundle(quits) / "rootfs" / "go").touch()
    assert wait_until(lambda: not is_running(quit_pid)), "the container did not exit"
    s.berthd.start()

    after = s.tasks()
    assert after[keep] == (keep_pid, "RUNNING"), after
    assert after[quits] == (quit_pid, "STOPPED"), after
    assert s.c("tasks", "exec", "--exec-id", "again", keep, "sh", "-c", "echo $0", "in").stdout \
        == "in\n"
    ps = s.c("tasks", "ps", keep).stdout
    assert str(keep_pid) in ps

    log = s.events()  # the shims' events reach the new berthd
    s.c("tasks", "kill", "-s", "KILL", keep)
    s.wait_status(keep, "STOPPED")
    assert log.wait_for(exit_of(keep, keep)), log.text
    exit_event = next(e for e in log.events() if exit_of(keep, keep)([e]))
    assert exit_event.payload["exit_status"] == 137 and exit_event.payload["pid"] == keep_pid

    rm = s.c("tasks", "rm", keep)
    assert "exit code 137" in rm.stderr, rm.stderr
    rm = s.c("tasks", "rm", quits)
    assert "exit code 7" in rm.stderr, rm.stderr
    s.c("containers", "rm", keep, quits)
    s.assert_clean((keep_pid, quit_pid))


# -- 6. a shim killed behind berthd's back ---------------------------------------------------


def _kill_shim(s: Session, cid: str) -> None:
    shims = shim_pids(s.berthd.address, cid)
    assert shims, "no shim process for the task"
    s.killed.add(cid)
    for pid in shims:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not shim_pids(s.berthd.address, cid)), "the shim did not die"


def test_killed_shim_cleaned_up_on_restart(own: Session) -> None:
    s = own
    cid = s.run_detached("orphan", *SLEEP)
    pid = s.tasks()[cid][0]
    assert str(s.bundle(cid) / "rootfs") in mounts_under(str(s.berthd.base))
    _kill_shim(s, cid)

    s.berthd.restart()
    assert cid not in s.tasks()
    assert not s.bundle(cid).exists(), sorted(os.listdir(s.bundle(cid)))
    assert mounts_under(str(s.berthd.base)) == []
    assert wait_until(lambda: not is_running(pid)), "the container outlived its cleanup"
    # the container record stays (as in containerd) and can be removed
    assert cid in s.c("containers", "ls", "-q").stdout.split()
    s.c("containers", "rm", cid)
    s.assert_clean((pid,))


def test_killed_shim_publishes_exit_while_berthd_runs(own: Session) -> None:
    s = own
    cid = s.run_detached("orphan", *SLEEP)
    pid = s.tasks()[cid][0]
    log = s.events()
    _kill_shim(s, cid)
    try:
        assert log.wait_for(exit_of(cid, cid), timeout=5), log.text
        exit_event = next(e for e in log.events() if exit_of(cid, cid)([e]))
        assert exit_event.payload["exit_status"] == 137
        assert log.wait_for(lambda evs: any(e.topic == "/tasks/delete" for e in evs)), log.text
        listed = s.c("tasks", "ls", check=False)
        assert listed.returncode == 0, listed.stderr
        assert cid not in listed.stdout
        assert wait_until(lambda: not s.bundle(cid).exists())
        assert mounts_under(str(s.berthd.base)) == []
        assert not is_running(pid)
        s.c("containers", "rm", cid)
        s.assert_clean((pid,))
    finally:
        s.berthd.restart()  # let recovery clean up after the dead shim, whatever happened


# -- 7. a shim under another runtime name ----------------------------------------------------


def test_run_under_another_runtime_name(s: Session) -> None:
    runtime, binary = OTHER_RUNTIME[s.shim]
    cid = s.new_id("named")
    out = s.c("run", "--runtime", runtime, "--rm", s.image.ref, cid, "echo", "hi")
    assert out.stdout == "hi\n"

    kept = s.new_id("named-d")
    s.c("run", "-d", "--runtime", runtime, s.image.ref, kept, *SLEEP)
    row = next(line for line in s.c("containers", "ls").stdout.splitlines()
               if line.startswith(kept))
    assert row.split()[-1] == runtime, row
    assert (s.bundle(kept) / "shim-binary-path").read_text().endswith("/" + binary)
    assert s.status(kept) == "RUNNING"
    pid = s.tasks()[kept][0]
    s.c("tasks", "kill", "-s", "KILL", kept)
    s.wait_status(kept, "STOPPED")
    s.c("tasks", "rm", kept)
    s.c("containers", "rm", kept)
    s.assert_clean((pid,))


def test_unknown_runtime_leaves_nothing(s: Session) -> None:
    cid = s.new_id("nosuch")
    out = s.c("run", "--runtime", "io.containerd.nosuchshim.v1", "--rm", s.image.ref, cid,
              "true", check=False)
    assert out.returncode != 0
    assert "containerd-shim-nosuchshim-v1" in out.stderr and "not found" in out.stderr, out.stderr
    s.assert_clean()
