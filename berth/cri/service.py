"""runtime.v1 RuntimeService and ImageService: thin servicers over :class:`~berth.cri.runtime.
Runtime` and :class:`~berth.cri.images.ImageService`.

An RPC not written yet is the generated base class's, which raises ``NotImplementedError``:
the gRPC edge answers it UNIMPLEMENTED, as every other error through :mod:`berth.errdefs`.
"""

from __future__ import annotations

import grpc

from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.api.cri.runtime.v1 import api_pb2_grpc
from berth.cri.images import Auth, CRIImage, ImageService
from berth.cri.runtime import Runtime


def image_message(image: CRIImage) -> pb.Image:
    msg = pb.Image(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                   size=image.size, username=image.username)
    if image.uid is not None:
        msg.uid.value = image.uid
    return msg


class RuntimeServicer(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def Version(self, request: pb.VersionRequest,
                context: grpc.ServicerContext) -> pb.VersionResponse:
        version, name, runtime_version, api_version = self.runtime.version()
        return pb.VersionResponse(version=version, runtime_name=name,
                                  runtime_version=runtime_version,
                                  runtime_api_version=api_version)

    def Status(self, request: pb.StatusRequest,
               context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = [pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason,
                                          message=c.message)
                      for c in self.runtime.conditions()]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))


class ImageServicer(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService) -> None:
        self.images = images

    def PullImage(self, request: pb.PullImageRequest,
                  context: grpc.ServicerContext) -> pb.PullImageResponse:
        auth = None
        if request.HasField("auth"):
            a = request.auth
            auth = Auth(a.username, a.password, a.auth, a.server_address, a.identity_token)
        return pb.PullImageResponse(image_ref=self.images.pull(request.image.image, auth))

    def ImageStatus(self, request: pb.ImageStatusRequest,
                    context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        image = self.images.status(request.image.image)
        if image is None:
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=image_message(image))

    def ListImages(self, request: pb.ListImagesRequest,
                   context: grpc.ServicerContext) -> pb.ListImagesResponse:
        # containerd 1.6 ignores the filter too.
        return pb.ListImagesResponse(images=[image_message(i) for i in self.images.list()])

    def RemoveImage(self, request: pb.RemoveImageRequest,
                    context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        self.images.remove(request.image.image)
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                    context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        timestamp, mountpoint, used, inodes = self.images.fs_usage()
        usage = pb.FilesystemUsage(timestamp=timestamp,
                                   fs_id=pb.FilesystemIdentifier(mountpoint=mountpoint),
                                   used_bytes=pb.UInt64Value(value=used),
                                   inodes_used=pb.UInt64Value(value=inodes))
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
