"""Namespaces over berthd's Namespaces service: a :class:`berth.namespaces.Store`. (The
namespace a proxy's calls work *in* is the connection's business, not this store's.)"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from berth.api.services.namespaces.v1 import namespace_pb2 as pb
from berth.api.services.namespaces.v1 import namespace_pb2_grpc
from berth.namespaces import Namespace, Store
from berth.proxy.connection import Connection
from berth.proxy.convert import field_mask


def _namespace(n: pb.Namespace) -> Namespace:
    return Namespace(n.name, dict(n.labels))


class NamespacesProxy(Store):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = namespace_pb2_grpc.NamespacesStub(conn.channel)

    def create(self, name: str, lbls: dict[str, str] | None = None) -> Namespace:
        resp: pb.CreateNamespaceResponse = self._conn.call(
            self._stub.Create,
            pb.CreateNamespaceRequest(namespace=pb.Namespace(name=name, labels=lbls or {})))
        return _namespace(resp.namespace)

    def get(self, name: str) -> Namespace:
        resp: pb.GetNamespaceResponse = self._conn.call(
            self._stub.Get, pb.GetNamespaceRequest(name=name))
        return _namespace(resp.namespace)

    def list(self) -> builtins.list[Namespace]:
        resp: pb.ListNamespacesResponse = self._conn.call(
            self._stub.List, pb.ListNamespacesRequest())
        return [_namespace(n) for n in resp.namespaces]

    def update(self, ns: Namespace, fieldpaths: Sequence[str] = ()) -> Namespace:
        resp: pb.UpdateNamespaceResponse = self._conn.call(
            self._stub.Update, pb.UpdateNamespaceRequest(
                namespace=pb.Namespace(name=ns.name, labels=ns.labels),
                update_mask=field_mask(fieldpaths)))
        return _namespace(resp.namespace)

    def delete(self, name: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteNamespaceRequest(name=name))
