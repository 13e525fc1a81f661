"""Starting processes with exactly the fds we mean them to have.

Kept free of asyncio and of slow imports: the shim's ``start`` uses it (see lean).
"""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # typing's own costs ``start`` 8 ms (see lean)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def spawn_process(
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    fds: Mapping[int, int] | None = None,
    env: Mapping[str, str] | None = None,
    setsid: bool = False,
) -> int:
    """posix_spawnp ``argv`` with exactly the given fds; its pid. The caller waits for it.

    Our own fds are all close-on-exec (Python's default), so the child gets only the fds
    named here: 0-2 (/dev/null where None) and ``fds`` (child fd -> our fd). Every signal
    starts with its default action and unblocked: Python ignores SIGPIPE, and whoever started
    us may have ignored others (a shell's background job ignores SIGQUIT); a container must
    inherit none of that.
    """
    import signal  # here: the shim's ``start`` only needs close_on_exec_all (see lean)

    resettable = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    wanted: dict[int, int | None] = {0: stdin, 1: stdout, 2: stderr, **(fds or {})}
    devnull = -1
    staged: list[int] = []
    try:
        actions: list[tuple[int, int, int]] = []
        for target, source in wanted.items():
            if source is None:
                if devnull < 0:
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                source = devnull
            # Stage every source above the targets first, so that no dup2 can clobber a
            # source that another target still needs (and dup2 always clears close-on-exec).
            high = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 64)
            staged.append(high)
            actions.append((os.POSIX_SPAWN_DUP2, high, target))
        return os.posix_spawnp(argv[0], list(argv),
                               dict(os.environ if env is None else env),
                               file_actions=actions, setsid=setsid,
                               setsigmask=(), setsigdef=resettable)
    finally:
        for fd in staged:
            os.close(fd)
        if devnull >= 0:
            os.close(devnull)


def close_on_exec_all(keep: Sequence[int] = ()) -> None:
    """Mark every fd above 2 close-on-exec, except ``keep``: fds this process inherited (from
    whoever started it) must not leak into the shim, runc or the container."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own fd, closed by now
                continue
