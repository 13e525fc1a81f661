"""The native snapshotter: every snapshot a plain directory, as containerd's ``native`` plugin.

For filesystems where overlayfs cannot run. ``snapshots/<id>`` under the root holds the whole
tree: ``prepare`` with a parent copies the parent's tree (``cp -a``, reflinked where the
filesystem can), so space and time grow with the image, not with the change.

Mounts are single bind mounts (containerd's shapes): an active snapshot binds its own directory
``rw,rbind``; a view binds ``ro,rbind`` its parent's directory (nothing is copied for a view), or
its own empty directory when it has no parent.
"""

from __future__ import annotations

import os
import subprocess

from berth import errdefs
from berth.mount import Mount
from berth.snapshots.local import LocalSnapshotter
from berth.snapshots.snapshotter import Kind
from berth.snapshots.storage import Snapshot


class NativeSnapshotter(LocalSnapshotter):
    """Snapshots as full copies under ``root``; usage counts the whole copy, parents included."""

    def _data_dir(self, snapshot_id: int) -> str:
        return self._dir(snapshot_id)

    def _populate(self, directory: str, snapshot: Snapshot) -> None:
        if snapshot.kind != Kind.ACTIVE or not snapshot.parent_ids:
            # An empty tree (a view of a parent mounts the parent's and leaves this one
            # unused). Its root gets overlay's fs mode rather than mkdtemp's 0700, which
            # containerd leaves in place, so that a layer without a "./" entry is traversable.
            os.chmod(directory, 0o755)
            return
        parent = self._dir(snapshot.parent_ids[0])
        # -a keeps owners, modes, times, hard links, xattrs, devices and symlinks; -T copies
        # the parent's root (and its attributes) onto the directory instead of into it.
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "-T", "--", parent, directory],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise errdefs.Internal(
                f"copying parent snapshot {parent} failed: {done.stderr.strip()}")

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        if snapshot.kind == Kind.VIEW:
            source = self._dir(snapshot.parent_ids[0] if snapshot.parent_ids else snapshot.id)
            return [Mount("bind", source, ("ro", "rbind"))]
        return [Mount("bind", self._dir(snapshot.id), ("rw", "rbind"))]
