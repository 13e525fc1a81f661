"""Tasks: containers running. :class:`Runtime` creates, finds and deletes them; :class:`Task` is
one of them, its init process and the processes exec'd into it (containerd's
``runtime.PlatformRuntime`` and ``runtime.Task``).

A task is made from a container record (its OCI spec, runtime and root filesystem snapshot: see
berth.containers) and takes the container's id. Tasks are namespaced: every method works in the
namespace bound for the caller (berth.namespaces). Every :class:`Task` method names a process
by ``exec_id``; the empty string is the task's init process.

The lifecycle, of the task's init and of each exec'd process alike::

    create / exec ──▶ CREATED ──start──▶ RUNNING ──exits (or is killed)──▶ STOPPED ──delete──▶
                                          ▲    │
                                    resume│    │pause (the whole task)
                                          │    ▼
                                          PAUSED

* :meth:`Runtime.create` makes the task and its init process (it has a pid, it has not run:
  CREATED), its stdio opened as :class:`IO` says. AlreadyExists if the container has a task.
* :meth:`Task.start` runs a created process and gives its pid. :meth:`Task.exec` adds a process
  under a new exec id (AlreadyExists if taken), created, not yet started.
* A process's exit shows in :meth:`Task.state` (STOPPED, exit status and time) and ends
  :meth:`Task.wait`; it is never reported before its start has returned.
* :meth:`Task.delete_process` removes a stopped exec'd process; :meth:`Runtime.delete`
  removes the task, once its init is stopped or was never started. Both give the process's
  :class:`Exit`. A deleted task is gone from :meth:`Runtime.get` and :meth:`Runtime.list` at
  once, and calls on a :class:`Task` object that outlived it fail with NotFound.
* A task outlives the daemon: a runtime finds its tasks again when it starts. A task whose
  runtime process (its shim) died is deleted on its behalf, its exit reported as 137.

The runtime's shims publish the task events (``/tasks/create``, ``/tasks/start``,
``/tasks/exit``, ``/tasks/delete``, ``/tasks/exec-added``, ``/tasks/paused``, ``/tasks/oom``
...) to the daemon's exchange; the runtime publishes ``/tasks/exit`` and ``/tasks/delete``
itself for a task whose shim died.

Errors (berth.errdefs): NotFound for an unknown task or exec id; AlreadyExists for a task or exec
id in use; FailedPrecondition for what a process's state forbids (starting it twice, deleting it
running, pausing a stopped task); InvalidArgument for malformed ids or options; DeadlineExceeded
or Unavailable when the process serving the task does not answer. :meth:`Runtime.states` and
:meth:`Runtime.stats_of` leave out (and log) the tasks that cannot answer, so that one stuck
task never hides the others.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from berth.containers import AnyValue
from berth.mount import Mount


class Status(enum.Enum):
    """A process's status; the values are containerd's names for them."""

    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


@dataclass(frozen=True)
class IO:
    """A process's stdio: each a path or URI (a FIFO, ``file://``, ``binary://``), empty for
    none. With ``terminal`` the process gets a pty, and ``stdout`` carries all its output."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class CreateOpts:
    """What a task is created with besides its container record."""

    rootfs: tuple[Mount, ...] = ()
    """The mounts that make the root filesystem; empty: those of the container's snapshot."""
    io: IO = field(default_factory=IO)
    runtime_options: AnyValue | None = None
    """Options for the runtime (runc's ``containerd.runc.v1.Options``); None: the
    container's."""
    runtime_path: str = ""
    """A shim binary to run instead of the one the container's runtime name maps to."""


@dataclass(frozen=True)
class ExecOpts:
    """A process to add to a task: its OCI process spec
    (``types.containerd.io/opencontainers/runtime-spec/1/Process``) and its stdio."""

    spec: AnyValue
    io: IO = field(default_factory=IO)


@dataclass(frozen=True)
class ProcessState:
    pid: int
    status: Status
    io: IO = field(default_factory=IO)
    exit_status: int = 0
    exited_at: int = 0
    """Nanoseconds since the epoch; 0 until the process exits."""


@dataclass(frozen=True)
class Exit:
    """How a process ended: ``exited_at`` in nanoseconds since the epoch (0 if unknown);
    ``pid`` 0 where the runtime does not say (:meth:`Task.wait`)."""

    status: int
    exited_at: int = 0
    pid: int = 0


@dataclass(frozen=True)
class ProcessInfo:
    """A process running in a task: its pid, and what its runtime says of it (runc's shims:
    ``containerd.runc.v1.ProcessDetails``, naming the exec id of an exec'd process)."""

    pid: int
    info: AnyValue | None = None


class Task(Protocol):
    """A container's task: see the module's description for the lifecycle and errors."""

    @property
    def id(self) -> str:
        """The container's id."""
        ...

    @property
    def namespace(self) -> str: ...

    @property
    def runtime(self) -> str:
        """The runtime's name (``io.containerd.runc.v2``); empty when no longer known (a
        task found again after its container record was deleted)."""
        ...

    @property
    def pid(self) -> int:
        """The init process's pid, once created."""
        ...

    def state(self, exec_id: str = "") -> ProcessState: ...

    def start(self, exec_id: str = "") -> int:
        """Run the created process; its pid."""
        ...

    def kill(self, signal: int, *, all_processes: bool = False, exec_id: str = "") -> None:
        """Signal the process; ``all_processes``: every process of the task (init only)."""
        ...

    def exec(self, exec_id: str, opts: ExecOpts) -> None:
        """Add a process (created, not started) under ``exec_id``, a new identifier
        (berth.identifiers): InvalidArgument otherwise."""
        ...

    def delete_process(self, exec_id: str) -> Exit:
        """Remove a stopped exec'd process (InvalidArgument for the init: delete the task)."""
        ...

    def resize_pty(self, width: int, height: int, exec_id: str = "") -> None: ...

    def close_io(self, exec_id: str = "", *, stdin: bool = True) -> None:
        """Close the process's stdin (its end of file), if ``stdin``."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def pids(self) -> list[ProcessInfo]:
        """Every process in the task's container."""
        ...

    def update(self, resources: AnyValue, annotations: Mapping[str, str] | None = None) -> None:
        """Change the running task's resources (an OCI ``LinuxResources``)."""
        ...

    def stats(self) -> AnyValue:
        """The task's cgroup statistics (``io.containerd.cgroups.v1.Metrics`` or ``v2``)."""
        ...

    def wait(self, exec_id: str = "") -> Exit:
        """Block until the process exits (no timeout: a task may run for days)."""
        ...


class Runtime(Protocol):
    """Creates, finds and deletes the tasks of the current namespace: see the module's
    description for the lifecycle and errors."""

    def create(self, container_id: str, opts: CreateOpts) -> Task:
        """The container's task, created (not started). NotFound without a container record;
        FailedPrecondition if it has no OCI spec."""
        ...

    def get(self, task_id: str) -> Task:
        """NotFound if there is no such task."""
        ...

    def list(self) -> builtins.list[Task]:
        """The namespace's tasks, by id."""
        ...

    def delete(self, task_id: str) -> Exit:
        """Remove the task (its init stopped or never started); its init's exit."""
        ...

    def states(self) -> builtins.list[tuple[Task, ProcessState]]:
        """The namespace's tasks with their init's state (those that cannot answer left
        out)."""
        ...

    def stats_of(self, tasks: Sequence[Task]) -> builtins.list[tuple[Task, AnyValue]]:
        """The statistics of each of ``tasks`` (those that cannot answer, or are gone, left
        out)."""
        ...
