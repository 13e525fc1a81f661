"""berth.services.transfer.v1.Transfer: pulls and pushes done by the daemon, with progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from berth.api.services.transfer.v1 import transfer_pb2 as pb
from berth.api.services.transfer.v1 import transfer_pb2_grpc
from berth.images import Image, platforms
from berth.images import Store as ImageStore
from berth.remotes.remotes import Resolver
from berth.services.convert import descriptor
from berth.services.server import stream_updates
from berth.transfer import ImagePusher, Progress, Puller, PullOptions

# (plain_http, {host: (username, secret)}) -> a resolver for one transfer
ResolverFactory = Callable[[bool, dict[str, tuple[str, str]]], Resolver]


def _auth(auth: dict[str, pb.RegistryAuth]) -> dict[str, tuple[str, str]]:
    return {host: (a.username, a.password) if not a.identity_token else ("", a.identity_token)
            for host, a in auth.items()}


def _progress(item: Progress | Image) -> pb.Progress:
    if isinstance(item, Image):
        return pb.Progress(kind="image", status="done", name=item.name,
                           descriptor=descriptor(item.target))
    msg = pb.Progress(kind=item.kind, status=item.status, offset=item.offset, total=item.total,
                      name=item.name)
    if item.descriptor is not None:
        msg.descriptor.CopyFrom(descriptor(item.descriptor))
    return msg


class TransferService(transfer_pb2_grpc.TransferServicer):
    def __init__(self, puller: Puller, pusher: ImagePusher, images: ImageStore,
                 resolvers: ResolverFactory) -> None:
        self.puller = puller
        self.pusher = pusher
        self.images = images
        self.resolvers = resolvers

    def Pull(self, request: pb.PullRequest,
             context: grpc.ServicerContext) -> Iterator[pb.Progress]:
        opts = PullOptions(
            platform=platforms.parse(request.platform) if request.platform else platforms.host(),
            all_platforms=request.all_platforms, unpack=not request.no_unpack,
            snapshotter=request.snapshotter or "overlayfs")
        resolver = self.resolvers(request.plain_http, _auth(dict(request.auth)))
        for item in stream_updates(
                lambda report: self.puller.pull(resolver, request.ref, opts, report)):
            yield _progress(item)

    def Push(self, request: pb.PushRequest,
             context: grpc.ServicerContext) -> Iterator[pb.Progress]:
        image = self.images.get(request.name)
        resolver = self.resolvers(request.plain_http, _auth(dict(request.auth)))
        plat = platforms.parse(request.platform) if request.platform else None
        for item in stream_updates(lambda report: self.pusher.push(
                resolver, image, request.ref or request.name, platform=plat,
                all_platforms=request.all_platforms, progress=report)):
            if isinstance(item, Progress):
                yield _progress(item)
