"""What berthd says of itself: its version (the Version service)."""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.empty_pb2 import Empty

from berth.api.services.version.v1 import version_pb2, version_pb2_grpc
from berth.proxy.connection import Connection


class Version(NamedTuple):
    version: str
    revision: str


def version(conn: Connection) -> Version:
    resp: version_pb2.VersionResponse = conn.call(
        version_pb2_grpc.VersionStub(conn.channel).Version, Empty())
    return Version(resp.version, resp.revision)
