"""Driving an OCI runtime binary (runc, or crun, which takes the same commands).

:class:`Runc` knows one runtime configuration: the binary, its state root (one per namespace),
the JSON log file in the bundle and the cgroup driver. Its methods run one runtime command each
and raise :class:`RuntimeCommandError` with the runtime's own words when it fails: runc writes
its errors to ``--log`` as JSON lines (``{"level":"error","msg":...}``), and the message is the
last error line the failed command added there, else whatever it printed.

Commands run through the shim's :class:`~berth.shim.reaper.Reaper`, never ``waitpid`` of their
own, and their output is read while they run, so a large ``ps`` cannot fill a pipe and stall.
Their input (``update``'s resources) is written as they read it, from the loop, never with a
blocking write: one shim's loop serves every container of its group, and a write that waits for
a reader stalls them all (a write of more than the pipe's 64 KiB, made before the reader even
ran, waited for ever). go-runc feeds the same stdin from a goroutine.

``create`` and ``exec`` take the new process's stdio as three fds (the runtime hands its own
stdio to the container) or a console socket path (the runtime sends the pty master there).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from berth import errdefs

if TYPE_CHECKING:
    import asyncio

    from berth.shim.reaper import Reaper

DEFAULT_BINARY = "runc"
#: Where Berth's shim keeps runtime state when the task's options name no root: one
#: directory per namespace below it. (containerd's Go shim uses /run/containerd/runc.)
DEFAULT_ROOT = "/run/berth/runc"
LOG_FILE = "log.json"
#: The most an Update's resources (an OCI ``LinuxResources`` JSON document) may weigh. A real
#: one is a few KiB (device rules, hugepage limits, a few unified keys); ttrpc lets a request
#: carry 4 MiB, and runc would parse all of it. (containerd's shim has no limit of its own.)
MAX_RESOURCES = 1 << 20

Stdio = tuple[int | None, int | None, int | None]


class RuntimeCommandError(errdefs.BerthError):
    """A runtime command failed. The message is the runtime's; ``code`` stays UNKNOWN, as the Go
    shim answers (``OCI runtime create failed: ...: unknown`` in ctr)."""


def state_root(root: str, namespace: str) -> str:
    """The runtime's ``--root`` for a namespace: ``<root or DEFAULT_ROOT>/<namespace>``."""
    return os.path.join(root or DEFAULT_ROOT, namespace)


def check_resources(resources: bytes) -> None:
    """InvalidArgument, naming the limit, for resources over :data:`MAX_RESOURCES`."""
    if len(resources) > MAX_RESOURCES:
        raise errdefs.InvalidArgument(
            f"resources of {len(resources)} bytes exceed the limit of "
            f"{MAX_RESOURCES >> 20} MiB ({MAX_RESOURCES} bytes)")


