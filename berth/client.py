"""A client for berthd's (containerd's) gRPC API, used by the ``berth`` CLI and by tests.

Every call carries the namespace header; failures come back as Berth's own errors
(:func:`berth.errdefs.from_grpc_code`), so callers never see raw gRPC exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from berth import errdefs, namespaces
from berth.api.services.images.v1 import images_pb2, images_pb2_grpc
from berth.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from berth.api.services.version.v1 import version_pb2_grpc
from berth.plugin.config import DEFAULT_ADDRESS

T = TypeVar("T")


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = namespaces.DEFAULT,
                 timeout: float = 30.0) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix:{address}")
        self.images = images_pb2_grpc.ImagesStub(self._channel)
        self.namespaces = namespace_pb2_grpc.NamespacesStub(self._channel)
        self.version = version_pb2_grpc.VersionStub(self._channel)

    def call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout,
                          metadata=((namespaces.GRPC_HEADER, self.namespace),))
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise errdefs.Unavailable(
                    f"cannot reach berthd at {self.address}: is it running? ({details})"
                ) from None
            raise errdefs.from_grpc_code(code, details or str(code)) from None

    def list_images(self, filters: list[str] | None = None) -> list[images_pb2.Image]:
        resp = self.call(self.images.List, images_pb2.ListImagesRequest(filters=filters or []))
        return list(resp.images)

    def delete_image(self, name: str, *, sync: bool = False) -> None:
        self.call(self.images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync))

    def list_namespaces(self) -> list[namespace_pb2.Namespace]:
        resp = self.call(self.namespaces.List, namespace_pb2.ListNamespacesRequest())
        return list(resp.namespaces)

    def close(self) -> None:
        self._channel.close()
