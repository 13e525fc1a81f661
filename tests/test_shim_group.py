"""Shim grouping (the runtime config's `shim_group`, `shim_group_size`).

By default berthd's containers without a pod share Berth shims, at most `shim_group_size` per
shim, in their namespace: a new container joins the first shim with room. A shim's failure
reaches only its own group. `shim_group = "container"` gives every container a shim of its own,
as containerd does.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from processes import pids_with_argument_pair

pytestmark = pytest.mark.needs_root

RUNTIME = '[plugins."io.containerd.runtime.v2.task"]\n'


def _shims(address: str) -> list[int]:
    """Processes serving berthd at ``address`` as shims (by their -address argument)."""
    return pids_with_argument_pair("-address", address)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _daemon(tmp_path: Path, runtime_config: str) -> Berthd:
    config = tmp_path / "config.toml"
    config.write_text(f"version = 2\n{RUNTIME}{runtime_config}")
    return Berthd(tmp_path / "berthd", config=str(config))


class Group:
    """One namespace's containers on a test's berthd; all removed at the end."""

    def __init__(self, daemon: Berthd, image: ImageInfo, namespace: str = "grouped") -> None:
        self.daemon = daemon
        self.image = image
        self.c = Ctr(daemon.address, namespace)
        self.ids: list[str] = []
        self.c("images", "pull", "--plain-http", image.ref)

    def run(self, cid: str) -> None:
        self.ids.append(cid)  # (list.append is atomic: threads may run containers at once)
        self.c("run", "-d", self.image.ref, cid, "sleep", "300")

    def bundle(self, cid: str) -> Path:
        return self.daemon.state / "io.containerd.runtime.v2.task" / self.c.namespace / cid

    def address(self, cid: str) -> str:
        return (self.bundle(cid) / "address").read_text().strip()

    def shim_pid(self, cid: str) -> int:
        """The shim listening on the socket ``cid``'s bundle names."""
        path = self.address(cid).removeprefix("unix://")
        for shim in _shims(self.daemon.address):
            if any(_socket_path_of(shim, fd) == path for fd in os.listdir(f"/proc/{shim}/fd")):
                return shim
        raise AssertionError(f"no shim serves {path}")

    def remove(self, cid: str) -> None:
        self.c("tasks", "kill", "-s", "KILL", cid, check=False)
        _wait(lambda: "RUNNING" not in self.task_line(cid))
        self.c("tasks", "rm", "-f", cid, check=False)
        self.c("containers", "rm", cid, check=False)
        if cid in self.ids:
            self.ids.remove(cid)

    def task_line(self, cid: str) -> str:
        rows = self.c("tasks", "ls", check=False).stdout.splitlines()
        return next((row for row in rows if row.split()[:1] == [cid]), "")

    def close(self) -> None:
        for cid in list(self.ids):
            self.remove(cid)
        assert _wait(lambda: not _shims(self.daemon.address)), "shims outlived their tasks"


