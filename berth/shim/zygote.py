"""A fork server for shims: one process that has imported the shim once, and forks each new
shim from that state.

Why: a shim's memory is mostly the Python code it loaded (asyncio, protobuf, ttrpc, the shim's
modules). Started one by one, every shim holds its own copy (~13 MiB private each). Forked from
a preloaded process, they share those pages copy-on-write and each keeps only what it changes
(~4 MiB), and a new shim answers at once instead of importing first.

Contract (the clients: the shim binary's ``start``, and berthd for its own shim, both through
berth.shimlaunch):

* The zygote listens on ``/run/berth/s/zygote-<identity>`` (mode 0600), where the identity
  hashes the interpreter, the Berth installation and its shim code's files (an upgraded Berth
  gets a new zygote and never forks old code), and what a child inherits that a request cannot
  carry: the caller's namespaces, cgroups and user. A shim forked for a daemon is thus where a
  shim that daemon started itself would be.
* A request is one message: a dict ``{"argv": [...shim flags...], "env": {...}, "cwd": BUNDLE,
  "umask": N, "rlimits": {resource: [soft, hard]}}`` in :mod:`marshal`'s format (the same
  interpreter is on both ends, and json's import costs ``start`` 5 ms) after its length (4
  bytes, big-endian), with the shim's listening socket, and optionally its log fd, attached
  (SCM_RIGHTS). The answer is ``{"pid": N}`` or ``{"error": "..."}``, the same way. Only
  root can connect (mode 0600).
* A zygote that took a request but gave no answer may have forked the shim: ``start`` then
  fails (:class:`berth.shimlaunch.Unanswered`) rather than start a second shim on the same socket.
* The shim is forked twice (a new session, not the zygote's child: it is re-parented as a
  directly started shim would be), gets the socket as fd 3, /dev/null as stdin and stdout, the
  log fd (or /dev/null) as stderr, the bundle as working directory, exactly the request's
  environment, its umask and (as far as they can be set) its resource limits. Its command
  line is rewritten to ``containerd-shim-berth-v2 -namespace NS -id ID -address ADDRESS``, so
  tools find it as they find a directly started shim.
* The zygote exits once no shim it forked is alive and no request came for
  :data:`IDLE_EXIT` seconds. Shims it forked keep sharing memory with each other after it.

Anything going wrong on the way makes ``start`` fall back to starting the shim directly.
"""

from __future__ import annotations

import os
import time

from berth.shimcontract import LISTEN_FD
from berth.shimlaunch import CONNECT_TIMEOUT, _connect, receive, send
from berth.shimlaunch import ZYGOTE_FLAG as ZYGOTE_FLAG  # the zygote's command line

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from typing import Any

IDLE_EXIT = 10.0
# Modules a shim process uses; the zygote imports them all before forking.
_PRELOAD = (
    "asyncio", "ctypes", "berth.ttrpc.server", "berth.ttrpc.client", "berth.logfmt",
    "berth.mount", "berth.shim.server", "berth.shim.service", "berth.shim.container",
    "berth.shim.process", "berth.shim.stdio", "berth.shim.runc", "berth.shim.cgroups",
    "berth.shim.events", "berth.shim.reaper", "berth.api.runtime.task.v2.shim_pb2",
    "berth.api.events.task_pb2", "berth.api.cgroups.v1.metrics_pb2",
    "berth.api.cgroups.v2.metrics_pb2", "berth.api.runtime.runc.options.oci_pb2",
    "berth.api.services.ttrpc.events.v1.events_pb2", "google.protobuf.empty_pb2",
    "urllib.parse",
)


# -- the zygote --------------------------------------------------------------------------------


