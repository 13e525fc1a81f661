"""A task's processes: the container's init process and the processes exec'd into it.

Both follow the runtime v2 lifecycle::

    created --start--> running --(exit)--> stopped --delete--> deleted
       |                  |  ^
       |                pause resume          (init only; an exec reads paused from its init)
       |                  v  |
       |                 paused
       +--delete (or exit)--> ...

A call in a state that does not allow it raises FailedPrecondition with containerd's words
("cannot start a running process"). The exit comes from the shim's reaper through
:meth:`Process.set_exited`, at any point, even in the middle of a call that awaits the runtime:
every transition checks that the process has not exited meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from berth import errdefs
from berth.shim.reaper import Exit, Reaper
from berth.shim.runc import Runc
from berth.shim.stdio import Console, ConsoleSocket, ProcessIO, StdioRequest

CREATED, RUNNING, STOPPED, PAUSED, PAUSING, DELETED = (
    "created", "running", "stopped", "paused", "pausing", "deleted")
IO_DRAIN_TIMEOUT = 2.0  # what containerd waits for a process's output copy at delete

_background: set[asyncio.Task[Any]] = set()


def in_background(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` without waiting for it (it must handle its own errors)."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass(frozen=True)
class RuntimeContext:
    """What every process of one container needs to drive the runtime."""

    runc: Runc
    reaper: Reaper
    namespace: str
    bundle: str


class Process:
    """What init and exec processes share: pid, stdio, exit status, waiting."""

    def __init__(self, process_id: str, stdio: StdioRequest, ctx: RuntimeContext) -> None:
        self.id = process_id
        self.stdio = stdio
        self.ctx = ctx
        self.pid = 0
        self.state = CREATED
        self.exit_status = 0
        self.exited_at: float | None = None
        self._exited = asyncio.Event()
        self.io: ProcessIO | None = None
        self.console: Console | None = None
        self._console_output: int | None = None  # until the console takes it

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def status(self) -> str:
        return self.state

    async def wait(self) -> None:
        await self._exited.wait()

    def set_exited(self, exit_: Exit) -> None:
        """Record the exit (from the reaper). Output readers get EOF when the copy of its
        output ends: once the process's stdio are closed everywhere."""
        if self.exited:
            return
        self.exit_status = exit_.status
        self.exited_at = exit_.at
        if self.state != DELETED:
            self.state = STOPPED
        self._exited.set()

    def _unblock_waiters(self) -> None:
        """End waits on a process that will never run (its start failed, or it was deleted
        before it started)."""
        if not self.exited:
            self.exited_at = self.exited_at or time.time()
            self._exited.set()

    async def start(self) -> None:
        raise NotImplementedError

    async def delete(self) -> None:
        raise NotImplementedError

    def resize(self, width: int, height: int) -> None:
        if self.console is not None:
            self.console.resize(width, height)

    def close_stdin(self) -> None:
        if self.io is not None:
            self.io.close_stdin()
        if self.console is not None:
            self.console.close_stdin()

    async def _setup_stdio(self) -> ConsoleSocket | None:
        if self.stdio.terminal:
            self.io, self._console_output = await ProcessIO.for_console(
                self.stdio, process_id=self.id, namespace=self.ctx.namespace,
                reaper=self.ctx.reaper)
            return ConsoleSocket()
        self.io = await ProcessIO.open(self.stdio, process_id=self.id,
                                       namespace=self.ctx.namespace, reaper=self.ctx.reaper)
        return None

    async def _run_with_console(self, command: asyncio.Future[None],
                                socket: ConsoleSocket | None) -> None:
        """Await a runtime command; with a console socket, take the pty master it sends
        meanwhile and start copying."""
        if socket is None:
            await command
            return
        receive = asyncio.ensure_future(socket.receive())
        try:
            both: set[asyncio.Future[Any]] = {command, receive}
            done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if command in done and command.exception() is not None:
                receive.cancel()
                await command  # raises
            master = await asyncio.wait_for(receive, 30.0)
            await command
        except BaseException:
            if receive.done() and not receive.cancelled() and receive.exception() is None:
                os.close(receive.result())
            receive.cancel()
            raise
        finally:
            socket.close()
        try:
            self.console = Console(master, self.stdio.stdin, self._console_output)
        except BaseException:
            os.close(master)
            raise
        self._console_output = None  # the console's now

    def _read_pid(self, path: str) -> int:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as err:
            raise errdefs.BerthError(
                f"failed to retrieve OCI runtime process pid from {path}: {err}") from None

    async def _close_io(self) -> None:
        if self._console_output is not None:
            with contextlib.suppress(OSError):
                os.close(self._console_output)
            self._console_output = None
        if self.console is not None:
            await self.console.drain(IO_DRAIN_TIMEOUT)
            self.console.close()
            self.console = None
        if self.io is not None:
            await self.io.close()
            self.io = None


