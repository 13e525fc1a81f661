"""containerd.services.images.v1.Images over the image store."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.services.images.v1 import images_pb2 as pb
from berth.api.services.images.v1 import images_pb2_grpc
from berth.images import Image
from berth.images import Store as ImageStore
from berth.services.convert import descriptor, from_descriptor, timestamp


def _image(i: Image) -> pb.Image:
    return pb.Image(name=i.name, labels=i.labels, target=descriptor(i.target),
                    created_at=timestamp(i.created_at), updated_at=timestamp(i.updated_at))


def _from_image(i: pb.Image) -> Image:
    return Image(name=i.name, target=from_descriptor(i.target), labels=dict(i.labels))


class ImagesService(images_pb2_grpc.ImagesServicer):
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def Get(self, request: pb.GetImageRequest,
            context: grpc.ServicerContext) -> pb.GetImageResponse:
        return pb.GetImageResponse(image=_image(self.store.get(request.name)))

    def List(self, request: pb.ListImagesRequest,
             context: grpc.ServicerContext) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[_image(i) for i in self.store.list(request.filters)])

    def Create(self, request: pb.CreateImageRequest,
               context: grpc.ServicerContext) -> pb.CreateImageResponse:
        if not request.image.name:
            raise errdefs.InvalidArgument("image name must not be empty")
        return pb.CreateImageResponse(image=_image(self.store.create(_from_image(request.image))))

    def Update(self, request: pb.UpdateImageRequest,
               context: grpc.ServicerContext) -> pb.UpdateImageResponse:
        image = self.store.update(_from_image(request.image), request.update_mask.paths)
        return pb.UpdateImageResponse(image=_image(image))

    def Delete(self, request: pb.DeleteImageRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.delete(request.name, sync=request.sync)
        return empty_pb2.Empty()