def serve_forever(path: str) -> int:
    """The zygote process: preload, listen at ``path``, fork shims until idle."""
    import contextlib
    import gc
    import importlib
    import select
    import socket

    from berth.shim import lean

    lean.block_ssl()
    for module in _PRELOAD:
        importlib.import_module(module)
    os.chdir("/")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(path)
    except OSError:
        if _connect(path) is not None:
            return 0  # another zygote won the race
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a killed zygote's socket
        try:
            listener.bind(path)
        except OSError:
            return 0
    os.chmod(path, 0o600)
    listener.listen(64)
    gc.collect()
    gc.freeze()  # the shims' collectors then never write to the shared objects
    shims: dict[int, int] = {}  # pidfd -> pid
    last_request = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener.fileno(), *shims], [], [], IDLE_EXIT / 4)
            for fd in ready:
                if fd == listener.fileno():
                    last_request = time.monotonic()
                    pid = _serve_one(listener)
                    if pid:
                        with contextlib.suppress(OSError):
                            shims[os.pidfd_open(pid)] = pid
                else:
                    os.close(fd)  # that shim exited
                    del shims[fd]
            if not shims and time.monotonic() - last_request > IDLE_EXIT:
                return 0
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        # Requests that came as we decided to leave are still served; later ones find no
        # socket and start another zygote.
        with contextlib.suppress(OSError):
            while select.select([listener], [], [], 0)[0]:
                _serve_one(listener)


def _serve_one(listener: socket.socket) -> int:
    import contextlib
    import socket

    conn, _ = listener.accept()
    fds: list[int] = []
    with conn:
        try:
            conn.settimeout(CONNECT_TIMEOUT)
            data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 2)
            pid = _fork(receive(conn, data), fds, listener, conn)
            send(conn, {"pid": pid})
            return pid
        except Exception as err:
            # (the client may be gone: it falls back to starting the shim itself)
            with contextlib.suppress(OSError):
                send(conn, {"error": str(err) or type(err).__name__})
            return 0
        finally:
            for fd in fds:
                os.close(fd)


def _fork(request: dict[str, Any], fds: list[int], *closing: socket.socket) -> int:
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request["env"].items()}
    cwd = str(request["cwd"])
    umask = int(request.get("umask", 0o022))
    rlimits = request.get("rlimits") or {}
    if not fds:
        raise RuntimeError("no listening socket came with the request")
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate: a new session, a child, gone
        code = 1
        try:
            os.close(r)
            os.setsid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.umask(umask)
                _apply_rlimits(rlimits)
                _become_shim(argv, env, cwd, fds, closing)  # never returns
            os.write(w, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        os.waitpid(middle, 0)
        answer = os.read(r, 32)
    finally:
        os.close(r)
    if not answer:
        raise RuntimeError("forking the shim failed")
    return int(answer)


def _become_shim(argv: list[str], env: dict[str, str], cwd: str, fds: list[int],
                 closing: Sequence[socket.socket]) -> None:
    code = 1
    try:
        for s in closing:
            s.close()
        devnull = os.open(os.devnull, os.O_RDWR)
        log_fd = fds[1] if len(fds) > 1 else devnull
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(log_fd, 2)
        os.dup2(fds[0], LISTEN_FD)
        os.closerange(LISTEN_FD + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        _set_command_line(["containerd-shim-berth-v2", *argv])
        from berth.shim.cmdline import parse_flags
        from berth.shim.server import serve

        flags = parse_flags(argv)
        code = serve(flags.namespace, flags.id, debug=flags.debug)
    finally:
        os._exit(code)


def _set_command_line(args: Sequence[str]) -> None:
    """Rewrite this process's command line (/proc/self/cmdline) in place: the argument area
    keeps its size; what does not fit is cut."""
    import ctypes

    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    area = end - start
    text = b"\0".join(a.encode() for a in args) + b"\0"
    ctypes.memmove(start, text[:area].ljust(area, b"\0"), area)


def _apply_rlimits(limits: dict[str, list[int]]) -> None:
    """Take the caller's limits where we may (raising a hard limit needs a privilege)."""
    import resource

    for name, (soft, hard) in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (AttributeError, ValueError, OSError):
            continue  # unknown here, or beyond what we may raise it to: keep ours