class InitProcess(Process):
    """The container's first process; its lifecycle is the container's."""

    def __init__(self, container_id: str, stdio: StdioRequest, ctx: RuntimeContext, *,
                 no_pivot: bool = False, no_new_keyring: bool = False) -> None:
        super().__init__(container_id, stdio, ctx)
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self._pausing = False

    @property
    def pid_file(self) -> str:
        return os.path.join(self.ctx.bundle, "init.pid")

    def status(self) -> str:
        return PAUSING if self._pausing else self.state

    async def create(self) -> None:
        """``runc create``; afterwards :attr:`pid` is set and the process waits for start."""
        try:
            socket = await self._setup_stdio()
            stdio = self.io.fds if self.io is not None and socket is None \
                else (None, None, None)
            command = asyncio.ensure_future(self.ctx.runc.create(
                self.ctx.reaper, self.id, self.ctx.bundle, pid_file=self.pid_file, stdio=stdio,
                console_socket=socket.path if socket else "", no_pivot=self.no_pivot,
                no_new_keyring=self.no_new_keyring))
            await self._run_with_console(command, socket)
        except BaseException:
            await self._close_io()
            raise
        if self.io is not None:
            self.io.started()
        self.pid = self._read_pid(self.pid_file)

    async def start(self) -> None:
        if self.state != CREATED:
            raise errdefs.FailedPrecondition(f"cannot start a {self._state_word()} process")
        await self.ctx.runc.start(self.ctx.reaper, self.id)
        if self.state == CREATED:
            self.state = RUNNING

    async def delete(self) -> None:
        if self.state in (RUNNING, PAUSED) or self._pausing:
            raise errdefs.FailedPrecondition(f"cannot delete a {self._state_word()} process")
        if self.state == DELETED:
            raise errdefs.NotFound(f"process {self.id} is already deleted")
        await self._close_io()
        try:
            await self.ctx.runc.delete(self.ctx.reaper, self.id)
        except errdefs.BerthError as err:
            if "does not exist" not in str(err):
                raise errdefs.BerthError(f"failed to delete task: {err}") from None
        self.state = DELETED
        self._unblock_waiters()

    async def kill(self, sig: int, *, all_processes: bool = False) -> None:
        if self.state == DELETED:
            raise errdefs.NotFound("process already finished")
        await self.ctx.runc.kill(self.ctx.reaper, self.id, sig, all_processes=all_processes)

    async def pause(self) -> None:
        if self.state != RUNNING or self._pausing:
            raise errdefs.FailedPrecondition(f"cannot pause a {self._state_word()} container")
        self._pausing = True
        try:
            await self.ctx.runc.pause(self.ctx.reaper, self.id)
        finally:
            self._pausing = False
        if self.state == RUNNING:
            self.state = PAUSED

    async def resume(self) -> None:
        if self.state != PAUSED:
            raise errdefs.FailedPrecondition(f"cannot resume a {self._state_word()} container")
        await self.ctx.runc.resume(self.ctx.reaper, self.id)
        if self.state == PAUSED:
            self.state = RUNNING

    async def update(self, resources: bytes) -> None:
        if self.state in (STOPPED, DELETED):
            raise errdefs.FailedPrecondition("cannot update a stopped container")
        await self.ctx.runc.update(self.ctx.reaper, self.id, resources)

    def set_exited(self, exit_: Exit) -> None:
        was_paused = self.state == PAUSED
        super().set_exited(exit_)
        if was_paused:
            # A frozen cgroup would keep the rest of the container (and runc delete) stuck.
            in_background(self._resume_quietly())

    async def _resume_quietly(self) -> None:
        with contextlib.suppress(errdefs.BerthError):
            await self.ctx.runc.resume(self.ctx.reaper, self.id)

    def check_exec(self) -> None:
        if self.state in (PAUSED, STOPPED, DELETED) or self._pausing:
            raise errdefs.FailedPrecondition(f"cannot exec in a {self._state_word()} state")

    def _state_word(self) -> str:
        return self.status()


class ExecProcess(Process):
    """A process run in a running container with ``runc exec``."""

    def __init__(self, exec_id: str, stdio: StdioRequest, ctx: RuntimeContext,
                 init: InitProcess, spec: bytes) -> None:
        super().__init__(exec_id, stdio, ctx)
        self.init = init
        self.spec = spec

    @property
    def pid_file(self) -> str:
        return os.path.join(self.ctx.bundle, f"{self.id}.pid")

    def status(self) -> str:
        parent = self.init.status()
        if parent in (PAUSED, PAUSING):
            return parent
        return self.state

    async def start(self) -> None:
        if self.state != CREATED:
            raise errdefs.FailedPrecondition(f"cannot start a {self.state} process")
        self.init.check_exec()
        try:
            spec = json.loads(self.spec)
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise errdefs.InvalidArgument(f"exec {self.id}: invalid process spec: {err}") \
                from None
        spec["terminal"] = self.stdio.terminal
        process_file = self._write_spec(spec)
        try:
            socket = await self._setup_stdio()
            stdio = self.io.fds if self.io is not None and socket is None \
                else (None, None, None)
            command = asyncio.ensure_future(self.ctx.runc.exec(
                self.ctx.reaper, self.init.id, process_file, pid_file=self.pid_file,
                stdio=stdio, console_socket=socket.path if socket else ""))
            await self._run_with_console(command, socket)
            if self.io is not None:
                self.io.started()
            self.pid = self._read_pid(self.pid_file)
        except BaseException:
            await self._close_io()
            self._unblock_waiters()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(process_file)
        if self.state == CREATED:
            self.state = RUNNING

    def _write_spec(self, spec: dict[str, object]) -> str:
        path = os.path.join(self.ctx.bundle, f".exec-{self.id}-{os.getpid()}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        return path

    async def kill(self, sig: int) -> None:
        if self.pid == 0:
            raise errdefs.FailedPrecondition("process not created")
        if self.exited:
            raise errdefs.NotFound("process already finished")
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise errdefs.NotFound("process already finished") from None

    async def delete(self) -> None:
        if self.state in (RUNNING,):
            raise errdefs.FailedPrecondition("cannot delete a running process")
        if self.state == DELETED:
            raise errdefs.NotFound(f"process {self.id} is already deleted")
        await self._close_io()
        with contextlib.suppress(OSError):
            os.unlink(self.pid_file)
        self.state = DELETED
        self._unblock_waiters()


def signal_number(value: int) -> int:
    """A signal number from a request (0 probes); InvalidArgument outside the kernel's range."""
    if value < 0 or value >= signal.NSIG:
        raise errdefs.InvalidArgument(f"invalid signal {value}")
    return value
