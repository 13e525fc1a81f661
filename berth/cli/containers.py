"""``berth ps``, ``stop``, ``kill``, ``rm`` and ``logs``: containers and their tasks, nerdctl-like.

A container made by ``berth run`` carries labels the other commands read:

* ``berth/name``: its name (the id, when ``--name`` gave one);
* ``berth/stop-signal``: the image's ``StopSignal``, which ``berth stop`` sends first.

Labels are anyone's to write who can reach berthd, so none is ever taken as a host path: a
container's log file is always ``<log dir>/<namespace>/<id>.log`` (:func:`berth.cli.cio.log_path`).
(Berth once kept that path in a ``berth/log-path`` label; such a label is now ignored.)

A container is named on the command line by its id, or by a prefix of its id that no other
container shares. Its state is its task's: none (``Created``), created, running (``Up``),
paused, or stopped (``Exited (status)``), kept until ``berth rm`` or ``berth start``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from berth import errdefs
from berth.cli import cio, humanize
from berth.cli.state import err_console, state
from berth.client import Client
from berth.containers import Container
from berth.runtime.runtime import ProcessState, Status

LABEL_NAME = "berth/name"
LABEL_STOP_SIGNAL = "berth/stop-signal"

STATUS = Status
LIVE = (STATUS.RUNNING, STATUS.PAUSED, STATUS.PAUSING, STATUS.CREATED)

FORMATS = ("table", "json")


# -- finding containers ------------------------------------------------------------------------


def resolve(client: Client, ref: str) -> Container:
    """The container ``ref`` names: its id, or a prefix of exactly one container's id."""
    if not ref:
        raise errdefs.InvalidArgument("a container id or name must not be empty")
    try:
        return client.containers.get(ref)
    except errdefs.NotFound:
        pass
    except errdefs.InvalidArgument:  # not an identifier at all
        raise errdefs.NotFound(f"no such container: {ref}") from None
    found = [c for c in client.containers.list() if c.id.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if found:
        raise errdefs.InvalidArgument(
            f"{ref!r} is ambiguous: it begins {len(found)} container ids "
            f"({', '.join(c.id for c in found[:5])}{', ...' if len(found) > 5 else ''})")
    raise errdefs.NotFound(f"no such container: {ref}")


def name_of(c: Container) -> str:
    return c.labels.get(LABEL_NAME) or c.id


def log_path_of(c: Container) -> str:
    """Where ``c``'s output is kept: made from the namespace and its id, never from a label."""
    return cio.log_path(state.namespace, c.id)


def spec_of(c: Container) -> dict[str, Any]:
    try:
        spec = json.loads(c.spec.value) if c.spec is not None and c.spec.value else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return spec if isinstance(spec, dict) else {}


def parse_signal(text: str) -> int:
    """A signal by number (``9``) or name (``KILL``, ``SIGKILL``, ``sigkill``)."""
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
        raise errdefs.InvalidArgument(f"signal {text} is out of range (1 to {signal.NSIG - 1})")
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise errdefs.InvalidArgument(
            f"unknown signal {text!r} (use a name like TERM or KILL, or a number)") from None


def stop_signal_of(c: Container) -> int:
    text = c.labels.get(LABEL_STOP_SIGNAL, "")
    if text:
        with contextlib.suppress(errdefs.InvalidArgument):
            return parse_signal(text)
    return int(signal.SIGTERM)


def find_task(client: Client, container_id: str) -> ProcessState | None:
    """The state of the container's task (its init process), or None when it has none."""
    try:
        return client.tasks.task(container_id).state()
    except errdefs.NotFound:
        return None


def is_live(task: ProcessState | None) -> bool:
    return task is not None and task.status in LIVE


def for_each(refs: list[str], action: Any) -> None:
    """Run ``action(client, container)`` for every ref; a failure is reported on its own line
    and the others still run; exit status 1 if any failed (as docker does)."""
    client = state.client()
    failed = False
    for ref in refs:
        try:
            action(client, resolve(client, ref))
        except errdefs.BerthError as err:
            if len(refs) == 1:
                raise
            err_console.print(f"[red]berth:[/red] {escape(ref)}: {escape(str(err))}",
                              soft_wrap=True)
            failed = True
    if failed:
        raise typer.Exit(1)


# -- stopping and removing ---------------------------------------------------------------------


def stop_task(client: Client, c: Container, timeout: float) -> None:
    """Its stop signal, up to ``timeout`` seconds for the task to exit, then SIGKILL."""
    task = find_task(client, c.id)
    if task is None or task.status in (STATUS.STOPPED, STATUS.UNKNOWN):
        return
    handle = client.tasks.task(c.id)
    waiter = handle.waiter()
    try:
        if task.status == STATUS.CREATED:  # never started: nothing to ask nicely
            handle.kill(signal.SIGKILL, all_processes=True)
            waiter.result(30)
            return
        if timeout > 0:
            handle.kill(stop_signal_of(c))
            try:
                waiter.result(timeout)
                return
            except TimeoutError:
                pass
        handle.kill(signal.SIGKILL, all_processes=True)
        waiter.result(30)
    except errdefs.NotFound:  # gone meanwhile
        return
    except TimeoutError:
        raise errdefs.DeadlineExceeded(
            f"container {name_of(c)} did not stop, even after SIGKILL") from None
    finally:
        waiter.cancel()


def delete_task(client: Client, container_id: str) -> None:
    with contextlib.suppress(errdefs.NotFound):
        client.tasks.delete(container_id)


def remove(client: Client, c: Container, *, force: bool) -> None:
    """Its task (killed first with ``force``), the container, its snapshot and its log."""
    task = find_task(client, c.id)
    if is_live(task):
        if not force:
            raise errdefs.FailedPrecondition(
                f"container {name_of(c)} is running: stop it first, or use `berth rm -f`")
        stop_task(client, c, 0)
    if task is not None:
        delete_task(client, c.id)
    client.containers.delete(c.id)
    if c.snapshot_key and c.snapshotter:
        with contextlib.suppress(errdefs.NotFound):
            client.snapshotter(c.snapshotter).remove(c.snapshot_key)
    cio.remove_log(log_path_of(c))


# -- commands ----------------------------------------------------------------------------------


def _uptime(pid: int) -> float | None:
    """How long process ``pid`` of this host has been running (seconds), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        with open("/proc/uptime") as f:
            now = float(f.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _duration(seconds: float) -> str:
    """docker's human durations: ``Less than a second``, ``5 seconds``, ``About a minute``."""
    if seconds < 1:
        return "Less than a second"
    for unit, span in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    raise AssertionError("unreachable")


def status_text(task: ProcessState | None, now: float) -> str:
    if task is None or task.status == STATUS.CREATED:
        return "Created"
    if task.status == STATUS.STOPPED:
        exited = task.exited_at
        ago = humanize.age(max(0.0, now - exited / 1e9)) if exited > 0 else ""
        return f"Exited ({task.exit_status}) {ago}".rstrip()
    running = _uptime(task.pid) if task.pid else None
    up = f"Up {_duration(running)}" if running is not None else "Up"
    if task.status in (STATUS.PAUSED, STATUS.PAUSING):
        return f"{up} (Paused)"
    if task.status == STATUS.RUNNING:
        return up
    return "Unknown"


def _state_name(task: ProcessState | None) -> str:
    if task is None:
        return "created"
    return task.status.value


def _command(spec: dict[str, Any]) -> str:
    args = (spec.get("process") or {}).get("args") or []
    return shlex.join(str(a) for a in args)


def ps(
    all_: Annotated[bool, typer.Option(
        "--all", "-a", help="Show every container (default: running ones only).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only container ids.")] = False,
    no_trunc: Annotated[bool, typer.Option(
        "--no-trunc", help="Do not shorten ids and commands.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List containers: CONTAINER ID, IMAGE, COMMAND, CREATED, STATUS, NAMES."""
    if fmt not in FORMATS:
        raise errdefs.InvalidArgument(f"--format must be one of {', '.join(FORMATS)}")
    client = state.client()
    tasks = {task.id: st for task, st in client.tasks.states()}
    shown = [c for c in client.containers.list() if all_ or is_live(tasks.get(c.id))]
    shown.sort(key=lambda c: c.created_at, reverse=True)
    if quiet:
        for c in shown:
            print(c.id)
        return
    now = time.time()
    if fmt == "json":
        rows = []
        for c in shown:
            task = tasks.get(c.id)
            rows.append({
                "id": c.id, "name": name_of(c), "image": c.image,
                "command": _command(spec_of(c)),
                "created_at": humanize.rfc3339(c.created_at),
                "state": _state_name(task), "status": status_text(task, now),
                "pid": task.pid if task is not None else 0,
                "exit_code": task.exit_status if task is not None and
                task.status == STATUS.STOPPED else None,
                "runtime": c.runtime.name, "snapshotter": c.snapshotter,
                "snapshot_key": c.snapshot_key, "labels": dict(c.labels),
                "log_path": log_path_of(c),
            })
        print(json.dumps(rows, indent=2))
        return
    table = []
    for c in shown:
        command = _command(spec_of(c))
        if not no_trunc and len(command) > 20:
            command = command[:19] + "…"
        table.append((c.id if no_trunc else c.id[:12], c.image, json.dumps(command,
                      ensure_ascii=False),
                      humanize.age_since(c.created_at),
                      status_text(tasks.get(c.id), now), name_of(c)))
    humanize.table(("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"), table,
                   sys.stdout)


def stop(
    containers: Annotated[list[str], typer.Argument(metavar="CONTAINER...")],
    time_: Annotated[int, typer.Option(
        "--time", "-t", help="Seconds to wait after the stop signal before SIGKILL.")] = 10,
) -> None:
    """Stop running containers: the stop signal (the image's, else SIGTERM), then SIGKILL
    after the timeout."""
    if time_ < 0:
        raise errdefs.InvalidArgument("--time must not be negative")

    def act(client: Client, c: Container) -> None:
        stop_task(client, c, float(time_))
        print(name_of(c))

    for_each(containers, act)


def kill(
    containers: Annotated[list[str], typer.Argument(metavar="CONTAINER...")],
    signal_: Annotated[str, typer.Option(
        "--signal", "-s", help="The signal, by name or number.")] = "KILL",
) -> None:
    """Send a signal to the main process of running containers."""
    number = parse_signal(signal_)

    def act(client: Client, c: Container) -> None:
        task = find_task(client, c.id)
        if task is None or task.status not in (STATUS.RUNNING, STATUS.PAUSED,
                                                STATUS.PAUSING):
            raise errdefs.FailedPrecondition(f"container {name_of(c)} is not running")
        client.tasks.task(c.id).kill(number)
        print(name_of(c))

    for_each(containers, act)


def rm(
    containers: Annotated[list[str], typer.Argument(metavar="CONTAINER...")],
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Kill running containers first.")] = False,
) -> None:
    """Remove containers: their stopped task, the container, its root filesystem snapshot
    and its log file."""

    def act(client: Client, c: Container) -> None:
        remove(client, c, force=force)
        print(name_of(c))

    for_each(containers, act)


def _tail_offset(fd: int, lines: int) -> int:
    """Where the last ``lines`` lines of the file on ``fd`` begin."""
    size = os.fstat(fd).st_size
    if lines <= 0:
        return size
    pos, found = size, -1
    block = 8192
    while pos > 0:
        start = max(0, pos - block)
        data = os.pread(fd, pos - start, start)
        # A final newline ends the last line; it does not begin another.
        end = len(data) - 1 if pos == size and data.endswith(b"\n") else len(data)
        for i in range(end - 1, -1, -1):
            if data[i] == 0x0A:
                found += 1
                if found == lines - 1:
                    return start + i + 1
        pos = start
    return 0


def logs(
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new output until the container stops.")] = False,
    tail: Annotated[int | None, typer.Option(
        "--tail", "-n", help="Only the last N lines.")] = None,
) -> None:
    """Print a container's output (stdout and stderr, as one stream)."""
    client = state.client()
    c = resolve(client, container)
    path = log_path_of(c)
    out = cio.binary_stdout()
    opened = cio.read_log(path)
    if opened is None and not follow:
        return  # no output yet, or not made by `berth run`
    fd = -1 if opened is None else opened
    try:
        pos = _tail_offset(fd, tail) if fd >= 0 and tail is not None else 0

        def pump() -> bool:
            nonlocal pos, fd
            if fd < 0:
                opened = cio.read_log(path)
                if opened is None:
                    return False
                fd = opened
            moved = False
            while data := os.pread(fd, 65536, pos):
                out.write(data)
                pos += len(data)
                moved = True
            out.flush()
            return moved

        pump()
        if not follow:
            return
        last_check = 0.0
        while True:
            if pump():
                continue
            if time.monotonic() - last_check > 0.5:
                last_check = time.monotonic()
                task = find_task(client, c.id)
                if task is None or task.status not in (STATUS.RUNNING, STATUS.PAUSED,
                                                        STATUS.PAUSING, STATUS.CREATED):
                    pump()
                    return
            time.sleep(0.1)
    except KeyboardInterrupt:
        return
    finally:
        if fd >= 0:
            os.close(fd)
