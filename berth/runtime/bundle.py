"""Task bundles: ``<state>/io.containerd.runtime.v2.task/<namespace>/<id>/``.

A bundle holds what a shim needs to run one task: ``config.json`` (the OCI spec), ``rootfs/``
(mounted by the shim), ``work`` (a per-task directory under the daemon's root that survives
reboots of the state dir), the ``log`` FIFO the shim writes its own log to, and, once the shim
runs, ``address`` (its ttrpc socket) and ``shim-binary-path``. The directory's existence is the
record that a task exists: after a daemon restart, bundles are how live shims are found again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

from berth import errdefs, namespaces

ADDRESS_FILE = "address"
BINARY_FILE = "shim-binary-path"


@dataclass
class Bundle:
    id: str
    namespace: str
    path: str

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, "rootfs")

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def write(self, name: str, value: str) -> None:
        tmp = os.path.join(self.path, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(value)
        os.replace(tmp, os.path.join(self.path, name))

    def delete(self) -> None:
        """Remove the bundle; the rootfs must be unmounted (by the shim) first."""
        if os.path.ismount(self.rootfs):
            raise errdefs.FailedPrecondition(
                f"task {self.id}: rootfs {self.rootfs} is still mounted; not removing the bundle")
        shutil.rmtree(self.path, ignore_errors=False)


def bundle_root(state: str, namespace: str) -> str:
    return os.path.join(state, namespace)


def create(state: str, container_id: str, spec: bytes) -> Bundle:
    """Make the bundle for ``container_id`` in the current namespace. AlreadyExists if a task
    (a bundle) exists for it."""
    ns = namespaces.current()
    root = bundle_root(state, ns)
    os.makedirs(root, mode=0o711, exist_ok=True)
    path = os.path.join(root, container_id)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        raise errdefs.AlreadyExists(f"task {container_id}: already exists") from None
    try:
        os.mkdir(os.path.join(path, "rootfs"), 0o711)
        with open(os.path.join(path, "config.json"), "wb") as f:
            f.write(spec)
        os.mkfifo(os.path.join(path, "log"), 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Bundle(container_id, ns, path)


def load_all(state: str) -> list[Bundle]:
    """Every bundle under ``state``, across namespaces."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for ns in sorted(os.listdir(state)):
            ns_dir = os.path.join(state, ns)
            if not os.path.isdir(ns_dir):
                continue
            for cid in sorted(os.listdir(ns_dir)):
                path = os.path.join(ns_dir, cid)
                if os.path.isdir(path):
                    out.append(Bundle(cid, ns, path))
    return out
