"""containerd.services.version.v1.Version."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from berth import CONTAINERD_API_VERSION, CONTAINERD_VERSION, __version__
from berth.api.services.version.v1 import version_pb2 as pb
from berth.api.services.version.v1 import version_pb2_grpc

API_VERSION = CONTAINERD_API_VERSION
VERSION = CONTAINERD_VERSION
REVISION = f"berth-{__version__}"


class VersionService(version_pb2_grpc.VersionServicer):
    def Version(self, request: empty_pb2.Empty,
                context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version=VERSION, revision=REVISION)
