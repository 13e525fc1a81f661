"""The metadata plugin's object: the database and every namespaced store built on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from berth.content.content import Store
from berth.events import Publisher
from berth.metadata.containers import ContainerStore
from berth.metadata.content import NamespacedContentStore
from berth.metadata.db import DB
from berth.metadata.gc import Collector
from berth.metadata.images import ImageStore
from berth.metadata.leases import LeaseManager
from berth.metadata.namespaces import NamespaceStore
from berth.metadata.snapshots import namespaced
from berth.snapshots.snapshotter import Snapshotter


class Metadata:
    """Owns ``<root>/meta.db`` and the stores that a namespace sees.

    Deletions call :meth:`collect`: at once with ``sync``, else through the scheduler that the
    GC plugin installs with :meth:`set_scheduler` (without one, only ``sync`` collects).
    """

    def __init__(self, root: str, content: Store, snapshotters: Mapping[str, Snapshotter],
                 publisher: Publisher) -> None:
        os.makedirs(root, exist_ok=True)
        self.db = DB(os.path.join(root, "meta.db"))
        self._trigger: Callable[[bool], None] | None = None
        self.content = NamespacedContentStore(self.db, content, publisher, self.collect)
        self.snapshotters = {
            name: namespaced(self.db, name, backend, publisher, self.collect)
            for name, backend in snapshotters.items()
        }
        self.images = ImageStore(self.db, publisher, self.collect)
        self.leases = LeaseManager(self.db)
        self.containers = ContainerStore(self.db, publisher, self.collect)
        self.namespaces = NamespaceStore(self.db)
        self.namespaces.register_owner("containers", "containers")
        self.collector = Collector(self.db, content, snapshotters)
        self.collector.add_root_source(self.containers.gc_roots)

    def set_scheduler(self, trigger: Callable[[bool], None]) -> None:
        self._trigger = trigger

    def collect(self, sync: bool) -> None:
        if self._trigger is not None:
            self._trigger(sync)
        elif sync:
            self.collector.collect()

    def close(self) -> None:
        self.db.close()
