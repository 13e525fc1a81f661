"""The Snapshotter interface and its lifecycle.

A snapshotter manages filesystem trees identified by string keys. Each snapshot has a kind:

* **active** — made by ``prepare(key, parent)``: a writable tree whose initial contents are those
  of ``parent`` (a committed snapshot's name, or '' for an empty tree). ``mounts(key)`` says how to
  mount it; the caller mounts, writes, unmounts.
* **committed** — made by ``commit(name, key)`` from an active snapshot, which stops existing under
  ``key``. Committed snapshots are immutable and may be parents.
* **view** — made by ``view(key, parent)``: a read-only tree of ``parent``. It cannot be committed.

Keys and committed names share one space: ``prepare``, ``view`` and ``commit`` raise
``AlreadyExists`` for a name in use. ``remove`` raises ``FailedPrecondition`` while the snapshot
has children, ``NotFound`` for an unknown key. ``commit`` of a key that is not active, or
``prepare`` on a parent that is not committed, raise ``NotFound``/``FailedPrecondition``.

Durability: after ``commit`` returns, the snapshot survives a crash. A crash in the middle of
``prepare``/``commit``/``remove`` leaves either the old or the new state; leftovers are removed by
``cleanup``. Labels are free-form, updated with field paths (``labels``, ``labels.<key>``).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from berth.mount import Mount


class Kind(enum.IntEnum):
    # Values are those of containerd.services.snapshots.v1.Kind.
    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass
class Info:
    name: str
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0


@dataclass
class Usage:
    size: int = 0  # bytes used on disk by this snapshot alone (not its parents)
    inodes: int = 0


class Snapshotter(abc.ABC):
    @abc.abstractmethod
    def stat(self, key: str) -> Info: ...

    @abc.abstractmethod
    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info: ...

    @abc.abstractmethod
    def usage(self, key: str) -> Usage: ...

    @abc.abstractmethod
    def mounts(self, key: str) -> list[Mount]:
        """How to mount an active snapshot or a view; FailedPrecondition for a committed one."""

    @abc.abstractmethod
    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    def remove(self, key: str) -> None: ...

    @abc.abstractmethod
    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Every snapshot matching any of ``filters`` (containerd filter syntax)."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove on-disk leftovers of interrupted operations and of removed snapshots."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (database handles)."""


@runtime_checkable
class Reparenting(Protocol):
    """An optional capability of snapshotters whose active snapshots hold only their own
    changes, independent of their parent (overlayfs: the upper directory); callers check for
    it with ``isinstance``.

    Such a snapshotter lets a caller prepare an active snapshot *without* a parent, fill it,
    and give it its parent afterwards, just before committing. This is what lets image layers
    unpack in parallel while the chain is still committed in order.
    """

    @abc.abstractmethod
    def reparent(self, key: str, parent: str) -> list[Mount]:
        """Make the committed snapshot ``parent`` the parent of the active snapshot ``key``,
        which must have been prepared without one; returns ``key``'s new mounts.
        NotFound for unknown snapshots; FailedPrecondition if ``key`` is not active, already
        has a parent, or ``parent`` is not committed."""
