"""Task bundles: ``<state>/io.containerd.runtime.v2.task/<namespace>/<id>/``.

A bundle holds what a shim needs to run one task: ``config.json`` (the OCI spec), ``rootfs/``
(mounted by the shim), ``work`` (a per-task directory under the daemon's root that survives
reboots of the state dir), the ``log`` FIFO the shim writes its own log to, and, once the shim
runs, ``address`` (its ttrpc socket) and ``shim-binary-path``. The directory's existence is the
record that a task exists: after a daemon restart, bundles are how live shims are found again.

Modes (see :mod:`berth.fsmode`): a bundle is root's alone (0700), as are its files (0600): its
``config.json`` holds the container's environment, and its ``rootfs`` shows the container's
files, setuid binaries among them. A container in a user namespace gets its bundle 0710 with the
group of the namespace's root, so that runc, once in the namespace, still reaches the rootfs.
The namespace directories above bundles are 0711. Bundles left by an older Berth, which made
them 0711 with a 0644 ``config.json``, are restricted when :func:`load_all` finds them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass

from berth import errdefs, fsmode, namespaces
from berth.shimcontract import LOG_FIFO, ROOTFS_DIR, SPEC_FILE

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    id: str
    namespace: str
    path: str

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, ROOTFS_DIR)

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def write(self, name: str, value: str) -> None:
        tmp = os.path.join(self.path, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     fsmode.PRIVATE_FILE)
        with open(fd, "w") as f:
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
    root = fsmode.private_dir(bundle_root(state, ns), fsmode.TRAVERSABLE)
    path = os.path.join(root, container_id)
    try:
        os.mkdir(path, fsmode.PRIVATE)
    except FileExistsError:
        raise errdefs.AlreadyExists(f"task {container_id}: already exists") from None
    try:
        _restrict_bundle(path, _remapped_gid(spec))
        os.mkdir(os.path.join(path, ROOTFS_DIR), 0o711)
        fd = os.open(os.path.join(path, SPEC_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, fsmode.PRIVATE_FILE)
        with open(fd, "wb") as f:
            f.write(spec)
        os.mkfifo(os.path.join(path, LOG_FIFO), 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Bundle(container_id, ns, path)


def _remapped_gid(spec: bytes) -> int:
    """The host group that a user namespace maps the container's group 0 to; 0 without a user
    namespace (or a spec that cannot be read: the runtime will say what is wrong with it)."""
    try:
        mappings = json.loads(spec).get("linux", {}).get("gidMappings") or []
        for m in mappings:
            if int(m.get("containerID", -1)) == 0:
                return int(m["hostID"])
    except (ValueError, TypeError, AttributeError, KeyError):
        return 0
    return 0


def _restrict_bundle(path: str, gid: int) -> None:
    """Give the bundle directory its mode: 0700, or 0710 for the group ``gid`` of a user
    namespace's root (containerd's prepareBundleDirectoryPermissions)."""
    if gid:
        os.chown(path, -1, gid)
        os.chmod(path, 0o710)
    else:
        fsmode.restrict(path, fsmode.PRIVATE)


def _restrict_existing(bundle: Bundle) -> None:
    """Bring a bundle made by an older Berth to the modes :func:`create` gives."""
    spec_path = os.path.join(bundle.path, SPEC_FILE)
    try:
        with open(spec_path, "rb") as f:
            gid = _remapped_gid(f.read())
        fsmode.restrict(spec_path, fsmode.PRIVATE_FILE)
    except FileNotFoundError:
        gid = 0
    _restrict_bundle(bundle.path, gid)


def load_all(state: str) -> list[Bundle]:
    """Every bundle under ``state``, across namespaces. Called as the daemon starts, it also
    restricts the modes of what it finds (bundles an older Berth left open to all users)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for ns in sorted(os.listdir(state)):
            ns_dir = os.path.join(state, ns)
            if not os.path.isdir(ns_dir):
                continue
            fsmode.restrict(ns_dir, fsmode.TRAVERSABLE)
            for cid in sorted(os.listdir(ns_dir)):
                path = os.path.join(ns_dir, cid)
                if os.path.isdir(path):
                    bundle = Bundle(cid, ns, path)
                    try:
                        _restrict_existing(bundle)
                    except OSError as err:  # the task is still found; only its modes are not
                        log.warning("task %s/%s: cannot restrict its bundle's modes: %s", ns,
                                    cid, err)
                    out.append(bundle)
    return out
