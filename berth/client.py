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
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from berth import errdefs, leases, namespaces
from berth.plugin.config import DEFAULT_ADDRESS
from berth.proxy.connection import Connection

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
    from berth.proxy.tasks import TasksProxy
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
    def tasks(self) -> TasksProxy:
        from berth.proxy.tasks import TasksProxy

        return TasksProxy(self.connection)

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

    def close(self) -> None:
        self.connection.close()
