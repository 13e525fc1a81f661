"""Child processes for tests and benchmarks: started on loopback only, stopped by PID.

`ManagedProcess` is the shape shared by the services we run (the loopback registry, the
reference containerd, berthd in the pull benchmark): `with Service() as s:` starts it and stops
it however the block ends. `spawn` starts one such child the same way for all of them: no stdin,
output appended to its log, an environment without proxies, and SIGTERM if the test runner dies.

Signals only ever go to PIDs we started (or found by their exact command line), never to a name.
"""

from __future__ import annotations

import abc
import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")


def loopback_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without proxy settings, with loopback excluded from any proxy.

    Child processes (registry, skopeo, ctr, containerd) get this so that a proxy configured on
    the host can never carry a request for 127.0.0.1 elsewhere.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    if extra:
        env.update(extra)
    return env


# The kernel sends children we start SIGTERM if we die (a safety net for SIGKILL of the test
# runner; the normal path still stops them by PID), set by util-linux's setpriv before it execs
# the program: no preexec_fn, whose Python code in the forked child can be aborted by grpc's
# fork handlers in a process that holds gRPC channels.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--")


def spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `argv` with no stdin, stdout and stderr appended to `log_path`, in `loopback_env()`,
    and set to die with us."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*DIE_WITH_PARENT, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=loopback_env(),
        )


def stop_process(proc: subprocess.Popen[bytes], term_timeout: float = 10.0) -> None:
    """Stop `proc` (a child we started): SIGTERM, wait up to `term_timeout` s, then SIGKILL.

    Signals go to that PID only, never to a name or a group; the child is always reaped.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def accepts_connections(address: str) -> bool:
    """Whether the unix socket at `address` accepts a connection right now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(address)
        except OSError:
            return False
        return True


class ManagedProcess(abc.ABC):
    """A service run as our child. Contract: `start()` returns once the service answers, and
    stops whatever it started if it fails; `stop()` is idempotent and signals only PIDs this
    object started."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @property
    @abc.abstractmethod
    def log_path(self) -> Path:
        """The service's combined stdout/stderr; RuntimeError while it has none."""

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except (OSError, RuntimeError):
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- finding processes in /proc --------------------------------------------------------------


def argument_after(argv: Sequence[str], flag: str) -> str | None:
    """The word that follows `flag` in `argv` (None if `flag` is not there)."""
    for a, b in itertools.pairwise(argv):
        if a == flag:
            return b
    return None


def read_argv(pid: int) -> list[str]:
    """The command line of `pid` ([] if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def pids_with_argument_pair(flag: str, value: str) -> list[int]:
    """PIDs whose command line holds `flag` immediately followed by `value` (exact words)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if argument_after(read_argv(int(entry)), flag) == value:
            found.append(int(entry))
    return found


def pids_with_argument(word: str) -> list[int]:
    """PIDs whose command line holds `word` as one of its words."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and word in read_argv(int(e))]


def children_of(parents: list[int]) -> list[int]:
    """PIDs whose parent is one of `parents`."""
    wanted, found = set(parents), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in wanted:
            found.append(int(entry))
    return found


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set size, KiB) of a live process."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")
