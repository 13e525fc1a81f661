"""A snapshotter of berthd's, over its Snapshots service: a
:class:`berth.snapshots.snapshotter.Snapshotter`, named as the daemon loaded it (``overlayfs``,
``native``). The mounts it returns name paths on the daemon's host."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from berth import errdefs
from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc
from berth.mount import Mount
from berth.proxy.connection import Connection
from berth.proxy.convert import field_mask, from_mounts, from_timestamp
from berth.snapshots.snapshotter import Info, Kind, Snapshotter, Usage


def _info(i: pb.Info) -> Info:
    return Info(i.name, Kind(i.kind), i.parent, dict(i.labels), from_timestamp(i.created_at),
                from_timestamp(i.updated_at))


class SnapshotterProxy(Snapshotter):
    def __init__(self, conn: Connection, name: str) -> None:
        self._conn = conn
        self.name = name
        self._stub = snapshots_pb2_grpc.SnapshotsStub(conn.channel)

    def stat(self, key: str) -> Info:
        resp: pb.StatSnapshotResponse = self._conn.call(
            self._stub.Stat, pb.StatSnapshotRequest(snapshotter=self.name, key=key))
        return _info(resp.info)

    def exists(self, key: str) -> bool:
        """Whether ``key`` names a snapshot (Stat without NotFound)."""
        try:
            self.stat(key)
        except errdefs.NotFound:
            return False
        return True

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = pb.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=pb.Info(name=info.name, parent=info.parent, kind=pb.Kind.Name(int(info.kind)),
                         labels=info.labels),
            update_mask=field_mask(fieldpaths))
        resp: pb.UpdateSnapshotResponse = self._conn.call(self._stub.Update, req)
        return _info(resp.info)

    def usage(self, key: str) -> Usage:
        resp: pb.UsageResponse = self._conn.call(
            self._stub.Usage, pb.UsageRequest(snapshotter=self.name, key=key), timeout=None)
        return Usage(resp.size, resp.inodes)

    def mounts(self, key: str) -> list[Mount]:
        resp: pb.MountsResponse = self._conn.call(
            self._stub.Mounts, pb.MountsRequest(snapshotter=self.name, key=key))
        return from_mounts(resp.mounts)

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]:
        resp: pb.PrepareSnapshotResponse = self._conn.call(
            self._stub.Prepare, pb.PrepareSnapshotRequest(
                snapshotter=self.name, key=key, parent=parent, labels=labels or {}))
        return from_mounts(resp.mounts)

    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        resp: pb.ViewSnapshotResponse = self._conn.call(
            self._stub.View, pb.ViewSnapshotRequest(
                snapshotter=self.name, key=key, parent=parent, labels=labels or {}))
        return from_mounts(resp.mounts)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        # Committing syncs the snapshot's files to disk first: no client deadline.
        self._conn.call(self._stub.Commit, pb.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=labels or {}), timeout=None)

    def remove(self, key: str) -> None:
        self._conn.call(self._stub.Remove,
                        pb.RemoveSnapshotRequest(snapshotter=self.name, key=key))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        # Read whole before returning, so a bad filter fails the call itself.
        found = [_info(i)
                 for resp in self._conn.stream(self._stub.List, pb.ListSnapshotsRequest(
                     snapshotter=self.name, filters=list(filters)))
                 for i in resp.info]
        return iter(found)

    def cleanup(self) -> None:
        self._conn.call(self._stub.Cleanup, pb.CleanupRequest(snapshotter=self.name),
                        timeout=None)

    def close(self) -> None:
        """Nothing to release: the connection is its owner's to close."""