def _socket_path_of(pid: int, fd: str) -> str:
    """The path of a listening unix socket a process holds, from /proc/net/unix."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""
    if not link.startswith("socket:["):
        return ""
    inode = link[len("socket:["):-1]
    with open("/proc/net/unix") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[6] == inode:
                return fields[7]
    return ""


@pytest.fixture
def image(busybox_image: ImageInfo) -> ImageInfo:
    return busybox_image


@pytest.fixture
def groups_of_two(tmp_path: Path, image: ImageInfo) -> Iterator[Group]:
    with _daemon(tmp_path, "  shim_group_size = 2\n") as daemon:
        group = Group(daemon, image)
        try:
            yield group
        finally:
            group.close()


def test_containers_share_shims_up_to_the_group_size(groups_of_two: Group) -> None:
    g = groups_of_two
    for cid in ("g1", "g2", "g3", "g4", "g5"):
        g.run(cid)
    members = Counter(g.address(cid) for cid in g.ids)
    assert sorted(members.values()) == [1, 2, 2], members
    assert len(_shims(g.daemon.address)) == 3
    assert g.address("g1") == g.address("g2") != g.address("g3") == g.address("g4")
    assert g.c("tasks", "exec", "--exec-id", "e1", "g4", "echo", "in-g4").stdout == "in-g4\n"

    # berthd joined g2 and g4 to their running shims itself: no shim binary ran for them.
    log = g.daemon.log_path.read_text(errors="replace")  # whole (log() is its tail)
    assert all(f"task {cid} joins the running shim" in log for cid in ("g2", "g4"))
    assert not any(f"task {cid} joins the running shim" in log for cid in ("g1", "g3", "g5"))
    # and started g1, g3 and g5's shims itself, through the zygote: no shim binary ran either
    assert all(f"task {cid}: shim started by berthd through the zygote" in log
               for cid in ("g1", "g3", "g5"))

    # g1 leaves: the next container takes its place beside g2, in the first slot with room
    g.remove("g1")
    assert "g2" in g.c("tasks", "ls").stdout
    g.run("g6")
    assert g.address("g6") == g.address("g2")
    assert len(_shims(g.daemon.address)) == 3


def test_concurrent_starts_never_overfill_a_shim(groups_of_two: Group) -> None:
    """Starts racing for the same slot queue on the namespace's lock: 7 containers started
    at once fill 4 shims, none with more than 2."""
    g = groups_of_two
    ids = [f"r{i}" for i in range(7)]
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        list(pool.map(g.run, ids))
    members = Counter(g.address(cid) for cid in ids)
    assert sorted(members.values()) == [1, 2, 2, 2], members
    assert len(_shims(g.daemon.address)) == 4
    assert all("RUNNING" in g.task_line(cid) for cid in ids), g.c("tasks", "ls").stdout


def test_an_idle_shim_waits_for_a_task_on_its_way(groups_of_two: Group) -> None:
    """A shim whose last task is deleted stays while another task's `start` has chosen it
    (a bundle naming its socket, not yet created there), serves that task when it comes, and
    leaves once no such bundle is left."""
    g = groups_of_two
    g.run("first")
    shim, address = g.shim_pid("first"), g.address("first")
    on_its_way = g.bundle("first").parent / "on-its-way"
    on_its_way.mkdir()
    try:
        (on_its_way / "address").write_text(address)
        g.remove("first")
        time.sleep(1)  # (an idle shim with no task on its way would be gone by now)
        assert shim in _shims(g.daemon.address)
        g.run("second")  # joins the slot: on-its-way takes the other place
        assert g.address("second") == address and g.shim_pid("second") == shim
        g.remove("second")
        assert shim in _shims(g.daemon.address)
    finally:
        (on_its_way / "address").unlink()
        on_its_way.rmdir()
    assert _wait(lambda: shim not in _shims(g.daemon.address)), "the idle shim stayed"


def test_group_shim_log_follows_a_live_task(groups_of_two: Group) -> None:
    """The shim's stderr is its first task's bundle `log` FIFO; when that task goes, the shim
    writes to its other task's FIFO, which berthd still reads."""
    g = groups_of_two
    g.run("first")
    g.run("second")
    shim = g.shim_pid("first")
    assert os.readlink(f"/proc/{shim}/fd/2") == str(g.bundle("first") / "log")
    g.remove("first")
    assert os.readlink(f"/proc/{shim}/fd/2") == str(g.bundle("second") / "log")


def test_a_killed_group_shim_takes_only_its_group(groups_of_two: Group) -> None:
    g = groups_of_two
    for cid in ("k1", "k2", "k3", "k4"):
        g.run(cid)
    victim = g.shim_pid("k1")
    assert g.shim_pid("k2") == victim and g.shim_pid("k3") != victim
    os.kill(victim, signal.SIGKILL)
    # berthd notices, cleans up after k1 and k2 (their tasks end as containerd's do) ...
    assert _wait(lambda: not any(f"k{i} " in g.c("tasks", "ls").stdout for i in (1, 2))), \
        g.c("tasks", "ls").stdout
    # ... and k3 and k4 run on, on their own shim
    listed = g.c("tasks", "ls").stdout
    assert all(row.split()[-1] == "RUNNING" for row in listed.splitlines()
               if row.split()[:1] in (["k3"], ["k4"])), listed
    assert g.c("tasks", "exec", "--exec-id", "e1", "k3", "echo", "alive").stdout == "alive\n"
    assert g.c("tasks", "exec", "--exec-id", "e1", "k4", "echo", "alive").stdout == "alive\n"


