"""containerd.services.diff.v1.Diff over the local differ."""

from __future__ import annotations

import grpc

from berth.api.services.diff.v1 import diff_pb2 as pb
from berth.api.services.diff.v1 import diff_pb2_grpc
from berth.diff.local import LocalDiff
from berth.services.convert import descriptor, from_descriptor, from_mounts


class DiffService(diff_pb2_grpc.DiffServicer):
    def __init__(self, differ: LocalDiff) -> None:
        self.differ = differ

    def Apply(self, request: pb.ApplyRequest, context: grpc.ServicerContext) -> pb.ApplyResponse:
        applied = self.differ.apply(from_descriptor(request.diff), from_mounts(request.mounts))
        return pb.ApplyResponse(applied=descriptor(applied))

    def Diff(self, request: pb.DiffRequest, context: grpc.ServicerContext) -> pb.DiffResponse:
        desc = self.differ.compare(from_mounts(request.left), from_mounts(request.right),
                                   media_type=request.media_type, ref=request.ref,
                                   labels=dict(request.labels))
        return pb.DiffResponse(diff=descriptor(desc))
