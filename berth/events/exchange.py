"""The event exchange.

Publishers hand it protobuf event messages with a topic (``/images/create``); it stamps them with
the time and the current namespace and delivers them to every subscriber whose filters match.
Subscribers read from a bounded queue: a subscriber that stops reading loses events (it is told
nothing), but never slows publishers down.

Filters use containerd's syntax over the fields ``topic``, ``namespace`` and ``event.<field>``
(the event message's own fields, e.g. ``event.name``).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from berth import errdefs, filters, namespaces
from berth.metadata.db import now_ns

log = logging.getLogger(__name__)

_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class Envelope:
    timestamp: int  # nanoseconds since the epoch
    namespace: str
    topic: str
    type_url: str  # the bare message name, e.g. containerd.events.ImageCreate
    value: bytes
    message: Message | None = None  # the decoded event, when published in-process


class Publisher(Protocol):
    def publish(self, topic: str, event: Message) -> None: ...


def validate_topic(topic: str) -> None:
    if not topic.startswith("/") or len(topic) < 2 or topic.endswith("/"):
        raise errdefs.InvalidArgument(
            f"event topic {topic!r} is invalid: it must look like /images/create"
        )


class Subscription:
    def __init__(self, exchange: Exchange, flt: filters.Filter) -> None:
        self._exchange = exchange
        self.filter = flt
        self.queue: queue.Queue[Envelope] = queue.Queue(maxsize=_QUEUE_SIZE)
        self.dropped = 0

    def get(self, timeout: float) -> Envelope | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._exchange._unsubscribe(self)


class Exchange:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def publish(self, topic: str, event: Message) -> None:
        """Publish ``event`` in the current namespace."""
        validate_topic(topic)
        self.forward(Envelope(
            timestamp=now_ns(),
            namespace=namespaces.current(),
            topic=topic,
            type_url=event.DESCRIPTOR.full_name,
            value=event.SerializeToString(),
            message=event,
        ))

    def forward(self, env: Envelope) -> None:
        """Deliver an already stamped envelope (from a shim, or from publish)."""
        validate_topic(env.topic)
        namespaces.validate(env.namespace)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if not sub.filter.match(functools.partial(_adapt, env)):
                continue
            try:
                sub.queue.put_nowait(env)
            except queue.Full:
                sub.dropped += 1
                if sub.dropped == 1 or sub.dropped % 1000 == 0:
                    log.warning("event subscriber too slow, dropped %d events", sub.dropped)
        log.debug("event topic=%s namespace=%s type=%s", env.topic, env.namespace, env.type_url)

    def subscribe(self, filter_strings: Sequence[str] = ()) -> Subscription:
        sub = Subscription(self, filters.parse(filter_strings))
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def stream(self, sub: Subscription, alive: threading.Event | None = None,
               poll: float = 0.5) -> Iterator[Envelope]:
        """Yield a subscription's envelopes until ``alive`` is cleared (if given)."""
        try:
            while alive is None or alive.is_set():
                env = sub.get(poll)
                if env is not None:
                    yield env
        finally:
            sub.close()


def _adapt(env: Envelope, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    if path[0] == "topic":
        return env.topic, True
    if path[0] == "namespace":
        return env.namespace, True
    if path[0] == "event" and len(path) > 1 and env.message is not None:
        msg: object = env.message
        for part in path[1:]:
            if isinstance(msg, Message) and part in msg.DESCRIPTOR.fields_by_name:
                msg = getattr(msg, part)
            elif hasattr(msg, "get"):  # a labels map
                value = msg.get(part)
                if value is None:
                    return "", False
                msg = value
            else:
                return "", False
        return str(msg), True
    return "", False
