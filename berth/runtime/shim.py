"""Shim binaries as the daemon runs them: which binary serves a runtime, its ``start`` and
``delete`` actions (the contract is :mod:`berth.shimcontract`), and the shim's own log. Once
started, a shim is called over ttrpc (:mod:`berth.runtime.taskclient`).

Runtime names map to binaries as in containerd: ``io.containerd.NAME.vN`` is
``containerd-shim-NAME-vN`` on PATH (berthd's own bin directory is searched first), unless the
configuration names a binary for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping

from berth import errdefs
from berth import shimcontract as contract
from berth.api.runtime.task.v2 import shim_pb2
from berth.runtime import shimproto
from berth.runtime.bundle import Bundle
from berth.runtime.runtime import Exit

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2``."""
    parts = runtime.split(".")
    if len(parts) < 2 or not parts[-1].startswith("v") or not parts[-2]:
        raise errdefs.InvalidArgument(
            f"runtime {runtime!r} is not of the form io.containerd.NAME.vN")
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve_binary(runtime: str, runtime_path: str, overrides: Mapping[str, str]) -> str:
    """The shim binary for a task: an explicit path, the configured one, or by name."""
    if runtime_path:
        if not os.access(runtime_path, os.X_OK):
            raise errdefs.NotFound(f"runtime binary {runtime_path} is not executable")
        return runtime_path
    name = overrides.get(runtime) or binary_name(runtime)
    if os.path.isabs(name):
        return name
    search = os.pathsep.join([os.path.dirname(os.path.abspath(sys.argv[0])),
                              os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    found = shutil.which(name, path=search)
    if found is None:
        raise errdefs.NotFound(
            f"runtime {runtime!r}: shim binary {name} not found on PATH; install it or map the "
            "runtime to a binary in the config")
    return found


class ShimBinary:
    def __init__(self, path: str, grpc_address: str, ttrpc_address: str,
                 daemon_binary: str, group_size: int = 0, linger: float = 0.0) -> None:
        self.path = path
        self.grpc_address = grpc_address
        self.ttrpc_address = ttrpc_address
        self.daemon_binary = daemon_binary
        self.group_size = group_size  # namespace grouping's bound; 0: a shim per container
        self.linger = linger  # how long an idle group shim waits for its next task

    def _command(self, bundle: Bundle, action: str) -> list[str]:
        return contract.command(self.path, action, namespace=bundle.namespace,
                                address=self.grpc_address, publish_binary=self.daemon_binary,
                                task_id=bundle.id)

    def env(self, bundle: Bundle) -> dict[str, str]:
        """The environment the binary (and the shim it starts) gets."""
        env = {**os.environ, contract.TTRPC_ADDRESS_ENV: self.ttrpc_address,
               contract.GRPC_ADDRESS_ENV: self.grpc_address,
               contract.NAMESPACE_ENV: bundle.namespace,
               contract.MAX_SHIM_VERSION_ENV: contract.MAX_SHIM_VERSION}
        if self.group_size:  # understood by Berth's shim only
            env[contract.GROUP_ENV] = contract.GROUP_BY_NAMESPACE
            env[contract.GROUP_SIZE_ENV] = str(self.group_size)
            env[contract.LINGER_ENV] = str(self.linger)
        return env

    def start(self, bundle: Bundle) -> str:
        """Start the shim for ``bundle``; its ttrpc socket path."""
        proc = subprocess.run(self._command(bundle, contract.ACTION_START), cwd=bundle.path,
                              env=self.env(bundle), capture_output=True, timeout=START_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise errdefs.Internal(
                f"shim {os.path.basename(self.path)} failed to start task {bundle.id}: "
                f"{(proc.stderr or proc.stdout).decode(errors='replace').strip()}")
        address = proc.stdout.decode().strip()
        bundle.write(contract.ADDRESS_FILE, address)
        bundle.write(contract.BINARY_FILE, self.path)
        return socket_path(address)

    def delete(self, bundle: Bundle) -> Exit:
        """Clean up after a dead shim with the binary's ``delete`` action."""
        proc = subprocess.run(self._command(bundle, contract.ACTION_DELETE), cwd=bundle.path,
                              env=self.env(bundle), capture_output=True, timeout=START_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise errdefs.Internal(
                f"shim delete for task {bundle.id} failed: "
                f"{proc.stderr.decode(errors='replace').strip()}")
        resp = shim_pb2.DeleteResponse()
        resp.ParseFromString(proc.stdout)
        return shimproto.deleted(resp)


def socket_path(address: str) -> str:
    for prefix in (contract.UNIX_SCHEME, "unix:"):
        if address.startswith(prefix):
            return address[len(prefix):]
    if address.startswith("/"):
        return address
    raise errdefs.Internal(f"shim printed an address berthd cannot use: {address!r}")


class ShimLog:
    """Copies a shim's own log (the bundle's ``log`` FIFO) into berthd's log until closed. The
    FIFO is held open read-write so the shim never blocks on it, whoever reads. Reading happens
    on ``loop`` (no thread per task)."""

    def __init__(self, bundle: Bundle, loop: asyncio.AbstractEventLoop) -> None:
        path = os.path.join(bundle.path, contract.LOG_FIFO)
        if not os.path.exists(path):
            os.mkfifo(path, 0o600)
        self._id = bundle.id
        self._loop = loop
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = b""
        loop.call_soon_threadsafe(loop.add_reader, self._fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        shim_log = logging.getLogger("berth.shim")
        for line in lines:
            if line.strip():
                shim_log.info("task %s: %s", self._id, line.decode(errors="replace"))

    def close(self) -> None:
        done = threading.Event()

        def stop() -> None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            done.set()

        self._loop.call_soon_threadsafe(stop)
        done.wait(5)
