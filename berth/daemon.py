"""berthd: builds the plugins, serves the API on a unix socket, shuts down cleanly."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING

import grpc

from berth import builtins, errdefs, fsmode
from berth import mount as mountlib
from berth.plugin import registry as p
from berth.plugin.config import Config
from berth.plugin.registry import Registry
from berth.services.server import new_server

if TYPE_CHECKING:
    from berth.metrics.metrics import MetricsServer

log = logging.getLogger("berthd")

#: Where temporary mounts live, under the root (containerd's ``<root>/tmpmounts``).
TEMP_MOUNTS = "tmpmounts"
#: Where Berth made the walking differ's temporary mounts before they moved under the root.
LEGACY_TEMP_MOUNTS = "io.containerd.differ.v1.walking"


class AlreadyRunning(errdefs.FailedPrecondition):
    pass


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.server: grpc.Server | None = None
        self._lock_fd: int | None = None
        self._stopped = threading.Event()
        self.metrics_server: MetricsServer | None = None

    def _lock_root(self) -> None:
        # 0700, and an existing root made more open by an older Berth is restricted: only root
        # may reach the stores, the databases and the snapshots below it (see berth.fsmode).
        fsmode.private_dir(self.config.root)
        path = os.path.join(self.config.root, "berthd.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another berthd (pid {owner}) is already using root {self.config.root}: stop it "
                "first, or start this one with a different --root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(self) -> None:
        cfg = self.config
        self._lock_root()
        # Made traversable, not listable: a user namespace's root may need to reach its bundle.
        # An existing one keeps its mode (it may be shared, as /run): what is secret below it is
        # protected further down (bundles 0700), as with containerd.
        os.makedirs(cfg.state, mode=fsmode.TRAVERSABLE, exist_ok=True)
        for key in cfg.unknown_keys:
            log.warning("config: unknown key %r ignored", key)
        self._clean_temp_mounts()
        self.registry = builtins.registry()
        self.registry.init_all(cfg.root, cfg.state, cfg.plugins, cfg.disabled_plugins,
                               address=cfg.address, ttrpc_address=cfg.address + ".ttrpc")
        # Request metrics are kept only when something can read them (as with the HTTP stack
        # and prometheus_client they need, loaded only then).
        metrics = None
        if cfg.metrics_address:
            from berth.metrics.metrics import DaemonMetrics

            metrics = DaemonMetrics()
        server = new_server()
        for name, svc in self.registry.get_all(p.GRPC).items():
            svc.register(server, metrics.observe if metrics is not None else None)
            log.debug("grpc service %s registered", name)
        address = cfg.address
        # Only a directory made here gets a mode: the socket may live in a shared one (/run).
        # Traversable, so that members of grpc_gid reach the socket (itself 0660).
        os.makedirs(os.path.dirname(address) or ".", mode=fsmode.TRAVERSABLE, exist_ok=True)
        if os.path.exists(address):
            os.unlink(address)  # stale: we hold the root lock, so no berthd is serving it
        server.add_insecure_port(f"unix:{address}")
        server.start()
        os.chmod(address, 0o660)
        if cfg.grpc_gid:
            os.chown(address, 0, cfg.grpc_gid)
        self.server = server
        if metrics is not None:
            from berth.metrics.metrics import MetricsServer

            runtime = self.registry.get_all(p.RUNTIME).get("task")
            if runtime is not None:
                metrics.add_containers(runtime.all_stats)
            self.metrics_server = MetricsServer(cfg.metrics_address, metrics.registry)
            log.info("metrics on http://%s:%d/v1/metrics", cfg.metrics_address.rpartition(":")[0]
                     or "127.0.0.1", self.metrics_server.port)
        # Sweep what an earlier crash may have left (orphan snapshots, unreferenced blobs).
        self.registry.get(p.METADATA).collect(False)
        log.info("berthd serving on %s (root %s, state %s)", address, cfg.root, cfg.state)
        _notify_systemd("READY=1")

    def _clean_temp_mounts(self) -> None:
        """Make ``<root>/tmpmounts`` where every temporary mount goes, and take off what a
        berthd that died mid-way left mounted there (and where older versions mounted)."""
        location = mountlib.set_temp_location(os.path.join(self.config.root, TEMP_MOUNTS))
        legacy = os.path.join(self.config.state, LEGACY_TEMP_MOUNTS)
        for directory in (location, legacy):
            if os.path.isdir(directory):
                for warning in mountlib.cleanup_temp_mounts(directory):
                    log.warning("leftover temporary mount: %s", warning)
        with contextlib.suppress(OSError):  # unused now; kept only while something is left in it
            os.rmdir(legacy)

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        _notify_systemd("STOPPING=1")
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.server is not None:
            self.server.stop(grace=2).wait()
            self.server = None
        if self.registry is not None:
            self.registry.close()
            self.registry = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.address)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._stopped.set()
        log.info("berthd stopped")

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="shutdown").start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _notify_systemd(message: str) -> None:
    """Tell systemd (a ``Type=notify`` unit) how berthd is doing: ``READY=1`` once the socket
    serves, so that units ordered after berthd find it answering. A no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as err:
        log.warning("could not notify systemd at %s: %s", address.lstrip("\0"), err)
