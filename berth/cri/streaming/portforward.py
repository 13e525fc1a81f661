"""Port-forward sessions (``portforward.k8s.io`` over SPDY), as the kubelet's streaming server
serves them.

For every connection it forwards, the client opens two streams with the same ``requestid``
header: ``streamtype: error`` (which it ends at once) and ``streamtype: data``, each with the
``port``. When both are there, berthd dials ``localhost:PORT`` inside the pod's network
namespace (``dial``) and copies both ways, with half-close: the client's end of the data stream
shuts the socket's sending side, the socket's end ends the data stream. A failure is written as
text on the error stream. Several connections run at once, each on its own pair; a pair not
complete within the stream creation timeout is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from berth import errdefs
from berth.cri.streaming.channels import Channel, SpdyConnection

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
STREAM_CREATION_TIMEOUT = 30.0
READ_SIZE = 1 << 16


@dataclass
class _Pair:
    port: int
    error: Channel | None = None
    data: Channel | None = None
    started: bool = False
    created: float = field(default=0.0)


class PortForward:
    def __init__(self, conn: SpdyConnection, sandbox_id: str,
                 dial: Callable[[int], socket.socket]) -> None:
        self.conn = conn
        self.sandbox_id = sandbox_id
        self.dial = dial
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        pairs: dict[str, _Pair] = {}
        try:
            while True:
                # An idle connection is the server's to close (stream_idle_timeout).
                opened = await self.conn.accept(timeout=None)
                if opened is None:
                    break  # the client left
                channel, headers = opened
                request = headers.first("requestid", "") or ""
                try:
                    port = int(headers.first("port", "") or "")
                    if not 0 < port < 65536:
                        raise ValueError(port)
                except ValueError:
                    await self._fail(channel, f"invalid port header {headers.first('port')!r}")
                    continue
                now = self._loop.time()
                for key in [k for k, p in pairs.items()
                            if not p.started and now - p.created > STREAM_CREATION_TIMEOUT]:
                    del pairs[key]
                pair = pairs.setdefault(request, _Pair(port, created=now))
                if channel.name == "error":
                    pair.error = channel
                elif channel.name == "data":
                    pair.data = channel
                else:
                    await self._fail(channel, f"invalid stream type {channel.name!r}")
                    continue
                if pair.error is not None and pair.data is not None and not pair.started:
                    pair.started = True
                    del pairs[request]
                    task = self._loop.create_task(self._forward(pair))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)  # their sockets closed before the session ends

    async def _fail(self, channel: Channel, message: str) -> None:
        await channel.write(message.encode())
        await channel.close()

    async def _forward(self, pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        try:
            sock = await self._loop.run_in_executor(None, self.dial, pair.port)
        except (OSError, errdefs.BerthError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            await self._fail(pair.error, f"error forwarding port {pair.port} to pod "
                                         f"{self.sandbox_id}, uid : {reason}")
            await pair.data.close()
            return
        sock.setblocking(False)
        try:
            await asyncio.gather(self._to_pod(pair.data, sock), self._from_pod(sock, pair.data))
        finally:
            sock.close()
            await pair.error.close()

    async def _to_pod(self, data: Channel, sock: socket.socket) -> None:
        while True:
            chunk = await data.read()
            if not chunk:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return
            try:
                await self._loop.sock_sendall(sock, chunk)
            except OSError:
                return

    async def _from_pod(self, sock: socket.socket, data: Channel) -> None:
        try:
            while True:
                try:
                    chunk = await self._loop.sock_recv(sock, READ_SIZE)
                except OSError:
                    break
                if not chunk:
                    break
                await data.write(chunk)
        finally:
            await data.close()
