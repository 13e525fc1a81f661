"""containerd.services.snapshots.v1.Snapshots over the namespaced snapshotters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import grpc
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc
from berth.metadata.snapshots import NamespacedSnapshotter
from berth.services.convert import batched, mounts, timestamp
from berth.snapshots.snapshotter import Info, Kind

LIST_BATCH = 100


def _info(i: Info) -> pb.Info:
    return pb.Info(name=i.name, parent=i.parent, kind=pb.Kind.Name(int(i.kind)), labels=i.labels,
                   created_at=timestamp(i.created_at), updated_at=timestamp(i.updated_at))


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, snapshotters: Mapping[str, NamespacedSnapshotter]) -> None:
        self.snapshotters = snapshotters

    def _get(self, name: str) -> NamespacedSnapshotter:
        if not name:
            raise errdefs.InvalidArgument("snapshotter argument missing: name one (e.g. "
                                          "overlayfs)")
        try:
            return self.snapshotters[name]
        except KeyError:
            raise errdefs.InvalidArgument(
                f"snapshotter {name!r} is not loaded; available: "
                f"{', '.join(sorted(self.snapshotters)) or 'none'}") from None

    def Prepare(self, request: pb.PrepareSnapshotRequest,
                context: grpc.ServicerContext) -> pb.PrepareSnapshotResponse:
        sn = self._get(request.snapshotter)
        return pb.PrepareSnapshotResponse(mounts=mounts(
            sn.prepare(request.key, request.parent, dict(request.labels))))

    def View(self, request: pb.ViewSnapshotRequest,
             context: grpc.ServicerContext) -> pb.ViewSnapshotResponse:
        sn = self._get(request.snapshotter)
        return pb.ViewSnapshotResponse(mounts=mounts(
            sn.view(request.key, request.parent, dict(request.labels))))

    def Mounts(self, request: pb.MountsRequest,
               context: grpc.ServicerContext) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=mounts(self._get(request.snapshotter).mounts(request.key)))

    def Commit(self, request: pb.CommitSnapshotRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._get(request.snapshotter).commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    def Remove(self, request: pb.RemoveSnapshotRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._get(request.snapshotter).remove(request.key)
        return empty_pb2.Empty()

    def Stat(self, request: pb.StatSnapshotRequest,
             context: grpc.ServicerContext) -> pb.StatSnapshotResponse:
        return pb.StatSnapshotResponse(info=_info(self._get(request.snapshotter).stat(request.key)))

    def Update(self, request: pb.UpdateSnapshotRequest,
               context: grpc.ServicerContext) -> pb.UpdateSnapshotResponse:
        i = request.info
        info = Info(i.name, Kind(i.kind), i.parent, dict(i.labels))
        return pb.UpdateSnapshotResponse(info=_info(
            self._get(request.snapshotter).update(info, request.update_mask.paths)))

    def List(self, request: pb.ListSnapshotsRequest,
             context: grpc.ServicerContext) -> Iterator[pb.ListSnapshotsResponse]:
        infos = map(_info, self._get(request.snapshotter).walk(request.filters))
        for batch in batched(infos, LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=batch)

    def Usage(self, request: pb.UsageRequest,
              context: grpc.ServicerContext) -> pb.UsageResponse:
        u = self._get(request.snapshotter).usage(request.key)
        return pb.UsageResponse(size=u.size, inodes=u.inodes)

    def Cleanup(self, request: pb.CleanupRequest,
                context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._get(request.snapshotter).cleanup()
        return empty_pb2.Empty()
