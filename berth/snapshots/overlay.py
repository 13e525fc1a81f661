"""The overlayfs snapshotter, laid out and mounted as containerd 1.6's ``overlayfs`` plugin.

On disk, under the snapshotter's root::

    metadata.db                 the snapshotter's own metadata (see storage.py)
    snapshots/<id>/fs           the snapshot's own files: the upper directory while active,
                                a lower directory once committed
    snapshots/<id>/work         overlayfs' work directory (active snapshots only)

Mounts, exactly as containerd emits them (``ctr snapshots mounts`` prints them):

* no parent: ``bind <id>/fs`` with ``rw,rbind`` (active) or ``ro,rbind`` (view);
* active with parents: ``overlay overlay`` with ``[index=off,] [userxattr,]
  workdir=<id>/work, upperdir=<id>/fs, lowerdir=<p1>/fs:<p2>/fs:...`` (nearest parent first);
* view with one parent: ``bind <parent>/fs`` with ``ro,rbind``;
* view with more parents: ``overlay overlay`` with ``[index=off,] [userxattr,] lowerdir=...``.

``index=off`` is emitted when the kernel has the overlay ``index`` parameter; ``userxattr`` only
inside a user namespace (never for the real root), as containerd decides.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from berth import errdefs
from berth import mount as mountlib
from berth.mount import Mount
from berth.snapshots.local import LocalSnapshotter, os_errors
from berth.snapshots.snapshotter import Kind, Reparenting
from berth.snapshots.storage import Snapshot

_TMPFS_MAGIC = 0x01021994
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


@dataclass(frozen=True)
class OverlayDirs:
    """The directories behind a mount this snapshotter emitted."""

    upper: str | None  # the writable directory; None for a read-only mount
    lowers: tuple[str, ...]  # read-only layers, nearest first


def overlay_dirs(mounts: Sequence[Mount]) -> OverlayDirs:
    """Read the directories back out of ``mounts`` (one bind or overlay mount, as emitted here).

    For the diff applier, which writes a layer straight into the upper directory instead of
    mounting: a rw bind's source is the upper directory; a ro bind's source is the one lower.
    InvalidArgument for any other shape.
    """
    if len(mounts) != 1:
        raise errdefs.InvalidArgument(f"expected one overlay or bind mount, got {len(mounts)}")
    m = mounts[0]
    if m.type == "bind":
        return OverlayDirs(None, (m.source,)) if m.readonly else OverlayDirs(m.source, ())
    if m.type == "overlay":
        lowers = m.option("lowerdir")
        if lowers is None:
            raise errdefs.InvalidArgument("overlay mount without lowerdir")
        return OverlayDirs(m.option("upperdir"), tuple(lowers.split(":")))
    raise errdefs.InvalidArgument(f"not an overlay or bind mount: {m.type}")


def _try_overlay(directory: str, extra: Sequence[str]) -> str | None:
    # Mount a two-lower overlay in ``directory``; the error message, or None if it worked.
    for sub in ("lower1", "lower2", "upper", "work", "merged"):
        os.mkdir(os.path.join(directory, sub), 0o755)
    layer = os.path.join(directory, "{}").format
    m = Mount("overlay", "overlay", (
        *extra, f"lowerdir={layer('lower2')}:{layer('lower1')}",
        f"upperdir={layer('upper')}", f"workdir={layer('work')}"))
    try:
        mountlib.mount(m, layer("merged"))
    except errdefs.Internal as err:
        return str(err)
    mountlib.unmount(layer("merged"))
    return None


def supported(root: str) -> None:
    """Raise FailedPrecondition unless overlayfs with several lower layers works under ``root``.

    Checked by mounting a tiny overlay in a temporary directory under ``root`` (created if
    missing); nothing is left behind.
    """
    with os_errors(f"cannot check overlayfs support under {root}"):
        os.makedirs(root, mode=0o700, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="overlay-check-", dir=root)
        try:
            failure = _try_overlay(directory, ())
        finally:
            shutil.rmtree(directory)
    if failure is not None:
        raise errdefs.FailedPrecondition(
            f"overlayfs cannot be used under {root} ({failure}); its filesystem must support "
            "overlay upper directories (d_type, xattrs: ext4, xfs with ftype=1, btrfs, tmpfs); "
            "use the native snapshotter there instead")


def _in_user_namespace() -> bool:
    # The initial user namespace maps the whole uid range onto itself.
    with open("/proc/self/uid_map") as f:
        return f.read().split() != ["0", "0", "4294967295"]


def needs_userxattr(root: str) -> bool:
    """Whether overlay mounts under ``root`` need ``userxattr`` (containerd's NeedsUserXAttr)."""
    if not _in_user_namespace():
        return False
    if _statfs_type(root) == _TMPFS_MAGIC:
        return False  # tmpfs does not allow user.* xattrs
    release = os.uname().release.split("-")[0].split(".")
    if tuple(int(p) for p in release[:2] if p.isdigit()) >= (5, 11):
        return True
    # Older kernels: only a real mount tells (Debian/Ubuntu patched userns overlay without it).
    with os_errors(f"cannot check overlayfs userxattr support under {root}"):
        directory = tempfile.mkdtemp(prefix="userxattr-check-", dir=root)
        try:
            return _try_overlay(directory, ("userxattr",)) is None
        finally:
            shutil.rmtree(directory)


def _statfs_type(path: str) -> int:
    # os.statvfs has no f_type; it is the first field of struct statfs (a C long on Linux).
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(struct.unpack_from("l", buf)[0])


class OverlaySnapshotter(LocalSnapshotter, Reparenting):
    """Snapshots as overlayfs layers under ``root`` (see the module docstring for the layout).

    The root's path may not contain ``,`` or ``:``, which overlay mount options cannot carry.
    """

    def __init__(self, root: str) -> None:
        if any(c in os.path.abspath(root) for c in ",:"):
            raise errdefs.InvalidArgument(
                f"overlay snapshotter root {root!r} may not contain ',' or ':'")
        super().__init__(root)
        self._index_off = os.path.exists("/sys/module/overlay/parameters/index")
        with os_errors("cannot inspect the user namespace"):
            self._userxattr = needs_userxattr(self.root)

    def upper_dir(self, key: str) -> str:
        """The directory holding ``key``'s own files (any kind): the upper dir while active."""
        with self._ms.transaction() as tx:
            snapshot_id, _, _ = tx.get_info(key)
        return self._data_dir(snapshot_id)

    def reparent(self, key: str, parent: str) -> list[Mount]:
        with self._ms.transaction(write=True) as tx:
            snapshot = tx.reparent(key, parent)
            self._inherit_owner(self._data_dir(snapshot.id), snapshot)
        return self._mounts(snapshot)

    def _inherit_owner(self, fs: str, snapshot: Snapshot) -> None:
        if snapshot.parent_ids:
            # The merged root shows the upper dir's owner: keep the parent's (containerd does).
            st = os.stat(self._data_dir(snapshot.parent_ids[0]))
            os.lchown(fs, st.st_uid, st.st_gid)

    def _data_dir(self, snapshot_id: int) -> str:
        return os.path.join(self._dir(snapshot_id), "fs")

    def _work_dir(self, snapshot_id: int) -> str:
        return os.path.join(self._dir(snapshot_id), "work")

    def _populate(self, directory: str, snapshot: Snapshot) -> None:
        fs = os.path.join(directory, "fs")
        os.mkdir(fs, 0o755)
        if snapshot.kind == Kind.ACTIVE:
            os.mkdir(os.path.join(directory, "work"), 0o711)
        if snapshot.parent_ids:
            # The merged root shows the upper dir's owner: keep the parent's (containerd does).
            st = os.stat(self._data_dir(snapshot.parent_ids[0]))
            os.lchown(fs, st.st_uid, st.st_gid)

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        if not snapshot.parent_ids:
            mode = "ro" if snapshot.kind == Kind.VIEW else "rw"
            return [Mount("bind", self._data_dir(snapshot.id), (mode, "rbind"))]
        options: list[str] = []
        if self._index_off:
            options.append("index=off")
        if self._userxattr:
            options.append("userxattr")
        if snapshot.kind == Kind.ACTIVE:
            options += [f"workdir={self._work_dir(snapshot.id)}",
                        f"upperdir={self._data_dir(snapshot.id)}"]
        elif len(snapshot.parent_ids) == 1:
            return [Mount("bind", self._data_dir(snapshot.parent_ids[0]), ("ro", "rbind"))]
        lowers = ":".join(self._data_dir(p) for p in snapshot.parent_ids)
        options.append(f"lowerdir={lowers}")
        return [Mount("overlay", "overlay", tuple(options))]
