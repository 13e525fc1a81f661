"""containerd.services.namespaces.v1.Namespaces over the namespace store."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from berth import namespaces
from berth.api.events import namespace_pb2 as events_pb
from berth.api.services.namespaces.v1 import namespace_pb2 as pb
from berth.api.services.namespaces.v1 import namespace_pb2_grpc
from berth.events import Publisher
from berth.metadata.namespaces import NamespaceStore
from berth.namespaces import Namespace


def _ns(n: Namespace) -> pb.Namespace:
    return pb.Namespace(name=n.name, labels=n.labels)


class NamespacesService(namespace_pb2_grpc.NamespacesServicer):
    def __init__(self, store: NamespaceStore, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher

    def _publish(self, name: str, topic: str, event: Message) -> None:
        # An event about a namespace is published in that namespace, as containerd does.
        with namespaces.use(name):
            self.publisher.publish(topic, event)

    def Get(self, request: pb.GetNamespaceRequest,
            context: grpc.ServicerContext) -> pb.GetNamespaceResponse:
        return pb.GetNamespaceResponse(namespace=_ns(self.store.get(request.name)))

    def List(self, request: pb.ListNamespacesRequest,
             context: grpc.ServicerContext) -> pb.ListNamespacesResponse:
        return pb.ListNamespacesResponse(namespaces=[_ns(n) for n in self.store.list()])

    def Create(self, request: pb.CreateNamespaceRequest,
               context: grpc.ServicerContext) -> pb.CreateNamespaceResponse:
        ns = self.store.create(request.namespace.name, dict(request.namespace.labels))
        self._publish(ns.name, "/namespaces/create",
                      events_pb.NamespaceCreate(name=ns.name, labels=ns.labels))
        return pb.CreateNamespaceResponse(namespace=_ns(ns))

    def Update(self, request: pb.UpdateNamespaceRequest,
               context: grpc.ServicerContext) -> pb.UpdateNamespaceResponse:
        ns = self.store.update(Namespace(request.namespace.name, dict(request.namespace.labels)),
                               request.update_mask.paths)
        self._publish(ns.name, "/namespaces/update",
                      events_pb.NamespaceUpdate(name=ns.name, labels=ns.labels))
        return pb.UpdateNamespaceResponse(namespace=_ns(ns))

    def Delete(self, request: pb.DeleteNamespaceRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.delete(request.name)
        self._publish(request.name, "/namespaces/delete",
                      events_pb.NamespaceDelete(name=request.name))
        return empty_pb2.Empty()
