"""Events that reach the daemon already in containerd's ``Envelope``: from shims over ttrpc
(``containerd.services.events.ttrpc.v1.Events/Forward``, see berth.runtime.events) and from
clients over gRPC (``containerd.services.events.v1.Events/Forward``, see berth.services.events).
Both services carry the same message; :func:`forward` is where either enters the exchange."""

from __future__ import annotations

from typing import Protocol

from google.protobuf.any_pb2 import Any
from google.protobuf.timestamp_pb2 import Timestamp

from berth import errdefs
from berth.clock import from_timestamp, now_ns
from berth.events.exchange import Envelope, Exchange


class EnvelopeMessage(Protocol):
    """containerd's ``Envelope``, as either Events service's generated message has it."""

    @property
    def timestamp(self) -> Timestamp: ...
    @property
    def namespace(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def event(self) -> Any: ...


def forward(exchange: Exchange, env: EnvelopeMessage) -> None:
    """Deliver a forwarded event as it was stamped (now, when it carries no time).
    InvalidArgument without a namespace; the exchange's own checks follow (topic, namespace,
    size)."""
    if not env.namespace:
        raise errdefs.InvalidArgument("forwarded event must carry its namespace")
    exchange.forward(Envelope(from_timestamp(env.timestamp) or now_ns(), env.namespace,
                              env.topic, env.event.type_url, env.event.value))
