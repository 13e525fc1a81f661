"""Task events, forwarded to the daemon as containerd's shims do.

Each event is wrapped in an ``Envelope`` (timestamp, namespace, topic, the event as an ``Any``
whose type URL is the bare message name, e.g. ``containerd.events.TaskExit``) and sent with the
ttrpc call ``containerd.services.events.ttrpc.v1.Events/Forward`` to the socket the daemon named
in ``$TTRPC_ADDRESS``, with the namespace in the ``containerd-namespace-ttrpc`` metadata.

:class:`Publisher` sends one event at a time, in the order they were published (a task's exit
must never overtake its start). A failed send is retried after 1 s, 2 s, ... up to
:data:`MAX_ATTEMPTS` times, like the Go shim's requeue, then dropped; events behind it wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from berth import namespaces

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from berth.api.services.ttrpc.events.v1.events_pb2 import ForwardRequest
    from berth.ttrpc.client import Client

log = logging.getLogger("berth.shim")

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
MAX_ATTEMPTS = 5
OOM_TOPIC = "/tasks/oom"
SEND_TIMEOUT = 5.0

TOPICS = {
    "containerd.events.TaskCreate": "/tasks/create",
    "containerd.events.TaskStart": "/tasks/start",
    "containerd.events.TaskOOM": OOM_TOPIC,
    "containerd.events.TaskExit": "/tasks/exit",
    "containerd.events.TaskDelete": "/tasks/delete",
    "containerd.events.TaskExecAdded": "/tasks/exec-added",
    "containerd.events.TaskExecStarted": "/tasks/exec-started",
    "containerd.events.TaskPaused": "/tasks/paused",
    "containerd.events.TaskResumed": "/tasks/resumed",
    "containerd.events.TaskCheckpointed": "/tasks/checkpointed",
}


def topic(event: Message) -> str:
    return TOPICS[event.DESCRIPTOR.full_name]


def envelope(event: Message, namespace: str, at: float | None = None) -> ForwardRequest:
    """The ``ForwardRequest`` carrying ``event``."""
    from berth.api.services.ttrpc.events.v1 import events_pb2

    request = events_pb2.ForwardRequest()
    env = request.envelope
    env.timestamp.FromNanoseconds(int((time.time() if at is None else at) * 1e9))
    env.namespace = namespace
    env.topic = topic(event)
    env.event.type_url = event.DESCRIPTOR.full_name
    env.event.value = event.SerializeToString()
    return request


class Publisher:
    """Forwards events to ``address`` (a unix socket path; empty: events are dropped).

    :meth:`publish` never blocks; :meth:`close` sends what is queued (up to a deadline).
    A container's TaskOOM is queued once while one is still waiting to be sent: the kernel
    reports OOM kills as fast as a container can cause them, and a shim serving several
    containers must not let one bury the others' exits under them (the daemon only needs to
    know that the container ran out of memory).
    """

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        # Each request with the container of its TaskOOM ("" for any other event).
        self._queue: asyncio.Queue[tuple[ForwardRequest, str]] = asyncio.Queue()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._oom_queued: set[str] = set()  # containers with a TaskOOM waiting in the queue

    def publish(self, event: Message) -> None:
        if not self.address:
            return
        oom = ""
        if topic(event) == OOM_TOPIC:
            oom = str(getattr(event, "container_id", ""))
            if oom in self._oom_queued:
                return
            self._oom_queued.add(oom)
        self._queue.put_nowait((envelope(event, self.namespace), oom))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            request, oom = await self._queue.get()
            self._oom_queued.discard(oom)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    await self._send(request)
                    break
                except Exception as err:  # any failure: the daemon may be restarting
                    await self._disconnect()
                    if attempt == MAX_ATTEMPTS:
                        log.error("dropping event %s after %d attempts: %s",
                                  request.envelope.topic, attempt, err)
                    else:
                        await asyncio.sleep(attempt)
            self._queue.task_done()

    async def _send(self, request: ForwardRequest) -> None:
        from google.protobuf import empty_pb2

        if self._client is None:
            from berth.ttrpc.client import Client

            self._client = await Client.connect(self.address)
        await self._client.call(EVENTS_SERVICE, "Forward", request, empty_pb2.Empty,
                                metadata={namespaces.TTRPC_HEADER: self.namespace},
                                timeout=SEND_TIMEOUT)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()