def last_error(log_path: str, offset: int = 0) -> str:
    """The last ``error`` message in a runc JSON log, reading from ``offset``; "" if none."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    message = ""
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            message = str(entry.get("msg", "")).strip()
    return message


def kill_error(err: RuntimeCommandError) -> errdefs.BerthError:
    """Map a failed ``kill`` as containerd does: a process or container that is gone is
    NotFound; anything else stays as it is."""
    text = str(err).lower()
    if any(s in text for s in ("container not running", "no such process",
                               "process already finished")):
        return errdefs.NotFound("process already finished")
    if "does not exist" in text:
        return errdefs.NotFound("no such container")
    return err


class Runc:
    """(A plain class: importing dataclasses would cost the delete action 7 ms.)"""

    def __init__(self, binary: str, root: str, log: str, systemd_cgroup: bool = False) -> None:
        self.binary = binary
        self.root = root
        self.log = log
        self.systemd_cgroup = systemd_cgroup

    @classmethod
    def for_bundle(cls, bundle: str, namespace: str, *, binary: str = "", root: str = "",
                   systemd_cgroup: bool = False) -> Runc:
        return cls(binary or DEFAULT_BINARY, state_root(root, namespace),
                   os.path.join(bundle, LOG_FILE), systemd_cgroup)

    def argv(self, *args: str) -> list[str]:
        """The full command line for one runtime command."""
        base = [self.binary, "--root", self.root, "--log", self.log, "--log-format", "json"]
        if self.systemd_cgroup:
            base.append("--systemd-cgroup")
        return [*base, *args]

    # -- commands --------------------------------------------------------------------------

    async def create(self, reaper: Reaper, container_id: str, bundle: str, *, pid_file: str,
                     stdio: Stdio = (None, None, None), console_socket: str = "",
                     no_pivot: bool = False, no_new_keyring: bool = False) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        await self._run(reaper, "OCI runtime create failed", [*args, container_id],
                        stdio=None if console_socket else stdio)

    async def start(self, reaper: Reaper, container_id: str) -> None:
        await self._run(reaper, "OCI runtime start failed", ["start", container_id])

    async def exec(self, reaper: Reaper, container_id: str, process_file: str, *,
                   pid_file: str, stdio: Stdio = (None, None, None),
                   console_socket: str = "") -> None:
        args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._run(reaper, "OCI runtime exec failed", [*args, container_id],
                        stdio=None if console_socket else stdio)

    async def kill(self, reaper: Reaper, container_id: str, sig: int, *,
                   all_processes: bool = False) -> None:
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(sig)]
        try:
            await self._run(reaper, "OCI runtime kill failed", args)
        except RuntimeCommandError as err:
            raise kill_error(err) from None

    async def delete(self, reaper: Reaper, container_id: str, *, force: bool = False) -> None:
        args = ["delete", *(["--force"] if force else []), container_id]
        await self._run(reaper, "OCI runtime delete failed", args)

    async def pause(self, reaper: Reaper, container_id: str) -> None:
        await self._run(reaper, "OCI runtime pause failed", ["pause", container_id])

    async def resume(self, reaper: Reaper, container_id: str) -> None:
        await self._run(reaper, "OCI runtime resume failed", ["resume", container_id])

    async def state(self, reaper: Reaper, container_id: str) -> dict[str, Any]:
        out = await self._run(reaper, "OCI runtime state failed", ["state", container_id])
        state: dict[str, Any] = json.loads(out)
        return state

    async def ps(self, reaper: Reaper, container_id: str) -> list[int]:
        out = await self._run(reaper, "OCI runtime ps failed",
                              ["ps", "--format", "json", container_id])
        pids = json.loads(out) or []
        return [int(p) for p in pids]

    async def update(self, reaper: Reaper, container_id: str, resources: bytes) -> None:
        """``resources``: an OCI ``LinuxResources`` JSON document, on runc's stdin."""
        check_resources(resources)  # (whoever calls: runc is never handed an unbounded one)
        await self._run(reaper, "OCI runtime update failed",
                        ["update", "--resources", "-", container_id], input=resources)

    async def stats(self, reaper: Reaper, container_id: str) -> dict[str, Any]:
        """runc's own statistics (``events --stats``): its JSON ``{"type":"stats","data":...}``."""
        out = await self._run(reaper, "OCI runtime stats failed",
                              ["events", "--stats", container_id])
        stats: dict[str, Any] = json.loads(out)
        return stats

    def delete_now(self, container_id: str, *, force: bool = True) -> str:
        """``delete`` outside an event loop (the shim's ``delete`` action): "" on success,
        else the runtime's message."""
        import subprocess

        offset = _size(self.log)
        args = ["delete", *(["--force"] if force else []), container_id]
        done = subprocess.run(self.argv(*args), capture_output=True, check=False)
        if done.returncode == 0:
            return ""
        return last_error(self.log, offset) or done.stderr.decode(errors="replace").strip()

    # -- execution -------------------------------------------------------------------------

    async def _run(self, reaper: Reaper, what: str, args: Sequence[str], *,
                   stdio: Stdio | None = None, input: bytes | None = None) -> bytes:
        """Run one command; its stdout. With ``stdio`` the command's stdio are those fds (they
        become the container's) and nothing is captured."""
        import asyncio  # here, not above: the delete action uses this module without a loop

        offset = _size(self.log)
        pipes: list[int] = []
        feeder: _Feeder | None = None
        try:
            in_w = -1
            if stdio is not None:
                stdin, stdout, stderr = stdio
                out_r = err_r = -1
            else:
                stdin = None
                if input is not None:
                    stdin, in_w = _pipe(pipes)
                out_r, stdout = _pipe(pipes)
                err_r, stderr = _pipe(pipes)
            try:
                _pid, exited = reaper.spawn(self.argv(*args), stdin=stdin, stdout=stdout,
                                            stderr=stderr)
            except OSError as err:
                raise RuntimeCommandError(f"{what}: cannot run {self.binary}: {err}") from None
            readers: list[_Collector] = []
            if stdio is None:
                # Our copies of the child's ends must go, or the readers never see EOF (nor
                # the feeder EPIPE if the child leaves without reading all).
                for fd in (stdin, stdout, stderr):
                    if fd is not None:
                        _close(fd, pipes)
                readers = [_Collector(out_r), _Collector(err_r)]
                if input is not None:
                    feeder = _Feeder(in_w, input, pipes)
            exit_ = await exited
            # A descendant that kept the pipes open must not hold the call up for long.
            if readers:
                await asyncio.wait([r.done for r in readers], timeout=1.0)
            outputs = [r.close() for r in readers]
        finally:
            if feeder is not None:
                feeder.close()  # (before its fd goes below: the loop must not watch a closed fd)
            for fd in pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
        out, err_out = [*outputs, b"", b""][:2]
        if exit_.status != 0:
            message = last_error(self.log, offset) or err_out.decode(errors="replace").strip() \
                or out.decode(errors="replace").strip() or f"exit status {exit_.status}"
            raise RuntimeCommandError(f"{what}: {message}")
        return out


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _pipe(opened: list[int]) -> tuple[int, int]:
    r, w = os.pipe()
    opened += [r, w]
    return r, w