def test_a_stuck_shim_hides_only_its_own_tasks(groups_of_two: Group) -> None:
    """`tasks ls` leaves out the tasks whose shim cannot answer (after containerd's 2 s) and
    lists the others; once the shim answers again, its tasks are back."""
    g = groups_of_two
    for cid in ("s1", "s2", "s3"):
        g.run(cid)
    stuck = g.shim_pid("s1")
    assert g.shim_pid("s3") != stuck
    os.kill(stuck, signal.SIGSTOP)
    try:
        listed = [row.split()[0] for row in g.c("tasks", "ls").stdout.splitlines()[1:]]
        assert listed == ["s3"], listed
    finally:
        os.kill(stuck, signal.SIGCONT)
    listed = [row.split()[0] for row in g.c("tasks", "ls").stdout.splitlines()[1:]]
    assert listed == ["s1", "s2", "s3"], listed


def test_container_grouping_gives_every_container_a_shim(tmp_path: Path,
                                                         image: ImageInfo) -> None:
    with _daemon(tmp_path, '  shim_group = "container"\n') as daemon:
        group = Group(daemon, image)
        try:
            for cid in ("c1", "c2", "c3"):
                group.run(cid)
            assert len({group.address(cid) for cid in group.ids}) == 3
            assert len(_shims(daemon.address)) == 3
        finally:
            group.close()


def test_without_the_zygote_berthd_runs_the_shim_binary(tmp_path: Path, image: ImageInfo,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """berthd starts its own shim in-process only through the zygote; with the zygote off
    (BERTH_SHIM_ZYGOTE=off in its environment, which its shims inherit) it runs the shim
    binary's ``start``, which starts the shim as an interpreter of its own."""
    monkeypatch.setenv("BERTH_SHIM_ZYGOTE", "off")
    with _daemon(tmp_path, "") as daemon:
        group = Group(daemon, image)
        try:
            group.run("plain")
            assert group.c("tasks", "exec", "--exec-id", "e", "plain", "echo", "hi").stdout \
                == "hi\n"
            log = daemon.log()
            assert "task plain: no shim zygote" in log, log
            assert "shim started by berthd" not in log
            with open(f"/proc/{group.shim_pid('plain')}/cmdline", "rb") as f:
                assert b"serve_main" in f.read()  # a new interpreter, not a zygote's fork
        finally:
            group.close()


@pytest.mark.parametrize("setting", ['shim_group = "pod"', "shim_group_size = 0",
                                     'shim_group_size = "8"', 'shim_linger = "soon"',
                                     "shim_linger = -1"])
def test_bad_grouping_config_is_refused(tmp_path: Path, setting: str) -> None:
    daemon = _daemon(tmp_path, f"  {setting}\n")
    with daemon:
        plugins = Ctr(daemon.address)("plugins", "ls").stdout
    row = next(line for line in plugins.splitlines() if "io.containerd.runtime.v2" in line
               and " task " in f" {line} ")
    assert row.split()[-1] == "error", row
    assert setting.split()[0] in daemon.log(), daemon.log()


def test_an_idle_group_shim_lingers_for_the_next_task(tmp_path: Path, image: ImageInfo) -> None:
    """A group shim whose last task is gone waits shim_linger seconds for a next task, which
    berthd joins to it without starting a shim (back-to-back `run --rm`s pay no shim start);
    then it leaves."""
    with _daemon(tmp_path, "  shim_linger = 3.0\n") as daemon:
        g = Group(daemon, image)
        try:
            g.run("first")
            shim = g.shim_pid("first")
            address = g.address("first")
            g.remove("first")
            assert _shims(daemon.address) == [shim]  # lingering, not gone
            g.run("second")
            assert g.address("second") == address and g.shim_pid("second") == shim
            assert "task second joins the running shim" in daemon.log()
            g.remove("second")
            started = time.monotonic()
            assert _wait(lambda: not _shims(daemon.address), timeout=15)
            assert time.monotonic() - started >= 2.0  # it waited (about 3 s) before leaving
        finally:
            g.close()

