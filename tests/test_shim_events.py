"""The shim's event publisher: a container's OOM kills, reported by the kernel as fast as it
can cause them, are queued once while one still waits to be sent, so that a shim serving
several containers never buries another container's exit behind them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from berth.api.events import task_pb2 as events
from berth.shim.events import OOM_TOPIC, Publisher


def test_oom_kills_of_one_container_are_queued_once(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, str]]:
        # Nobody listens (a daemon restarting): what is published waits in the queue.
        publisher = Publisher(f"unix://{tmp_path / 'events.sock'}", "ns")
        for _ in range(1000):
            publisher.publish(events.TaskOOM(container_id="noisy"))
        publisher.publish(events.TaskOOM(container_id="other"))
        publisher.publish(events.TaskExit(container_id="other", id="other", exit_status=3))
        queued = [(req.envelope.topic, oom) for req, oom in list(publisher._queue._queue)]
        if publisher._task is not None:
            publisher._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher._task
        return queued

    queued = asyncio.run(run())
    # One OOM per container and the exit (the sender may hold the first OOM already).
    assert queued[-1] == ("/tasks/exit", "")
    assert [oom for topic, oom in queued if topic == OOM_TOPIC] in (["noisy", "other"],
                                                                    ["other"])