def _close(fd: int, opened: list[int]) -> None:
    if fd in opened:
        opened.remove(fd)
        os.close(fd)


class _Feeder:
    """Writes ``data`` into a pipe's write end ``fd`` as the child reads it, then closes it (the
    child's EOF). Each write takes only what the pipe has room for (the fd is non-blocking: its
    read end, the child's stdin, is a file description of its own and stays blocking); the rest
    waits for the loop to see the pipe writable. A child that exits or closes its stdin before
    reading all ends the feeding (EPIPE: the shim, as any Python program, ignores SIGPIPE)."""

    def __init__(self, fd: int, data: bytes, opened: list[int]) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._opened = opened
        self._rest = memoryview(data)
        self._watched = False
        os.set_blocking(fd, False)
        self._writable()
        if self._fd >= 0:  # more than the pipe took at once
            self._loop.add_writer(fd, self._writable)
            self._watched = True

    def _writable(self) -> None:
        try:
            while self._rest:
                self._rest = self._rest[os.write(self._fd, self._rest):]
        except BlockingIOError:
            return  # full: the loop calls again once the child has read some
        except OSError:
            pass  # the child will not read the rest (gone, or closed its stdin)
        self.close()

    def close(self) -> None:
        """Stop feeding and close the pipe (at once if fed; else the child is done anyway)."""
        if self._watched:
            self._loop.remove_writer(self._fd)
            self._watched = False
        if self._fd >= 0:
            _close(self._fd, self._opened)
            self._fd = -1
        self._rest = memoryview(b"")


class _Collector:
    """Reads an fd to EOF in the background; :meth:`close` stops and returns what came."""

    def __init__(self, fd: int) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._chunks: list[bytes] = []
        self.done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._chunks.append(data)
        else:
            self._stop()

    def _stop(self) -> None:
        self._loop.remove_reader(self._fd)
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> bytes:
        self._stop()
        return b"".join(self._chunks)
