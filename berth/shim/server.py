"""The shim process's event loop: ttrpc on the inherited socket, the reaper, the publisher.

It ends when the Task service's Shutdown finds no container left and none on its way (see
berth.shimgroups), when no task came within a minute of its start, or on SIGTERM/SIGINT
(the containers live on). Its log lines go to stderr, which ``start`` pointed at the bundle's
``log`` FIFO: a full FIFO drops lines instead of stalling the shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from berth.shim.reaper import Reaper, set_subreaper
from berth.shimcontract import LISTEN_FD, TTRPC_ADDRESS_ENV
from berth.shimgroups import Lock, joining
from berth.spawn import close_on_exec_all

log = logging.getLogger("berth.shim")

JOIN_RECHECK = 0.25  # seconds between looks at a task on its way to an otherwise idle shim
# A shim still without a task this long after it started was abandoned (its daemon died, or
# gave up on the task, before creating it there): it leaves as an idle one does.
UNUSED_EXIT = 60.0
JOIN_PATIENCE = 60.0  # how long an idle shim waits for a task on its way

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
    publisher = Publisher(os.environ.get(TTRPC_ADDRESS_ENV, ""), namespace)

    path = listener.getsockname()
    identity = _identity(path)
    namespace_dir = os.path.dirname(os.getcwd())  # ``start`` ran us in the first task's bundle

    def leave() -> None:
        # The socket's name goes first, before Shutdown answers: a task started again at
        # once (same id, same address) must find no live shim there and start a new one,
        # not reach this one as it leaves.
        if identity is not None and _identity(path) == identity:
            with contextlib.suppress(OSError):
                os.unlink(path)
        stop.set()

    waiting_since: dict[str, float] = {}  # tasks on their way here: since when
    idle_since: list[float] = []  # when the shim last found itself without a task
    linger = _linger()

    def leave_when_idle(released: str = "") -> None:
        """Shutdown (for the task ``released``) found no task here. A group shim where a task
        ran first lingers (``BERTH_SHIM_LINGER`` seconds) for a next task, which berthd joins
        to it without starting a shim (one whose tasks all failed before they ran does not:
        nothing half-made outlives a failed start); then it leaves, unless a task whose
        ``start`` chose this shim has yet to be created (for at most JOIN_PATIENCE): then it
        looks again shortly (see berth.shimgroups)."""
        if released:
            service.release(released, os.path.join(namespace_dir, released))
            idle_since.clear()  # idle from now: the linger starts again
        if service.busy():
            idle_since.clear()
            return  # a task came meanwhile
        now = time.monotonic()
        if not idle_since:
            idle_since.append(now)
        if service.ran and now - idle_since[0] < linger:
            loop.call_later(linger - (now - idle_since[0]), leave_when_idle)
            return
        if _identity(path) != identity:  # our socket's name is gone or another's: unreachable
            leave()
            return
        try:
            with Lock(namespace_dir, blocking=False) as lock:
                if lock.held and not _awaited(joining(namespace_dir, f"unix://{path}",
                                                      service.served())):
                    leave()
                    return
        except OSError as err:
            log.warning("cannot take the namespace's grouping lock (%s); trying again", err)
        loop.call_later(JOIN_RECHECK, leave_when_idle)

    def _awaited(pending: list[str]) -> list[str]:
        """Of the tasks on their way, those not waited for longer than JOIN_PATIENCE (one
        whose daemon gave up on it, or died, must not keep the shim forever)."""
        now = time.monotonic()
        for gone in set(waiting_since) - set(pending):
            del waiting_since[gone]
        awaited = [t for t in pending if now - waiting_since.setdefault(t, now) < JOIN_PATIENCE]
        if awaited:
            log.debug("staying for %s, on the way here", ", ".join(awaited))
        return awaited

    service = TaskService(namespace, reaper, publisher, on_idle_shutdown=leave_when_idle,
                          log_owner=shim_id)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, leave)
    server = Server()
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], service)
    await server.serve(listener)
    loop.call_later(UNUSED_EXIT, leave_when_idle)
    log.debug("serving on %s", path)
    await stop.wait()
    await server.shutdown()  # calls in progress (Shutdown's own answer) finish first
    await service.close()
    await publisher.close()
    reaper.close()


def _linger() -> float:
    """How long an idle shim of a namespace group waits for its next task (0 otherwise)."""
    from berth.shimcontract import LINGER_ENV
    from berth.shimgroups import by_namespace

    if not by_namespace():
        return 0.0
    try:
        return max(0.0, min(float(os.environ.get(LINGER_ENV, "0")), 3600.0))
    except ValueError:
        return 0.0


def _identity(path: object) -> tuple[int, int] | None:
    """(device, inode) of the socket file at ``path``: ours, or a successor's."""
    if not isinstance(path, str) or not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
