"""The real containerd (Debian's 1.6.20), started privately as a reference for tests and benches.

`ReferenceContainerd` runs `/usr/bin/containerd` with its own config, root, state and socket under
one directory, so it never touches a system containerd's files (except /run/containerd/s and
/run/containerd/runc, which its Go shims always use). On stop it signals only the PID it
started (SIGTERM, then SIGKILL), stops the shims that daemon spawned (found by their
`-address <our socket>` argument), and unmounts whatever is still mounted under its directory.

It is a yardstick only: no code path of Berth itself starts or talks to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from processes import (
    ManagedProcess,
    accepts_connections,
    argument_after,
    children_of,
    peak_rss_kib,
    pids_with_argument_pair,
    read_argv,
    spawn,
    stop_process,
)

CONTAINERD_BINARY = "/usr/bin/containerd"
RUNC_BINARY = "/usr/sbin/runc"
RUNC_STATE_ROOT = "/run/containerd/runc"  # where the Go runc shim keeps runc state, always

# Plugins that cannot work here or that nothing of ours needs; disabling them keeps start fast.
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
_DISABLED_PLUGINS = (
    CRI_PLUGIN,
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


def _unescape_mount_path(field: str) -> str:
    """Undo /proc/mounts' octal escapes (\\040 for space, etc.)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(directory: Path) -> list[str]:
    """Mount points that depend on `directory`, deepest first (per /proc/mounts).

    That is every mount at or below `directory`, and every mount elsewhere whose options name a
    path inside it (an overlay over snapshots in it, e.g. from `ctr images mount`).
    """
    prefix = os.path.realpath(directory)
    found = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 4:
                continue
            point = _unescape_mount_path(fields[1])
            options = _unescape_mount_path(fields[3])
            if (
                point == prefix
                or point.startswith(prefix + "/")
                or f"={prefix}/" in options
                or f":{prefix}/" in options
            ):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(directory: Path) -> list[str]:
    """Unmount everything `mounts_under(directory)` lists; return what is still mounted.

    Tries a plain `umount` first and a lazy one (`umount -l`) if that fails.
    """
    for _round in range(3):
        points = mounts_under(directory)
        if not points:
            return []
        for point in points:
            done = subprocess.run(["umount", point], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return mounts_under(directory)


def remove_tree(directory: Path) -> None:
    """Unmount everything under (or over) `directory`, then delete it.

    Refuses (RuntimeError) to delete while anything is still mounted below, so a stuck mount can
    never make us delete the contents of another filesystem.
    """
    left = unmount_all_under(directory)
    if left:
        raise RuntimeError(f"not removing {directory}: still mounted: {left}")
    shutil.rmtree(directory, ignore_errors=True)


class ContainerdError(RuntimeError):
    """containerd did not come up (the message carries the tail of its log)."""


class ReferenceContainerd(ManagedProcess):
    """A private containerd daemon: `with ReferenceContainerd() as c: c.address`.

    Everything lives under `base_dir` (a new temporary directory unless given): `root/`,
    `state/`, `containerd.sock`, `config.toml`, `containerd.log`. After `start()` returns, the
    gRPC socket accepts connections. `stop()` is idempotent and always runs the full clean-up;
    a temporary `base_dir` is deleted, a given one is emptied of root/ and state/.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        binary: str = CONTAINERD_BINARY,
        start_timeout: float = 30.0,
        log_level: str = "warn",
        cri: bool = False,
        cri_config: str = "",
        keep_files: bool = False,
    ) -> None:
        """``keep_files=True`` leaves a given ``base_dir``'s files for the caller to delete.
        ``cri=True`` keeps containerd's CRI plugin (off otherwise: it is slow to start and
        wants a network) with a CNI configuration directory of its own, left empty, and
        containerd's ``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE).
        ``cri_config``: more TOML for the CRI plugin's table (its keys, then any sub-tables
        but ``cni``)."""
        self.cri = cri
        self.cri_config = cri_config
        self._given_base = Path(base_dir) if base_dir is not None else None
        self._keep_files = keep_files and self._given_base is not None
        self.binary = binary
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.base is None:
            raise RuntimeError("containerd not started")
        return self.base / name

    @property
    def root(self) -> Path:
        return self._path("root")

    @property
    def state(self) -> Path:
        return self._path("state")

    @property
    def address(self) -> str:
        """The gRPC socket path, for `ctr --address`."""
        return str(self._path("containerd.sock"))

    @property
    def log_path(self) -> Path:
        return self._path("containerd.log")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("containerd not started")
        return self._proc.pid

    def peak_rss_kib(self) -> int:
        """The daemon's peak RSS so far (VmHWM, KiB)."""
        return peak_rss_kib(self.pid)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def cni_conf_dir(self) -> Path:
        return self._path("cni/net.d")

    def _cri_config(self) -> str:
        if not self.cri:
            return ""
        return f"""
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
{self.cri_config}
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{self.cni_conf_dir}"
    bin_dir = "/usr/lib/cni"
"""

    def _write_config(self) -> Path:
        skipped = [p for p in _DISABLED_PLUGINS if not (self.cri and p == CRI_PLUGIN)]
        disabled = ", ".join(f'"{p}"' for p in skipped)
        config = f"""version = 2
root = "{self.root}"
state = "{self.state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  address = ""
  level = "{self.log_level}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root}/opt"
""" + self._cri_config()
        path = self._path("config.toml")
        path.write_text(config)
        return path

    def start(self) -> None:
        """Start containerd; return once its socket accepts connections."""
        if self._proc is not None:
            raise RuntimeError("containerd already started")
        if self._given_base is not None:
            self.base = self._given_base
            self.base.mkdir(parents=True, exist_ok=True)
        else:
            self.base = Path(tempfile.mkdtemp(prefix="berth-refctrd-"))
        try:
            if len(self.address) > 100:
                raise ContainerdError(f"socket path too long for AF_UNIX: {self.address}")
            self.root.mkdir(exist_ok=True)
            self.state.mkdir(exist_ok=True)
            if self.cri:
                self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
            config = self._write_config()
            self._proc = spawn(
                [
                    *(self.binary, "--config", str(config)),
                    *("--root", str(self.root), "--state", str(self.state)),
                    *("--address", self.address),
                ],
                self.log_path,
            )
            self._wait_for_socket()
        except BaseException:
            self.stop()
            raise

    def _wait_for_socket(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if accepts_connections(self.address):
                return
            time.sleep(0.02)
        raise ContainerdError(f"containerd socket did not appear:\n{self.log_tail()}")

    def _stop_shims(self) -> None:
        """A safety net for tests that leave containers behind.

        SIGKILL the shims our daemon started (they carry `-address <our socket>`) and their
        direct children (the container init processes, which takes their PID namespaces down
        with them), then `runc delete --force` each container so its state and cgroups go too.
        """
        if self.base is None:
            return
        shims = pids_with_argument_pair("-address", self.address)
        containers = []
        for pid in shims:
            argv = read_argv(pid)
            namespace = argument_after(argv, "-namespace")
            container_id = argument_after(argv, "-id")
            if namespace and container_id:
                containers.append((namespace, container_id))
        for pid in [*children_of(shims), *shims]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for namespace, container_id in containers:
            subprocess.run(
                [RUNC_BINARY, "--root", f"{RUNC_STATE_ROOT}/{namespace}", "delete", "--force",
                 container_id],
                capture_output=True,
                check=False,
            )  # fmt: skip

    def stop(self) -> None:
        """Stop the daemon by PID, its shims, unmount leftovers, delete our files. Idempotent."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self.base is None:
            return
        self._stop_shims()
        if self._given_base is None:
            remove_tree(self.base)
        elif not self._keep_files:
            for name in ("root", "state"):
                remove_tree(self.base / name)
        self.base = None
