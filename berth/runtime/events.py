"""The ttrpc endpoint shims forward their events to (``$TTRPC_ADDRESS``, at
``<grpc address>.ttrpc`` as containerd puts it): ``containerd.services.events.ttrpc.v1.Events``."""

from __future__ import annotations

from google.protobuf import empty_pb2

from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.events.exchange import Exchange
from berth.events.forward import forward
from berth.ttrpc import BackgroundLoop, RequestContext, Server

SERVICE = events_pb2.DESCRIPTOR.services_by_name["Events"]


class _Events:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    async def Forward(self, ctx: RequestContext,
                      request: events_pb2.ForwardRequest) -> empty_pb2.Empty:
        forward(self.exchange, request.envelope)
        return empty_pb2.Empty()


class EventsEndpoint:
    """Serves the Events service on ``path`` from ``loop`` until closed."""

    def __init__(self, loop: BackgroundLoop, path: str, exchange: Exchange) -> None:
        self._loop = loop
        self.path = path
        self._server = Server()
        self._server.register(SERVICE, _Events(exchange))
        loop.run(self._server.serve(path), timeout=10)

    def close(self) -> None:
        self._loop.run(self._server.shutdown(), timeout=15)
