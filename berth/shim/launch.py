"""Starting a shim process for a task: what the shim binary's ``start`` does, callable by
berthd for its own shim.

:func:`start` takes the namespace's grouping lock (berth.shimgroups), picks the shim the task
joins, and when no shim serves that socket yet binds it and has a shim process serve it: forked
by the zygote (berth.shim.zygote), or a new interpreter of its own. It writes the bundle's
``address`` file and returns the address. Everything it needs comes as arguments (the bundle,
the environment the shim gets), never from the calling process's working directory or
environment, so that:

* the binary's ``start`` (berth.shim.main) calls it with its own, as a daemon ran it;
* berthd calls it in-process for Berth's shim (berth.runtime.manager), with the environment it
  would have given the binary, and saves a new interpreter per cold start (20-40 ms). berthd
  passes ``fallback=False``: when the zygote cannot be had, it runs the binary instead, since a
  new interpreter started from a daemon's thread would not have the bundle as its directory.

This module and those it imports are the only part of the shim package that berthd loads; they
import only cheap modules (see berth.shim.lean), since ``start`` runs on the path of every
container start.
"""

from __future__ import annotations

import _socket
import os
import sys

from berth import shimcontract as contract
from berth.shim.cmdline import LISTEN_FD
from berth.shim.lean import unix_socket
from berth.shim.zygote import Unanswered as Unanswered  # raised by start()
from berth.shimgroups import Lock, group_address

TYPE_CHECKING = False  # typing's own costs ``start`` 8 ms (see lean)
if TYPE_CHECKING:
    from collections.abc import Mapping


class NoZygote(Exception):
    """``fallback=False`` and the zygote could not fork the shim: nothing was started."""


def start(task_id: str, namespace: str, daemon_address: str, bundle: str,
          env: Mapping[str, str], *, debug: bool = False, shim_cgroup: str = "",
          group_size: int | None = None, fallback: bool = True) -> str:
    """The address of the shim serving the task in ``bundle``, started if need be.
    ``group_size``: namespace grouping's bound (None: from ``env``, as ``start`` has it; 0:
    none). Raises :class:`NoZygote` (``fallback=False`` only), OSError or RuntimeError, or
    :class:`Unanswered` (the zygote may have forked a shim: nothing is retried)."""
    if group_size is None:
        grouped = env.get(contract.GROUP_ENV) == contract.GROUP_BY_NAMESPACE
    else:
        grouped = group_size > 0
    with Lock(os.path.dirname(bundle), enabled=grouped):
        address = group_address(task_id, bundle, daemon_address, namespace, bool(shim_cgroup),
                                group_size=_group_size(env) if group_size is None and grouped
                                else (group_size or 0))
        path = address.removeprefix(contract.UNIX_SCHEME)
        sock = _listen(path)
        if sock is not None:
            flags = [f"-{contract.FLAG_NAMESPACE}", namespace, f"-{contract.FLAG_ID}", task_id,
                     f"-{contract.FLAG_ADDRESS}", daemon_address]
            if debug:
                flags.append(f"-{contract.FLAG_DEBUG}")
            _serve(flags, sock, path, bundle, env, shim_cgroup, fallback)
        _write_atomically(os.path.join(bundle, contract.ADDRESS_FILE), address)
    return address


def _group_size(env: Mapping[str, str]) -> int:
    try:
        return max(1, int(env.get(contract.GROUP_SIZE_ENV, contract.DEFAULT_GROUP_SIZE)))
    except ValueError:
        return contract.DEFAULT_GROUP_SIZE


