"""Showing a transfer's ``Progress`` stream (Transfer.Pull / Transfer.Push) to a person.

Two views of the same stream, one row per piece (``kind`` + descriptor digest):

* :class:`BarsView`, on a terminal: live rich progress bars with bytes, speed and time left;
* :class:`LinesView`, otherwise (logs, CI): a plain line whenever a piece's status changes, and
  for moving bytes at most one line per piece per ``interval`` seconds::

      layer sha256:1a2b3c4d5e6f… downloading 12.3 MiB/40.0 MiB
      layer sha256:1a2b3c4d5e6f… done

:func:`follow` drives a view over a stream and returns the transfer's final message (status
``done``, kind ``image``): the daemon's promise is that a successful transfer ends with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from berth import errdefs
from berth.cli import humanize
from berth.transfer.progress import Progress as Update

# Statuses during which offset/total count bytes on the move.
MOVING = frozenset({"downloading", "uploading"})
# Statuses after which the piece's bytes are all where they should be.
COMPLETE = frozenset({"verifying", "downloaded", "extracting", "exists", "mounted", "done"})
_STYLE = {"waiting": "dim", "resolving": "yellow", "downloading": "blue", "uploading": "blue",
          "verifying": "cyan", "downloaded": "cyan", "extracting": "cyan", "exists": "green",
          "mounted": "green", "done": "green"}


def _digest(msg: Update) -> str:
    return msg.descriptor.digest if msg.descriptor is not None else ""


def label(msg: Update) -> str:
    """``layer sha256:1a2b3c4d5e6f…``; the image by its name."""
    if msg.kind == "image":
        return f"image {msg.name}" if msg.name else "image"
    digest = _digest(msg)
    return f"{msg.kind} {digest[:19]}…" if len(digest) > 19 else f"{msg.kind} {digest}"


class View(Protocol):
    def update(self, msg: Update) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Line:
    status: str
    shown_at: float


class LinesView:
    """Plain lines to ``out``; ``clock`` is injectable so tests need not sleep."""

    def __init__(self, out: IO[str], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, str], _Line] = {}

    def update(self, msg: Update) -> None:
        if msg.kind == "image" and msg.status == "done":
            return  # the command reports the outcome itself
        key = (msg.kind, _digest(msg) if msg.kind != "image" else "")
        now = self.clock()
        line = self._seen.get(key)
        if line is not None and line.status == msg.status and (
                msg.status not in MOVING or now - line.shown_at < self.interval):
            return
        self._seen[key] = _Line(msg.status, now)
        text = f"{label(msg)} {msg.status}"
        if msg.status in MOVING and msg.total > 0:
            text += f" {humanize.size(msg.offset)}/{humanize.size(msg.total)}"
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        pass


class _StatusColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        status = str(task.fields.get("status", ""))
        return Text(status.ljust(11), style=_STYLE.get(status, ""))


class _WhileMoving(ProgressColumn):
    """Shows ``inner`` only while the piece's bytes are moving (speed and ETA of an ``exists``
    blob mean nothing)."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> Text:
        if task.fields.get("status") not in MOVING:
            return Text("")
        out = self.inner.render(task)
        return out if isinstance(out, Text) else Text(str(out))


class _PieceBytes(ProgressColumn):
    """Bytes done of total for pieces (blobs), nothing for the image's own row."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = DownloadColumn(binary_units=True)

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "image":
            return Text("")
        return self.inner.render(task)


class BarsView:
    """Live progress bars on a terminal console, one per piece; the image's row first."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            _StatusColumn(),
            BarColumn(bar_width=30),
            _PieceBytes(),
            _WhileMoving(TransferSpeedColumn()),
            _WhileMoving(TimeRemainingColumn()),
            console=console,
            transient=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self.progress.start()

    def update(self, msg: Update) -> None:
        key = (msg.kind, _digest(msg) if msg.kind != "image" else "")
        total = msg.total or (msg.descriptor.size if msg.descriptor is not None else 0) or None
        completed = float(total or 0) if msg.status in COMPLETE else float(msg.offset)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = self.progress.add_task(
                label(msg), total=None if msg.kind == "image" else total, status=msg.status,
                kind=msg.kind)
        if msg.kind == "image":
            if msg.name:
                self.progress.update(task, description=label(msg))
            if msg.status == "done":
                self.progress.update(task, total=1, completed=1, status=msg.status)
            else:
                self.progress.update(task, status=msg.status)
            return
        self.progress.update(task, total=total, completed=completed, status=msg.status)

    def close(self) -> None:
        self.progress.stop()


def view_for(console: Console, *, quiet: bool) -> View | None:
    """Bars on a terminal, lines elsewhere, nothing with ``--quiet``."""
    if quiet:
        return None
    if console.is_terminal:
        return BarsView(console)
    return LinesView(console.file)


def follow(stream: Iterable[Update], view: View | None) -> Update:
    """Show ``stream`` in ``view`` to its end; the final ``image``/``done`` update."""
    final: Update | None = None
    try:
        for msg in stream:
            if view is not None:
                view.update(msg)
            if msg.kind == "image" and msg.status == "done":
                final = msg
    finally:
        if view is not None:
            view.close()
    if final is None:
        raise errdefs.Internal("berthd ended the transfer without naming the image it made")
    return final
