"""Images over berthd's Images service: an images ``Store`` (:mod:`berth.images.image`)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from berth import errdefs
from berth.api.services.images.v1 import images_pb2 as pb
from berth.api.services.images.v1 import images_pb2_grpc
from berth.images import Image, Store
from berth.proxy.connection import DEFAULT_TIMEOUT, Connection
from berth.proxy.convert import descriptor, field_mask, from_descriptor, from_timestamp


def _image(i: Image) -> pb.Image:
    return pb.Image(name=i.name, labels=i.labels, target=descriptor(i.target))


def _from_image(i: pb.Image) -> Image:
    return Image(i.name, from_descriptor(i.target), dict(i.labels),
                 from_timestamp(i.created_at), from_timestamp(i.updated_at))


class ImagesProxy(Store):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = images_pb2_grpc.ImagesStub(conn.channel)

    def get(self, name: str) -> Image:
        resp: pb.GetImageResponse = self._conn.call(self._stub.Get, pb.GetImageRequest(name=name))
        return _from_image(resp.image)

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Image]:
        resp: pb.ListImagesResponse = self._conn.call(
            self._stub.List, pb.ListImagesRequest(filters=builtins.list(filter_strings)))
        return [_from_image(i) for i in resp.images]

    def create(self, image: Image) -> Image:
        resp: pb.CreateImageResponse = self._conn.call(
            self._stub.Create, pb.CreateImageRequest(image=_image(image)))
        return _from_image(resp.image)

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        resp: pb.UpdateImageResponse = self._conn.call(self._stub.Update, pb.UpdateImageRequest(
            image=_image(image), update_mask=field_mask(fieldpaths)))
        return _from_image(resp.image)

    def delete(self, name: str, *, sync: bool = False) -> None:
        # With sync the daemon answers once the collector has run: no client deadline.
        self._conn.call(self._stub.Delete, pb.DeleteImageRequest(name=name, sync=sync),
                        timeout=None if sync else DEFAULT_TIMEOUT)

    def put(self, image: Image) -> Image:
        """Create ``image``, or point the existing image of that name at its target."""
        try:
            return self.create(image)
        except errdefs.AlreadyExists:
            return self.update(image, ["target"])
