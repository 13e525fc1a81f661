"""The shim process's event loop: ttrpc on the inherited socket, the reaper, the publisher.

It ends when the Task service's Shutdown finds no container left, or on SIGTERM/SIGINT (the
containers live on). Its log lines go to stderr, which ``start`` pointed at the bundle's
``log`` FIFO: a full FIFO drops lines instead of stalling the shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from berth.shim.main import LISTEN_FD
from berth.shim.reaper import Reaper, set_subreaper
from berth.shim.spawn import close_on_exec_all

log = logging.getLogger("berth.shim")

def _setup_logging(debug: bool) -> None:
    from berth.logfmt import LogfmtFormatter

    logging.raiseExceptions = False  # a full log FIFO must not print tracebacks
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def serve(namespace: str, shim_id: str, *, debug: bool = False) -> int:
    _setup_logging(debug)
    close_on_exec_all()
    try:
        listener = socket.socket(fileno=LISTEN_FD)
    except OSError as err:
        log.error("no listening socket on fd %d: %s", LISTEN_FD, err)
        return 1
    listener.set_inheritable(False)
    set_subreaper()
    try:
        asyncio.run(_serve(namespace, shim_id, listener))
    except Exception:
        log.exception("shim %s failed", shim_id)
        return 1
    return 0


async def _serve(namespace: str, shim_id: str, listener: socket.socket) -> None:
    from berth.api.runtime.task.v2 import shim_pb2
    from berth.shim.events import Publisher
    from berth.shim.service import TaskService
    from berth.ttrpc.server import Server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reaper = Reaper()
    reaper.install(loop)
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), namespace)

    path = listener.getsockname()
    identity = _identity(path)

    def leave() -> None:
        # The socket's name goes first, before Shutdown answers: a task started again at
        # once (same id, same address) must find no live shim there and start a new one,
        # not reach this one as it leaves.
        if identity is not None and _identity(path) == identity:
            with contextlib.suppress(OSError):
                os.unlink(path)
        stop.set()

    service = TaskService(namespace, reaper, publisher, on_idle_shutdown=leave,
                          log_owner=shim_id)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, leave)
    server = Server()
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], service)
    await server.serve(listener)
    log.debug("serving on %s", path)
    await stop.wait()
    await server.shutdown()  # calls in progress (Shutdown's own answer) finish first
    await service.close()
    await publisher.close()
    reaper.close()


def _identity(path: object) -> tuple[int, int] | None:
    """(device, inode) of the socket file at ``path``: ours, or a successor's."""
    if not isinstance(path, str) or not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
