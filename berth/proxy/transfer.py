"""Pulls and pushes that berthd does, over Berth's Transfer service
(``berth.services.transfer.v1``), watched as a stream of :class:`berth.transfer.progress.Progress`.

Credentials go with the request, by registry host: ``(username, password)``, or ``("", token)``
for an identity token, as docker's ``config.json`` keeps them. A successful transfer's last
update is the image (``kind`` image, ``status`` done, its ``name`` and target).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping

from berth.api.services.transfer.v1 import transfer_pb2 as pb
from berth.api.services.transfer.v1 import transfer_pb2_grpc
from berth.proxy.connection import Connection
from berth.proxy.convert import from_descriptor
from berth.transfer.progress import Progress

Credentials = Mapping[str, tuple[str, str]]


def _auth(auth: Credentials) -> dict[str, pb.RegistryAuth]:
    return {host: pb.RegistryAuth(username=user, password=secret) if user else
            pb.RegistryAuth(identity_token=secret) for host, (user, secret) in auth.items()}


def _updates(stream: Generator[pb.Progress, None, None]) -> Generator[Progress, None, None]:
    with contextlib.closing(stream):
        for msg in stream:
            yield Progress(msg.kind, msg.status,
                           from_descriptor(msg.descriptor) if msg.HasField("descriptor")
                           else None, msg.offset, msg.total, msg.name)


class TransferProxy:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = transfer_pb2_grpc.TransferStub(conn.channel)

    def pull(self, ref: str, *, platform: str = "", all_platforms: bool = False,
             plain_http: bool = False, auth: Credentials | None = None,
             snapshotter: str = "", unpack: bool = True) -> Generator[Progress, None, None]:
        """Pull ``ref`` (for ``platform``, os/arch[/variant], the daemon's own if empty) and,
        with ``unpack``, unpack it into ``snapshotter`` (overlayfs if empty). Closing the
        generator cancels the pull."""
        return _updates(self._conn.stream(self._stub.Pull, pb.PullRequest(
            ref=ref, platform=platform, all_platforms=all_platforms, plain_http=plain_http,
            auth=_auth(auth or {}), snapshotter=snapshotter, no_unpack=not unpack)))

    def push(self, name: str, *, ref: str = "", platform: str = "",
             all_platforms: bool = False, plain_http: bool = False,
             auth: Credentials | None = None) -> Generator[Progress, None, None]:
        """Push the stored image ``name`` (and what it references) to ``ref``, its own name
        if empty."""
        return _updates(self._conn.stream(self._stub.Push, pb.PushRequest(
            name=name, ref=ref, platform=platform, all_platforms=all_platforms,
            plain_http=plain_http, auth=_auth(auth or {}))))
