"""One collector for every child's exit, as the shim is a subreaper.

The shim marks itself a child subreaper, so container processes (whose parent, ``runc``, exits
once they run) are re-parented to it. That makes ``waitpid(-1)`` the only correct way to wait:
whoever calls it gets *some* child's status. :class:`Reaper` is that one caller. On SIGCHLD it
reaps everything that has exited and hands each status to whoever asked for that pid:

* :meth:`Reaper.spawn` starts a helper (``runc``, a logging binary) and returns its exit as a
  future. The pid is registered in the same loop step that forks, so no exit is missed.
* :meth:`Reaper.watch` asks for the exit of a pid learnt later (a container's init or exec
  process, read from runc's pid file). A process can exit before its pid is known; such exits
  are kept (the last :data:`UNCLAIMED_LIMIT` of them) and handed over when ``watch`` comes.

Exit statuses are shell-style: the exit code, or 128 + the signal for a killed process.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from berth.spawn import spawn_process

PR_SET_CHILD_SUBREAPER = 36
UNCLAIMED_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Exit:
    pid: int
    status: int
    #: wall-clock seconds (time.time()) when the shim collected the exit
    at: float
    #: the same moment on the monotonic clock (to tell an exit from before a pid was reused)
    seen: float = 0.0


def exit_status(wait_status: int) -> int:
    """A waitpid() status as a shell exit status (128 + signal for a signalled process)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


def set_subreaper() -> None:
    """Make this process adopt its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Reaper:
    """Collects child exits for one event loop. Call :meth:`install` once, from the loop."""

    def __init__(self) -> None:
        self._waiters: dict[int, Callable[[Exit], None]] = {}
        self._unclaimed: collections.OrderedDict[int, Exit] = collections.OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler was in place

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def reap(self) -> None:
        """Collect every exited child now (the SIGCHLD handler; safe to call any time)."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._deliver(Exit(pid, exit_status(wait_status), time.time(), time.monotonic()))

    def _deliver(self, exit_: Exit) -> None:
        waiter = self._waiters.pop(exit_.pid, None)
        if waiter is not None:
            waiter(exit_)
            return
        self._unclaimed[exit_.pid] = exit_
        while len(self._unclaimed) > UNCLAIMED_LIMIT:
            self._unclaimed.popitem(last=False)

    def watch(self, pid: int, callback: Callable[[Exit], None], *, since: float) -> None:
        """Call ``callback`` once ``pid`` (a child of ours) exits, or now if it already has.

        ``since`` (time.monotonic()) is when the process came to be, at the latest (before the
        runc command that started it): an exit collected earlier is of another process that
        had the pid before (orphans a container leaves to the shim exit unclaimed, and pids
        are reused), and is dropped rather than taken for this one's.
        """
        exit_ = self._unclaimed.pop(pid, None)
        if exit_ is not None and exit_.seen >= since:
            callback(exit_)
        else:
            self._waiters[pid] = callback

    def forget(self, pid: int) -> None:
        self._waiters.pop(pid, None)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        fds: Mapping[int, int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[int, asyncio.Future[Exit]]:
        """Start ``argv`` (looked up on PATH); its pid and a future of its exit.

        ``stdin``/``stdout``/``stderr`` are fds (None: /dev/null); ``fds`` maps more fd numbers
        in the child to fds of ours. Nothing else is inherited. OSError (no such binary, ...)
        is raised here, before anything runs.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Exit] = loop.create_future()
        started = time.monotonic()
        pid = spawn_process(argv, stdin=stdin, stdout=stdout, stderr=stderr, fds=fds, env=env)

        def finished(exit_: Exit) -> None:
            if not done.done():
                done.set_result(exit_)

        self.watch(pid, finished, since=started)
        return pid, done
