"""``berth stats``: CPU, memory and process counts of running containers, from their cgroups
(Tasks.Metrics; the shim answers with ``io.containerd.cgroups.v1.Metrics`` or
``io.containerd.cgroups.v2.Metrics``).

CPU % is the CPU time a container used between two samples over the wall time between them
(100 % = one CPU busy). MEM USAGE is what its cgroup charges minus inactive page cache (as
docker shows it); LIMIT is its memory limit, or the host's memory when it has none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from berth import errdefs
from berth.cli import humanize
from berth.cli.containers import STATUS, name_of, resolve
from berth.cli.state import console, state
from berth.client import Client
from berth.containers import AnyValue

if TYPE_CHECKING:
    from rich.table import Table

INTERVAL = 1.0
NO_STREAM_INTERVAL = 0.5
HEADERS = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")
FORMATS = ("table", "json")


@dataclass
class Sample:
    id: str
    at_ns: int  # when it was taken
    cpu_ns: int  # CPU time used so far
    memory: int
    limit: int
    pids: int


def host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def decode(task_id: str, at: int, data: AnyValue) -> Sample | None:
    """The numbers of one task's statistics taken at ``at``; None for a type Berth does not
    know."""
    from berth.proxy.tasks import cgroup_stats  # here: every berth command loads this module

    stats = cgroup_stats(data)
    if stats is None:
        return None
    host = host_memory()
    usage, inactive, limit = stats.memory, stats.inactive_file, stats.limit
    return Sample(task_id, at, stats.cpu_ns, usage - inactive if inactive < usage else usage,
                  limit if 0 < limit < host or not host else host, stats.pids)


def sample(client: Client, ids: list[str] | None) -> dict[str, Sample]:
    """The running (or paused) tasks' numbers, of ``ids`` or all."""
    live = [task for task, st in client.tasks.states() if st.status in (
        STATUS.RUNNING, STATUS.PAUSED, STATUS.PAUSING) and (ids is None or task.id in ids)]
    out = {}
    for task, data in client.tasks.stats_of(live):
        s = decode(task.id, time.time_ns(), data)
        if s is not None:
            out[s.id] = s
    return out


def _row(now: Sample, before: Sample | None, names: dict[str, str]) -> dict[str, Any]:
    cpu: float | None = None
    if before is not None and now.at_ns > before.at_ns:
        cpu = max(0, now.cpu_ns - before.cpu_ns) / (now.at_ns - before.at_ns) * 100
    return {"id": now.id, "name": names.get(now.id, now.id), "cpu_percent": cpu,
            "memory_usage": now.memory, "memory_limit": now.limit,
            "memory_percent": now.memory / now.limit * 100 if now.limit else None,
            "pids": now.pids}


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    cpu = "--" if r["cpu_percent"] is None else f"{r['cpu_percent']:.2f}%"
    mem_pct = "--" if r["memory_percent"] is None else f"{r['memory_percent']:.2f}%"
    return (r["id"][:12], r["name"], cpu,
            f"{humanize.size(r['memory_usage'])} / {humanize.size(r['memory_limit'])}", mem_pct,
            str(r["pids"]))


def _rich_table(rows: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for h in HEADERS:
        table.add_column(h, no_wrap=True)
    for r in rows:
        table.add_row(*_cells(r))
    return table


def stats(
    containers: Annotated[list[str] | None, typer.Argument(
        metavar="[CONTAINER...]", help="Which containers (default: every running one).")
    ] = None,
    no_stream: Annotated[bool, typer.Option(
        "--no-stream", help="One sample and exit, instead of a live table.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show running containers' CPU, memory and process counts (live on a terminal)."""
    if fmt not in FORMATS:
        raise errdefs.InvalidArgument(f"--format must be one of {', '.join(FORMATS)}")
    client = state.client()
    names: dict[str, str] = {}
    ids: list[str] | None = None
    if containers:
        ids = []
        for ref in containers:
            c = resolve(client, ref)
            ids.append(c.id)
            names[c.id] = name_of(c)
    else:
        names = {c.id: name_of(c) for c in client.containers.list()}
    previous = sample(client, ids)
    if ids is not None:
        missing = [i for i in ids if i not in previous]
        if missing:
            raise errdefs.FailedPrecondition(
                f"container {', '.join(names.get(i, i) for i in missing)} is not running")

    def rows(now: dict[str, Sample]) -> list[dict[str, Any]]:
        order = ids if ids is not None else sorted(now, key=lambda i: names.get(i, i))
        return [_row(now[i], previous.get(i), names) for i in order if i in now]

    def emit(current: list[dict[str, Any]]) -> None:
        if fmt == "json":
            print(json.dumps(current, indent=2), flush=True)
        else:
            humanize.table(HEADERS, [_cells(r) for r in current], sys.stdout)
            sys.stdout.flush()

    try:
        if no_stream:
            time.sleep(NO_STREAM_INTERVAL)
            emit(rows(sample(client, ids)))
            return
        if fmt == "table" and console.is_terminal:
            from rich.live import Live

            with Live(_rich_table(rows(previous)), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(INTERVAL)
                    current = sample(client, ids)
                    live.update(_rich_table(rows(current)), refresh=True)
                    previous = current
        while True:
            time.sleep(INTERVAL)
            current = sample(client, ids)
            emit(rows(current))
            if fmt == "table":
                print(flush=True)
            previous = current
    except KeyboardInterrupt:
        return