def _write_atomically(path: str, data: str) -> None:
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}")
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def can_connect(path: str) -> bool:
    """Whether a shim serves ``path``. One too busy to accept within a second (its backlog
    full) is alive: better to join it than to take its socket."""
    probe = unix_socket()
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _listen(path: str) -> _socket.socket | None:
    """A listening socket at ``path``; None if a live shim already serves it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _attempt in range(2):
        sock = unix_socket()
        try:
            sock.bind(path)
        except OSError as err:
            sock.close()
            if err.errno != 98:  # EADDRINUSE
                raise
            if can_connect(path):
                return None
            os.unlink(path)  # a dead shim's socket
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(f"cannot bind {path}")


def python_command() -> list[str]:
    """How to run the shim process: this interpreter without site initialisation (which
    costs the long-running process memory and start-up time) but with today's import path."""
    import berth

    root = os.path.dirname(os.path.dirname(os.path.abspath(berth.__file__)))
    paths = [root, *[p for p in sys.path if p and os.path.isdir(p) and p != root]]
    bootstrap = (f"import sys; sys.path[:0] = {paths!r}; "
                 "from berth.shim.main import serve_main; sys.exit(serve_main(sys.argv[1:]))")
    return [sys.executable, "-I", "-S", "-c", bootstrap]


def _log_fd(bundle: str) -> int | None:
    """The bundle's ``log`` FIFO, opened read-write so that opening never blocks and writes
    cannot fail for want of a reader (they are dropped when it is full: see serve)."""
    import stat

    path = os.path.join(bundle, contract.LOG_FIFO)
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None


def _join_cgroup(pid: int, cgroup: str) -> None:
    """Move ``pid`` into ``cgroup`` in every hierarchy that has it (the shim_cgroup option)."""
    with open("/proc/self/mountinfo") as f:
        mountpoints = [line.split(" - ")[0].split()[4] for line in f
                       if " - cgroup " in line or " - cgroup2 " in line]
    joined = False
    for mountpoint in mountpoints:
        procs = os.path.join(mountpoint, cgroup.lstrip("/"), "cgroup.procs")
        if os.path.exists(procs):
            with open(procs, "w") as f:
                f.write(str(pid))
            joined = True
    if not joined:
        raise OSError(f"shim cgroup {cgroup} does not exist")


def _adjust_oom_score(pid: int) -> None:
    """As containerd does: the shim is a little likelier to be OOM-killed than its daemon
    (whose score we inherited), never less."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            score = int(f.read().strip())
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(min(score + 1, 1000)))
    except (OSError, ValueError):
        pass


def _fork_or_spawn(flags: list[str], sock: _socket.socket, log_fd: int | None, bundle: str,
                   env: Mapping[str, str], fallback: bool) -> int:
    """The shim process's pid: forked by the zygote, or (``fallback``, the zygote off or
    failing) a new interpreter. The zygote's own ``Unanswered`` always propagates."""
    python = python_command()
    if env.get(contract.ZYGOTE_ENV, "").lower() not in ("off", "0", "false", "no"):
        from berth.shim import zygote
        from berth.shimgroups import SOCKET_DIR

        try:
            return zygote.fork_shim(zygote.zygote_path(SOCKET_DIR), flags, cwd=bundle,
                                    env=dict(env), listen_fd=sock.fileno(), log_fd=log_fd,
                                    python=python)
        except (OSError, RuntimeError, ValueError) as err:
            if not fallback:
                raise NoZygote(str(err)) from err
    elif not fallback:
        raise NoZygote(f"{contract.ZYGOTE_ENV} is off")
    from berth.shim.spawn import spawn_process

    # (``start`` runs in the bundle: the new interpreter starts there too.)
    return spawn_process([*python, *flags], stderr=log_fd, fds={LISTEN_FD: sock.fileno()},
                         env=env, setsid=True)


def _serve(flags: list[str], sock: _socket.socket, path: str, bundle: str,
           env: Mapping[str, str], shim_cgroup: str, fallback: bool) -> None:
    log_fd = _log_fd(bundle)
    try:
        pid = _fork_or_spawn(flags, sock, log_fd, bundle, env, fallback)
        # Not waited for: it outlives us. (Our own exit hands it to init.)
        if shim_cgroup:
            _join_cgroup(pid, shim_cgroup)
        _adjust_oom_score(pid)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        sock.close()
        if log_fd is not None:
            os.close(log_fd)
