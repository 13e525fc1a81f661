"""The tasks proxy (a ``Runtime`` of ``Task``\\ s over the Tasks API) against a real berthd on
Berth's shim and real runc: the lifecycle, exec'd processes, pause, statistics, and the
errors coming back as Berth's own. The image comes in through the Transfer proxy."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo

from berth import errdefs
from berth.containers import AnyValue
from berth.proxy.connection import Connection
from berth.proxy.containers import ContainersProxy
from berth.proxy.tasks import TasksProxy, cgroup_stats
from berth.proxy.transfer import TransferProxy
from berth.runtime.runtime import IO, CreateOpts, ExecOpts, Status

pytestmark = pytest.mark.needs_root

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, busybox_image: ImageInfo
           ) -> Iterator[Berthd]:
    with Berthd(tmp_path_factory.mktemp("tasks") / "berthd") as d:
        conn = Connection(d.address, namespace="default")
        try:
            updates = list(TransferProxy(conn).pull(busybox_image.ref, plain_http=True))
        finally:
            conn.close()
        final = updates[-1]
        assert (final.kind, final.status, final.name) == ("image", "done", busybox_image.ref)
        assert final.descriptor is not None and final.descriptor.digest.startswith("sha256:")
        assert {u.kind for u in updates} >= {"manifest", "layer"}
        yield d


@pytest.fixture
def conn(daemon: Berthd) -> Iterator[Connection]:
    c = Connection(daemon.address, namespace="default")
    yield c
    c.close()


@pytest.fixture
def container(daemon: Berthd, busybox_image: ImageInfo) -> Iterator[str]:
    """A fresh container id (:func:`make` creates the container); the task and container are
    removed afterwards, whatever the test left."""
    cid = f"tasks-{uuid.uuid4().hex[:10]}"
    yield cid
    c = Ctr(daemon.address)
    c("tasks", "kill", "-s", "KILL", cid, check=False)
    c("tasks", "rm", "-f", cid, check=False)
    c("containers", "rm", cid, check=False)


def make(daemon: Berthd, image: ImageInfo, cid: str, script: str) -> None:
    Ctr(daemon.address)("containers", "create", image.ref, cid, "--", "sh", "-c", script)


def test_lifecycle(daemon: Berthd, busybox_image: ImageInfo, conn: Connection, container: str,
                   tmp_path: Path) -> None:
    make(daemon, busybox_image, container, "echo out; exit 3")
    tasks = TasksProxy(conn)
    out = tmp_path / "out"
    out.write_text("")
    task = tasks.create(container, CreateOpts(io=IO(stdout=str(out))))
    assert task.id == container and task.pid > 0
    assert task.runtime == "io.containerd.runc.v2"
    assert task.namespace == "default"
    created = task.state()
    assert (created.status, created.pid, created.io.stdout) == (Status.CREATED, task.pid,
                                                                str(out))
    assert container in {t.id for t in tasks.list()}
    assert dict((t.id, st.status) for t, st in tasks.states())[container] == Status.CREATED

    waiter = task.waiter()
    assert task.start() == task.pid
    exit_ = waiter.result(30)
    assert exit_.status == 3 and exit_.exited_at > 0
    stopped = tasks.get(container).state()
    assert (stopped.status, stopped.exit_status) == (Status.STOPPED, 3)
    assert task.wait().status == 3  # after the exit too
    assert out.read_text() == "out\n"

    deleted = tasks.delete(container)
    assert (deleted.status, deleted.pid) == (3, task.pid)
    with pytest.raises(errdefs.NotFound):
        tasks.get(container)
    with pytest.raises(errdefs.NotFound):
        task.state()


def test_exec_pids_pause_stats_kill(daemon: Berthd, busybox_image: ImageInfo,
                                    conn: Connection, container: str) -> None:
    make(daemon, busybox_image, container, "sleep 1000")
    tasks = TasksProxy(conn)
    task = tasks.create(container, CreateOpts())
    task.start()

    spec = ContainersProxy(conn).get(container).spec
    assert spec is not None
    process = json.loads(spec.value)["process"]
    process["args"] = ["sh", "-c", "exit 7"]
    task.exec("probe", ExecOpts(AnyValue(PROCESS_TYPE_URL, json.dumps(process).encode())))
    assert task.state("probe").status == Status.CREATED
    with pytest.raises(errdefs.AlreadyExists):
        task.exec("probe", ExecOpts(AnyValue(PROCESS_TYPE_URL, json.dumps(process).encode())))
    waiter = task.waiter("probe")
    task.start("probe")
    assert waiter.result(30).status == 7
    assert task.delete_process("probe").status == 7
    with pytest.raises(errdefs.NotFound):
        task.state("probe")

    assert task.pid in {p.pid for p in task.pids()}
    task.pause()
    assert task.state().status == Status.PAUSED
    task.resume()
    assert task.state().status == Status.RUNNING
    stats = cgroup_stats(task.stats())
    assert stats is not None and stats.pids >= 1 and stats.memory > 0
    assert [t.id for t, _data in tasks.stats_of([task])] == [container]

    with pytest.raises(errdefs.FailedPrecondition):
        tasks.delete(container)  # still running
    waiter = task.waiter()
    task.kill(signal.SIGKILL)
    assert waiter.result(30).status == 137
    tasks.delete(container)


def test_errors(daemon: Berthd, busybox_image: ImageInfo, conn: Connection,
                container: str) -> None:
    tasks = TasksProxy(conn)
    with pytest.raises(errdefs.NotFound):
        tasks.get("no-such-task")
    with pytest.raises(errdefs.NotFound):
        tasks.task("no-such-task").kill(signal.SIGTERM)
    with pytest.raises(errdefs.NotFound):
        tasks.create("no-such-container", CreateOpts())  # no container record
    make(daemon, busybox_image, container, "sleep 1000")
    task = tasks.create(container, CreateOpts())
    with pytest.raises(errdefs.AlreadyExists):
        tasks.create(container, CreateOpts())
    task.start()
    with pytest.raises(errdefs.FailedPrecondition):
        task.start()
    with pytest.raises(errdefs.InvalidArgument):
        task.delete_process("")  # the init goes with the task
    assert tasks.stats_of([]) == []
