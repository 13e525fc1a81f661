"""The daemon's client of a shim's ``containerd.task.v2.Task`` service, over ttrpc.

A typed stub: one method per RPC, named as the RPC and typed with its request and response
messages, so that every call to a shim is checked (mypy) for what it sends and gets back.
berthd serves gRPC from a thread pool, so the calls block the calling thread while they run on
a :class:`~berth.ttrpc.BackgroundLoop`.

Every call carries the task's namespace (``containerd-namespace-ttrpc``) and a timeout,
:data:`CALL_TIMEOUT` unless given (None waits as long as it takes: Wait). Errors are ttrpc's
(:mod:`berth.ttrpc.client`): the shim's own (NotFound, FailedPrecondition, ...) as Berth
errors, DeadlineExceeded after the timeout, Unavailable once the connection is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from berth import namespaces
from berth.api.runtime.task.v2 import shim_pb2 as api
from berth.ttrpc.client import BackgroundLoop, SyncClient

SERVICE = "containerd.task.v2.Task"
CALL_TIMEOUT = 30.0

M = TypeVar("M", bound=Message)


class TaskClient:
    """One shim's Task service, for tasks of one namespace. Thread-safe."""

    def __init__(self, client: SyncClient, namespace: str, address: str) -> None:
        self._client = client
        self._metadata = {namespaces.TTRPC_HEADER: namespace}
        self.namespace = namespace
        self.address = address

    @classmethod
    def connect(cls, path: str, namespace: str,
                loop: BackgroundLoop | None = None) -> TaskClient:
        """Unavailable if nothing answers at ``path``."""
        return cls(SyncClient.connect(path, loop=loop), namespace, path)

    def _call(self, method: str, request: Message, response: type[M],
              timeout: float | None) -> M:
        return self._client.call(SERVICE, method, request, response, metadata=self._metadata,
                                 timeout=timeout)

    # -- the RPCs --------------------------------------------------------------------------

    def State(self, request: api.StateRequest, *,
              timeout: float | None = CALL_TIMEOUT) -> api.StateResponse:
        return self._call("State", request, api.StateResponse, timeout)

    def Create(self, request: api.CreateTaskRequest, *,
               timeout: float | None = CALL_TIMEOUT) -> api.CreateTaskResponse:
        return self._call("Create", request, api.CreateTaskResponse, timeout)

    def Start(self, request: api.StartRequest, *,
              timeout: float | None = CALL_TIMEOUT) -> api.StartResponse:
        return self._call("Start", request, api.StartResponse, timeout)

    def Delete(self, request: api.DeleteRequest, *,
               timeout: float | None = CALL_TIMEOUT) -> api.DeleteResponse:
        return self._call("Delete", request, api.DeleteResponse, timeout)

    def Pids(self, request: api.PidsRequest, *,
             timeout: float | None = CALL_TIMEOUT) -> api.PidsResponse:
        return self._call("Pids", request, api.PidsResponse, timeout)

    def Pause(self, request: api.PauseRequest, *, timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Pause", request, Empty, timeout)

    def Resume(self, request: api.ResumeRequest, *,
               timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Resume", request, Empty, timeout)

    def Checkpoint(self, request: api.CheckpointTaskRequest, *,
                   timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Checkpoint", request, Empty, timeout)

    def Kill(self, request: api.KillRequest, *, timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Kill", request, Empty, timeout)

    def Exec(self, request: api.ExecProcessRequest, *,
             timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Exec", request, Empty, timeout)

    def ResizePty(self, request: api.ResizePtyRequest, *,
                  timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("ResizePty", request, Empty, timeout)

    def CloseIO(self, request: api.CloseIORequest, *,
                timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("CloseIO", request, Empty, timeout)

    def Update(self, request: api.UpdateTaskRequest, *,
               timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Update", request, Empty, timeout)

    def Wait(self, request: api.WaitRequest, *,
             timeout: float | None = CALL_TIMEOUT) -> api.WaitResponse:
        return self._call("Wait", request, api.WaitResponse, timeout)

    def Stats(self, request: api.StatsRequest, *,
              timeout: float | None = CALL_TIMEOUT) -> api.StatsResponse:
        return self._call("Stats", request, api.StatsResponse, timeout)

    def Connect(self, request: api.ConnectRequest, *,
                timeout: float | None = CALL_TIMEOUT) -> api.ConnectResponse:
        return self._call("Connect", request, api.ConnectResponse, timeout)

    def Shutdown(self, request: api.ShutdownRequest, *,
                 timeout: float | None = CALL_TIMEOUT) -> Empty:
        return self._call("Shutdown", request, Empty, timeout)

    # -- the connection ----------------------------------------------------------------------

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
