"""Starting a task's Berth shim: what the shim binary's ``start`` does, shared with berthd,
which starts its own shim without running the binary; and the client side of the shims' fork
server (the zygote, berth.shim.zygote).

:func:`start` takes the namespace's grouping lock (berth.shimgroups), picks the shim the task
joins, and when no shim serves that socket yet binds it and has a shim process serve it: forked
by the zygote, or a new interpreter of its own. It writes the bundle's ``address`` file and
returns the address. Everything it needs comes as arguments (the bundle, the environment the
shim gets), never from the calling process's working directory or environment, so that:

* the binary's ``start`` (berth.shim.main) calls it with its own, as a daemon ran it;
* berthd calls it in-process for Berth's shim (berth.runtime.manager), with the environment it
  would have given the binary, and saves a new interpreter per cold start (20-40 ms). berthd
  passes ``fallback=False``: when the zygote cannot be had, it runs the binary instead, since a
  new interpreter started from a daemon's thread would not have the bundle as its directory.

The zygote's protocol (one request, one answer, see berth.shim.zygote for the whole contract):
a dict ``{"argv": [...shim flags...], "env": {...}, "cwd": BUNDLE, "umask": N, "rlimits":
{resource: [soft, hard]}}`` in :mod:`marshal`'s format (the same interpreter is on both ends,
and json's import costs ``start`` 5 ms) after its length (4 bytes, big-endian), with the shim's
listening socket, and optionally its log fd, attached (SCM_RIGHTS). The answer is ``{"pid":
N}`` or ``{"error": "..."}``, the same way. A zygote that took a request but gave no answer may
have forked the shim: :class:`Unanswered`, never retried.

Below the shim package (which berthd never imports) and cheap to import: ``start`` runs on the
path of every container start (see berth.shim.lean). The shim process's own code is not here.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys
import time

from berth import shimcontract as contract
from berth.shimcontract import LISTEN_FD
from berth.shimgroups import SOCKET_DIR, Lock, group_address, sha256_hex

TYPE_CHECKING = False  # typing's own costs ``start`` 8 ms (see berth.shim.lean)
if TYPE_CHECKING:
    import socket
    from collections.abc import Mapping, Sequence
    from typing import Any

ZYGOTE_FLAG = "--berth-shim-zygote"
CONNECT_TIMEOUT = 5.0  # a new zygote imports everything first
_MAX_MESSAGE = 1 << 20  # an environment can be large


def unix_socket() -> _socket.socket:
    """A unix stream socket, close-on-exec (``_socket``'s, not ``socket``'s: see lean)."""
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)


# -- starting a task's shim ---------------------------------------------------------------------


class NoZygote(Exception):
    """``fallback=False`` and the zygote could not fork the shim: nothing was started."""


def start(task_id: str, namespace: str, daemon_address: str, bundle: str,
          env: Mapping[str, str], *, debug: bool = False, shim_cgroup: str = "",
          group_size: int | None = None, fallback: bool = True) -> tuple[str, bool]:
    """The address of the shim serving the task in ``bundle``, and whether it was started
    for it (False: the task joins a running shim).
    ``group_size``: namespace grouping's bound (None: from ``env``, as ``start`` has it; 0:
    none). Raises :class:`NoZygote` (``fallback=False`` only), OSError or RuntimeError, or
    :class:`Unanswered` (the zygote may have forked a shim: nothing is retried)."""
    if group_size is None:
        by_namespace = env.get(contract.GROUP_ENV) == contract.GROUP_BY_NAMESPACE
        group_size = _group_size(env) if by_namespace else 0
    with Lock(os.path.dirname(bundle), enabled=group_size > 0):
        address = group_address(task_id, bundle, daemon_address, namespace, bool(shim_cgroup),
                                group_size=group_size)
        path = address.removeprefix(contract.UNIX_SCHEME)
        sock = _listen(path)
        if sock is not None:
            flags = [f"-{contract.FLAG_NAMESPACE}", namespace, f"-{contract.FLAG_ID}", task_id,
                     f"-{contract.FLAG_ADDRESS}", daemon_address]
            if debug:
                flags.append(f"-{contract.FLAG_DEBUG}")
            _serve(flags, sock, path, bundle, env, shim_cgroup, fallback)
        _write_atomically(os.path.join(bundle, contract.ADDRESS_FILE), address)
    return address, sock is not None


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
        try:
            return fork_shim(zygote_path(SOCKET_DIR), flags, cwd=bundle,
                             env=dict(env), listen_fd=sock.fileno(), log_fd=log_fd,
                             python=python)
        except (OSError, RuntimeError, ValueError) as err:
            if not fallback:
                raise NoZygote(str(err)) from err
    elif not fallback:
        raise NoZygote(f"{contract.ZYGOTE_ENV} is off")
    from berth.spawn import spawn_process

    # (``start`` runs in the bundle: the new interpreter starts there too.)
    return spawn_process([*python, *flags], stderr=log_fd, fds={LISTEN_FD: sock.fileno()},
                         env=env, setsid=True)


def _serve(flags: list[str], sock: _socket.socket, path: str, bundle: str,
           env: Mapping[str, str], shim_cgroup: str, fallback: bool) -> None:
    log_fd = _log_fd(bundle)
    try:
        pid = _fork_or_spawn(flags, sock, log_fd, bundle, env, fallback)
        # Not waited for: it outlives us. (A fork from the zygote is not our child; a new
        # interpreter is ``start``'s, handed to init when ``start`` exits.)
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


# -- the zygote's client side ---------------------------------------------------------------


def _berth_root() -> str:
    import berth

    return os.path.dirname(os.path.dirname(os.path.abspath(berth.__file__)))


def identity() -> str:
    """What the zygote's code is: the interpreter, and every shim source file's stat."""
    root = _berth_root()
    parts = [f"{sys.executable}\0{sys.version}\0{root}\0{os.getuid()}".encode()]
    try:
        with open("/proc/self/cgroup", "rb") as f:
            parts.append(f.read())
        for ns in sorted(os.listdir("/proc/self/ns")):
            parts.append(os.readlink(f"/proc/self/ns/{ns}").encode() + b"\0")
    except OSError:
        pass  # no /proc: the code's identity alone
    for sub in ("berth/shim", "berth/ttrpc", "berth/api/runtime/task/v2", "berth/api/events"):
        directory = os.path.join(root, sub)
        for name in sorted(_listdir(directory)):
            if name.endswith(".py"):
                st = os.stat(os.path.join(directory, name))
                parts.append(f"{sub}/{name}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    for name in ("errdefs.py", "identifiers.py", "namespaces.py", "mount.py", "logfmt.py",
                 "shimcontract.py"):
        try:
            st = os.stat(os.path.join(root, "berth", name))
        except OSError:
            continue
        parts.append(f"{name}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return sha256_hex(b"".join(parts))[:32]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def zygote_path(socket_dir: str) -> str:
    return os.path.join(socket_dir, f"zygote-{identity()}")


def fork_shim(path: str, argv: Sequence[str], *, cwd: str, env: dict[str, str],
              listen_fd: int, log_fd: int | None, python: Sequence[str]) -> int:
    """Have the zygote at ``path`` fork a shim; its pid. Starts the zygote (with the
    ``python`` command) when none answers. OSError or RuntimeError when it cannot be had."""
    sock = _connect(path)
    if sock is None:
        _spawn_zygote(path, python)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while sock is None and time.monotonic() < deadline:
            time.sleep(0.01)
            sock = _connect(path)
        if sock is None:
            raise RuntimeError(f"shim zygote at {path} did not come up")
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        request = {"argv": list(argv), "env": env, "cwd": cwd, "umask": _umask(),
                   "rlimits": _rlimits()}
        send(sock, request, [listen_fd] + ([log_fd] if log_fd is not None else []))
        try:
            answer = receive(sock)
        except (OSError, RuntimeError) as err:
            raise Unanswered(f"shim zygote at {path} took the request but did not answer "
                             f"({err}); it may have started the shim") from None
    finally:
        sock.close()
    if "pid" not in answer:
        raise RuntimeError(f"shim zygote: {answer.get('error', 'no answer')}")
    return int(answer["pid"])


class Unanswered(Exception):
    """The zygote took a request and gave no answer: whether it forked the shim is unknown.
    (Not an OSError or RuntimeError: ``start`` must not fall back to starting another.)"""


def send(sock: _socket.socket | socket.socket, message: dict[str, Any],
         fds: Sequence[int] = ()) -> None:
    """One message of the protocol, with ``fds`` attached."""
    data = marshal.dumps(message)
    data = len(data).to_bytes(4, "big") + data
    if fds:
        # C ints in native order (``array`` would do, but it imports collections: see lean)
        ints = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
        sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, ints)])
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive(sock: _socket.socket | socket.socket, start: bytes = b"") -> dict[str, Any]:
    """One message of the protocol (``start``: what was read of it already); RuntimeError if
    what comes is not one."""
    data = start
    while True:
        if len(data) >= 4:
            size = int.from_bytes(data[:4], "big")
            if size > _MAX_MESSAGE:
                raise RuntimeError(f"shim zygote: message of {size} bytes refused")
            if len(data) >= 4 + size:
                return _decode(data[4:4 + size])
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("shim zygote: message cut short")
        data += chunk


def _decode(data: bytes) -> dict[str, Any]:
    """One message of the protocol; RuntimeError if it is not one."""
    try:
        message = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as err:
        raise RuntimeError(f"shim zygote: unreadable message ({err})") from None
    if not isinstance(message, dict):
        raise RuntimeError("shim zygote: unreadable message (not a dict)")
    return message


def _umask() -> int:
    """This process's umask, read without changing it (berthd calls this from one of its
    threads: setting and restoring it would race with the others)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only other way
    os.umask(mask)
    return mask


def _rlimits() -> dict[str, list[int]]:
    import resource

    return {name: list(resource.getrlimit(getattr(resource, name)))
            for name in dir(resource) if name.startswith("RLIMIT_")}


def _connect(path: str) -> _socket.socket | None:
    sock = unix_socket()
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _spawn_zygote(path: str, python: Sequence[str]) -> None:
    from berth.spawn import spawn_process

    # The padding leaves room in the zygote's argument area for the shims' command lines. Its
    # environment is almost empty: shims show it in /proc/PID/environ (theirs is the
    # request's), and one daemon's variables must not seem to be another's shim's.
    pid = spawn_process([*python, ZYGOTE_FLAG, path, " " * 512], setsid=True,
                        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
    # It is our child until we exit: a long-lived caller (berthd) must reap it when it leaves
    # (idle), or keep a zombie. (``_thread``: built in, nothing to import for ``start``.)
    import _thread

    _thread.start_new_thread(_reap, (pid,))


def _reap(pid: int) -> None:
    try:  # noqa: SIM105 (contextlib costs ``start`` an import: see berth.shim.lean)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped elsewhere
