"""The event exchange.

Publishers hand it protobuf event messages with a topic (``/images/create``); it stamps them with
the time and the current namespace and delivers them to every subscriber whose filters match.
Subscribers read from a queue bounded both in events (:data:`QUEUE_EVENTS`) and in bytes
(:data:`QUEUE_BYTES`): a subscriber that stops reading loses the events that do not fit (it is
told nothing; the daemon logs it), but never slows publishers down nor makes the daemon hold
more than that for it. An event larger than :data:`MAX_EVENT_SIZE` is refused at publish time
with ``ResourceExhausted``.

Filters use containerd's syntax over the fields ``topic``, ``namespace`` and ``event.<field>``
(the event message's own fields, e.g. ``event.name``).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from berth import errdefs, filters, namespaces
from berth.clock import now_ns

log = logging.getLogger(__name__)

QUEUE_EVENTS = 1024
"""Events a subscriber may have waiting before newer ones are dropped for it."""

MAX_EVENT_SIZE = 4 << 20
"""The largest event payload accepted (4 MiB): ttrpc's message limit, so every event a shim can
forward fits, and well under the gRPC limit (16 MiB) its envelope is sent to subscribers in.
Real events are a few hundred bytes."""

QUEUE_BYTES = 16 << 20
"""Bytes a subscriber may have waiting (16 MiB, four of the largest events) before newer events
are dropped for it: without it, :data:`QUEUE_EVENTS` large events would pin gigabytes."""


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


def _size(env: Envelope) -> int:
    """What an envelope is counted as in a subscriber's queue: its payload and its strings."""
    return len(env.value) + len(env.topic) + len(env.namespace) + len(env.type_url)


class Subscription:
    """A subscriber's queue, bounded by ``max_events`` and ``max_bytes``."""

    def __init__(self, exchange: Exchange, flt: filters.Filter, *,
                 max_events: int = QUEUE_EVENTS, max_bytes: int = QUEUE_BYTES) -> None:
        self._exchange = exchange
        self.filter = flt
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._queue: collections.deque[tuple[Envelope, int]] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self.pending_bytes = 0
        self.dropped = 0

    def offer(self, env: Envelope, size: int) -> int:
        """Queue ``env`` (counted as ``size`` bytes) unless either bound would be passed.
        Returns 0 if it was queued, else how many events this subscriber has lost so far."""
        with self._ready:
            if (len(self._queue) >= self.max_events
                    or self.pending_bytes + size > self.max_bytes):
                self.dropped += 1
                return self.dropped
            self._queue.append((env, size))
            self.pending_bytes += size
            self._ready.notify()
        return 0

    def get(self, timeout: float) -> Envelope | None:
        """The oldest waiting event, waiting up to ``timeout`` seconds; None if there is none."""
        with self._ready:
            if not self._queue and not self._ready.wait_for(lambda: bool(self._queue), timeout):
                return None
            env, size = self._queue.popleft()
            self.pending_bytes -= size
        return env

    @property
    def waiting(self) -> int:
        """Events in the queue now."""
        return len(self._queue)

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
        if len(env.value) > MAX_EVENT_SIZE:
            raise errdefs.ResourceExhausted(
                f"event {env.type_url or '(no type)'} on {env.topic} is {len(env.value)} bytes, "
                f"over the limit of {MAX_EVENT_SIZE} bytes for one event")
        size = _size(env)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if not sub.filter.match(functools.partial(_adapt, env)):
                continue
            dropped = sub.offer(env, size)
            if dropped == 1 or (dropped and dropped % 1000 == 0):
                log.warning("event subscriber too slow (%d events, %d bytes waiting; limits %d "
                            "events, %d bytes): dropped %d events", sub.waiting,
                            sub.pending_bytes, sub.max_events, sub.max_bytes, dropped)
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
