"""The event exchange: publish, forward, subscribe with filters."""

from berth.events.exchange import Envelope, Exchange, Publisher

__all__ = ["Envelope", "Exchange", "Publisher"]
