"""A client of berthd: one connection and the typed proxies over it (:mod:`berth.proxy`), as the
``berth`` CLI and tests use them.

Every call carries the client's namespace (and, inside :meth:`Client.lease`, the lease);
failures come back as Berth's own errors (:mod:`berth.proxy.connection`). A proxy's module is
imported when the proxy is first used, so a command pays only for the services it talks to.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from berth import errdefs, leases, namespaces
from berth.plugin.config import DEFAULT_ADDRESS
from berth.proxy.connection import Connection, Waiting

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

if TYPE_CHECKING:
    from berth.proxy.containers import ContainersProxy
    from berth.proxy.content import ContentProxy
    from berth.proxy.diff import DiffProxy
    from berth.proxy.events import EventsProxy
    from berth.proxy.images import ImagesProxy
    from berth.proxy.introspection import Version
    from berth.proxy.leases import LeasesProxy
    from berth.proxy.namespaces import NamespacesProxy
    from berth.proxy.snapshots import SnapshotterProxy
    from berth.proxy.transfer import TransferProxy


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = namespaces.DEFAULT,
                 timeout: float = 30.0) -> None:
        self.connection = Connection(address, namespace=namespace, timeout=timeout)

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def namespace(self) -> str:
        return self.connection.namespace or namespaces.DEFAULT

    # -- the proxies -------------------------------------------------------------------------

    @cached_property
    def content(self) -> ContentProxy:
        from berth.proxy.content import ContentProxy

        return ContentProxy(self.connection)

    @cached_property
    def images(self) -> ImagesProxy:
        from berth.proxy.images import ImagesProxy

        return ImagesProxy(self.connection)

    @cached_property
    def containers(self) -> ContainersProxy:
        from berth.proxy.containers import ContainersProxy

        return ContainersProxy(self.connection)

    @cached_property
    def leases(self) -> LeasesProxy:
        from berth.proxy.leases import LeasesProxy

        return LeasesProxy(self.connection)

    @cached_property
    def namespaces(self) -> NamespacesProxy:
        from berth.proxy.namespaces import NamespacesProxy

        return NamespacesProxy(self.connection)

    @cached_property
    def diff(self) -> DiffProxy:
        from berth.proxy.diff import DiffProxy

        return DiffProxy(self.connection)

    @cached_property
    def events(self) -> EventsProxy:
        from berth.proxy.events import EventsProxy

        return EventsProxy(self.connection)

    @cached_property
    def transfer(self) -> TransferProxy:
        from berth.proxy.transfer import TransferProxy

        return TransferProxy(self.connection)

    def snapshotter(self, name: str) -> SnapshotterProxy:
        from berth.proxy.snapshots import SnapshotterProxy

        return SnapshotterProxy(self.connection, name)

    def version(self) -> Version:
        from berth.proxy.introspection import version

        return version(self.connection)

    # -- leases ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, expire: datetime.timedelta = datetime.timedelta(hours=1)) -> Iterator[str]:
        """Run the block under a new lease: what it stores or prepares is safe from the
        collector until the block ends (or, if this process dies, until ``expire``)."""
        until = datetime.datetime.now(datetime.UTC) + expire
        lease = self.leases.create(f"berth-{uuid.uuid4().hex[:16]}", {
            leases.LABEL_EXPIRE: until.strftime("%Y-%m-%dT%H:%M:%SZ")})
        previous, self.connection.lease_id = self.connection.lease_id, lease.id
        try:
            yield lease.id
        finally:
            self.connection.lease_id = previous
            with contextlib.suppress(errdefs.BerthError):
                self.leases.delete(lease.id)

    # -- tasks (until the tasks proxy: these still answer with the API's messages) ----------

    @cached_property
    def _tasks(self) -> Any:
        from berth.api.services.tasks.v1 import tasks_pb2_grpc

        return tasks_pb2_grpc.TasksStub(self.connection.channel)

    def create_task(self, container_id: str, *, stdin: str = "", stdout: str = "",
                    stderr: str = "", terminal: bool = False) -> int:
        """Create the container's task (its shim and init process, not yet started); the
        pid. Task creation starts a shim and runs the runtime: no client deadline."""
        from berth.api.services.tasks.v1 import tasks_pb2

        resp: tasks_pb2.CreateTaskResponse = self.connection.call(
            self._tasks.Create, tasks_pb2.CreateTaskRequest(
                container_id=container_id, stdin=stdin, stdout=stdout, stderr=stderr,
                terminal=terminal), timeout=None)
        return resp.pid

    def start_task(self, container_id: str, exec_id: str = "") -> int:
        from berth.api.services.tasks.v1 import tasks_pb2

        resp: tasks_pb2.StartResponse = self.connection.call(
            self._tasks.Start,
            tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id), timeout=None)
        return resp.pid

    def get_task(self, container_id: str, exec_id: str = "") -> Any:
        from berth.api.services.tasks.v1 import tasks_pb2

        resp: tasks_pb2.GetResponse = self.connection.call(
            self._tasks.Get, tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id))
        return resp.process

    def find_task(self, container_id: str) -> Any:
        """The container's task, or None when it has none."""
        try:
            return self.get_task(container_id)
        except errdefs.NotFound:
            return None

    def list_tasks(self, filter: str = "") -> list[Any]:
        from berth.api.services.tasks.v1 import tasks_pb2

        resp: tasks_pb2.ListTasksResponse = self.connection.call(
            self._tasks.List, tasks_pb2.ListTasksRequest(filter=filter))
        return list(resp.tasks)

    def kill_task(self, container_id: str, signal: int, *, exec_id: str = "",
                  all: bool = False) -> None:
        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.Kill, tasks_pb2.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all))

    def delete_task(self, container_id: str) -> None:
        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.Delete,
                             tasks_pb2.DeleteTaskRequest(container_id=container_id),
                             timeout=None)

    def wait_task(self, container_id: str, exec_id: str = "") -> Waiting[Any]:
        """Start waiting for a process to exit; call this *before* starting the process, so
        that an exit that comes quickly is not missed."""
        from berth.api.services.tasks.v1 import tasks_pb2

        return self.connection.future(
            self._tasks.Wait.future,
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id))

    def exec_process(self, container_id: str, exec_id: str, spec: bytes, *,
                     stdin: str = "", stdout: str = "", stderr: str = "",
                     terminal: bool = False) -> None:
        from google.protobuf import any_pb2

        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.Exec, tasks_pb2.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id,
            spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=spec), stdin=stdin,
            stdout=stdout, stderr=stderr, terminal=terminal), timeout=None)

    def delete_process(self, container_id: str, exec_id: str) -> None:
        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
            container_id=container_id, exec_id=exec_id))

    def resize_pty(self, container_id: str, width: int, height: int,
                   exec_id: str = "") -> None:
        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.ResizePty, tasks_pb2.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height))

    def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        from berth.api.services.tasks.v1 import tasks_pb2

        self.connection.call(self._tasks.CloseIO, tasks_pb2.CloseIORequest(
            container_id=container_id, exec_id=exec_id, stdin=True))

    def task_metrics(self, filters: Iterable[str] = ()) -> list[Any]:
        from berth.api.services.tasks.v1 import tasks_pb2

        resp: tasks_pb2.MetricsResponse = self.connection.call(
            self._tasks.Metrics, tasks_pb2.MetricsRequest(filters=list(filters)))
        return list(resp.metrics)

    def close(self) -> None:
        self.connection.close()
