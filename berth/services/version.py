"""containerd.services.version.v1.Version."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from berth import __version__
from berth.api.services.version.v1 import version_pb2 as pb
from berth.api.services.version.v1 import version_pb2_grpc

# The containerd API line Berth serves, as semver with Berth's own version as build metadata,
# so clients that gate features on containerd's version parse it (ctr notes the mismatch).
API_VERSION = "1.6.20"
VERSION = f"{API_VERSION}+berth.{__version__}"
REVISION = f"berth-{__version__}"


class VersionService(version_pb2_grpc.VersionServicer):
    def Version(self, request: empty_pb2.Empty,
                context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version=VERSION, revision=REVISION)
