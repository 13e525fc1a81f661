"""Typed clients of berthd's gRPC API: each implements the same interface as the local object
it stands for, so code written against the interface runs in the daemon or beside it.

* ``content.ContentProxy``: a content ``Store`` (:mod:`berth.content.content`);
* ``snapshots.SnapshotterProxy``: a ``Snapshotter`` (:mod:`berth.snapshots.snapshotter`);
* ``diff.DiffProxy``: an ``Applier`` and a ``Comparer`` (:mod:`berth.diff.diff`);
* ``images.ImagesProxy``: an images ``Store`` (:mod:`berth.images.image`);
* ``containers.ContainersProxy``: a containers ``Store`` (:mod:`berth.containers.container`);
* ``leases.LeasesProxy``: a leases ``Manager`` (:mod:`berth.leases`);
* ``namespaces.NamespacesProxy``: a namespaces ``Store`` (:mod:`berth.namespaces`);
* ``tasks.TasksProxy``: a ``Runtime`` handing out ``Task`` objects (:mod:`berth.runtime.runtime`);
* ``events``, ``transfer``, ``introspection``: what berthd serves beyond those interfaces
  (subscribing to events, pulls and pushes the daemon does, its version).

They share a :class:`~berth.proxy.connection.Connection`: one channel, the namespace and lease
each call carries, and errors mapped back from status codes. No protobuf message crosses a
proxy's public surface. Modules are imported one by one (``from berth.proxy.content import
ContentProxy``), so a command pays only for the services it talks to.
"""
