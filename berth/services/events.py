"""containerd.services.events.v1.Events over the exchange."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2, empty_pb2

from berth import namespaces
from berth.api.services.events.v1 import events_pb2 as pb
from berth.api.services.events.v1 import events_pb2_grpc
from berth.clock import now_ns
from berth.events.exchange import Envelope, Exchange, validate_topic
from berth.events.forward import forward
from berth.services.convert import timestamp


def envelope(env: Envelope) -> pb.Envelope:
    # containerd's clients expect bare type URLs (no type.googleapis.com/ prefix).
    return pb.Envelope(timestamp=timestamp(env.timestamp), namespace=env.namespace,
                       topic=env.topic, event=any_pb2.Any(type_url=env.type_url, value=env.value))


class EventsService(events_pb2_grpc.EventsServicer):
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def Publish(self, request: pb.PublishRequest,
                context: grpc.ServicerContext) -> empty_pb2.Empty:
        validate_topic(request.topic)
        self.exchange.forward(Envelope(now_ns(), namespaces.current(), request.topic,
                                       request.event.type_url, request.event.value))
        return empty_pb2.Empty()

    def Forward(self, request: pb.ForwardRequest,
                context: grpc.ServicerContext) -> empty_pb2.Empty:
        forward(self.exchange, request.envelope)
        return empty_pb2.Empty()

    def Subscribe(self, request: pb.SubscribeRequest,
                  context: grpc.ServicerContext) -> Iterator[pb.Envelope]:
        alive = threading.Event()
        alive.set()
        context.add_callback(alive.clear)
        sub = self.exchange.subscribe(request.filters)
        for env in self.exchange.stream(sub, alive):
            yield envelope(env)
