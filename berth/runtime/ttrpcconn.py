"""The daemon's ttrpc connection to one shim (``containerd.task.v2.Task``).

berthd serves gRPC from a thread pool; this wraps the asyncio ttrpc client in blocking calls.
Every call carries the task's namespace (``containerd-namespace-ttrpc``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory

from berth import namespaces
from berth.api.runtime.task.v2 import shim_pb2
from berth.ttrpc.client import BackgroundLoop, SyncClient

SERVICE = shim_pb2.DESCRIPTOR.services_by_name["Task"]
CALL_TIMEOUT = 30.0
_OUTPUTS = {m.name: message_factory.GetMessageClass(m.output_type) for m in SERVICE.methods}


class ShimConnection:
    def __init__(self, client: SyncClient, namespace: str, address: str) -> None:
        self._client = client
        self.namespace = namespace
        self.address = address

    @classmethod
    def connect(cls, path: str, namespace: str,
                loop: BackgroundLoop | None = None) -> ShimConnection:
        """Unavailable if nothing answers at ``path``."""
        return cls(SyncClient.connect(path, loop=loop), namespace, path)

    def call(self, method: str, request: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        """Call ``method`` on the shim; ``timeout`` None waits as long as it takes (Wait)."""
        return self._client.call(SERVICE.full_name, method, request, _OUTPUTS[method],
                                 metadata={namespaces.TTRPC_HEADER: self.namespace},
                                 timeout=timeout)

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in a thread of its own) if the shim hangs up or dies; not when
        the connection is closed from this side."""
        client = self._client.client

        async def watch() -> None:
            await client.wait_closed()
            if client.closed_by_peer:
                threading.Thread(target=callback, name="shim-lost", daemon=True).start()

        self._client.loop.loop.call_soon_threadsafe(
            lambda: self._client.loop.loop.create_task(watch()))

    def close(self) -> None:
        self._client.close()
