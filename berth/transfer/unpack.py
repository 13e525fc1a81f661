"""Unpacking an image's layers into a snapshot chain.

Snapshots are named by chain ID (``ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))``), so a
layer stack shared by two images is unpacked once. A layer is committed only after the digest of
its uncompressed bytes matched the image config's diff ID: nothing unverified becomes a committed
snapshot.

Two strategies, one contract:

* **parallel**, where the snapshotter can give an active snapshot its parent after the fact
  (:class:`~berth.snapshots.snapshotter.Reparenting`, i.e. overlayfs) and the applier can
  unpack into a bare upper directory (:class:`~berth.diff.diff.UpperApplier`): each layer is
  extracted into its own parentless snapshot as soon as its blob is stored, several at once;
  the chain is then committed in order, each layer getting its parent just before its commit;
* **sequential** otherwise: prepare on the parent, apply, commit, one layer after the other.

Either way :meth:`Unpacker.extract` may be called from worker threads in any order, and
:meth:`Unpacker.commit` must be called for layers 0, 1, 2... in order.

Each layer's files are on disk before its commit: the differ syncs what it applied
(:mod:`berth.diff.durable`), in the worker that extracted it for the parallel strategy, so that
it overlaps the other layers' work; the directories adopted at commit are fsynced here.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from berth import errdefs
from berth.content.content import Provider, open_stream
from berth.diff.archive import adopt_parents
from berth.diff.diff import Applier, UpperApplier
from berth.images.manifest import chain_ids
from berth.oci.image import Descriptor
from berth.rootpath import resolve_in_root
from berth.snapshots.snapshotter import Kind, Reparenting, Snapshotter

log = logging.getLogger(__name__)

def _fsync_dirs(root: str, relative: Sequence[str]) -> None:
    for rel in relative:
        try:
            fd = os.open(resolve_in_root(root, rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed again later in the same layer, as adopt_parents allows
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _Extracted:
    key: str
    upper: str
    made_parents: list[str] = field(default_factory=list)


class Unpacker:
    """Unpacks ``layers`` (blobs in ``content``) into ``snapshotter`` with ``differ``; the
    strategy is parallel when ``parallel`` is allowed and both have the capabilities for it.
    ``snapshotter_name`` names the snapshotter in errors."""

    def __init__(self, content: Provider, snapshotter: Snapshotter, differ: Applier,
                 layers: Sequence[Descriptor], diff_ids: Sequence[str], *,
                 parallel: bool = True, snapshotter_name: str = "") -> None:
        if len(layers) != len(diff_ids):
            raise errdefs.InvalidArgument(
                f"image has {len(layers)} layers but its config lists {len(diff_ids)} diff IDs")
        self.content = content
        self.snapshotter = snapshotter
        self.differ = differ
        self.layers = list(layers)
        self.diff_ids = list(diff_ids)
        self.chain = chain_ids(diff_ids)
        self.snapshotter_name = snapshotter_name or type(snapshotter).__name__
        # The capabilities the parallel strategy needs, or None for the sequential one.
        self._reparenting: Reparenting | None = None
        self._upper: UpperApplier | None = None
        if (parallel and isinstance(snapshotter, Reparenting)
                and isinstance(differ, UpperApplier)):
            self._reparenting, self._upper = snapshotter, differ
        self.parallel = self._upper is not None
        self._extracted: dict[int, _Extracted] = {}
        self._lock = threading.Lock()
        self.first_missing = self._first_missing()

    @property
    def top(self) -> str:
        """The chain ID of the whole stack (the snapshot an image's rootfs is prepared on)."""
        return self.chain[-1] if self.chain else ""

    def _exists(self, chain_id: str) -> bool:
        try:
            return self.snapshotter.stat(chain_id).kind == Kind.COMMITTED
        except errdefs.NotFound:
            return False

    def _first_missing(self) -> int:
        """Layers below this index are unpacked already (their chain snapshots exist)."""
        for i in range(len(self.chain) - 1, -1, -1):
            if self._exists(self.chain[i]):
                return i + 1
        return 0

    def needed(self, index: int) -> bool:
        return index >= self.first_missing

    def _open(self, desc: Descriptor) -> BinaryIO:
        return open_stream(self.content.reader(desc.digest))

    def _check(self, index: int, applied: Descriptor) -> None:
        if applied.digest != self.diff_ids[index]:
            raise errdefs.InvalidArgument(
                f"layer {self.layers[index].digest} unpacks to {applied.digest}, but the image "
                f"config says its diff ID is {self.diff_ids[index]}: the image is corrupt")

    def extract(self, index: int) -> None:
        """Extract layer ``index`` ahead of its parents (parallel strategy only; a no-op
        otherwise). The layer's blob must be in the content store."""
        upper = self._upper
        if upper is None or not self.needed(index):
            return
        key = f"extract-{uuid.uuid4().hex[:12]}-{self.chain[index]}"
        mounts = self.snapshotter.prepare(key)
        if len(mounts) != 1 or mounts[0].type != "bind":
            self.snapshotter.remove(key)
            raise errdefs.Internal(f"snapshotter {self.snapshotter_name} gave unexpected mounts "
                                   f"for a parentless snapshot: {mounts}")
        extracted = _Extracted(key, mounts[0].source)
        try:
            applied = upper.apply_upper(self.layers[index], extracted.upper, self._open,
                                        extracted.made_parents)
            self._check(index, applied)
        except BaseException:
            self._discard(key)
            raise
        with self._lock:
            self._extracted[index] = extracted

    def commit(self, index: int) -> None:
        """Commit layer ``index`` onto the chain; layers must be committed in order."""
        if not self.needed(index):
            return
        name = self.chain[index]
        parent = self.chain[index - 1] if index else ""
        if self._reparenting is not None and self._upper is not None:
            with self._lock:
                extracted = self._extracted.pop(index)
            key = extracted.key
            try:
                if parent:
                    mounts = self._reparenting.reparent(key, parent)
                    lowers = [o for m in mounts for o in m.options if o.startswith("lowerdir=")]
                    if extracted.made_parents and lowers:
                        adopt_parents(extracted.upper, extracted.made_parents,
                                      lowers[0][len("lowerdir="):].split(":"))
                        if self._upper.sync:  # their new metadata too: a few directories
                            _fsync_dirs(extracted.upper, extracted.made_parents)
                self._commit(name, key)
            except BaseException:
                self._discard(key)
                raise
            return
        key = f"extract-{uuid.uuid4().hex[:12]}-{name}"
        mounts = self.snapshotter.prepare(key, parent)
        try:
            applied = self.differ.apply(self.layers[index], mounts, self._open)
            self._check(index, applied)
            self._commit(name, key)
        except BaseException:
            self._discard(key)
            raise

    def _commit(self, name: str, key: str) -> None:
        try:
            self.snapshotter.commit(name, key)
        except errdefs.AlreadyExists:
            # Another pull unpacked the same layers meanwhile; theirs is as good as ours.
            self._discard(key)

    def _discard(self, key: str) -> None:
        try:
            self.snapshotter.remove(key)
        except errdefs.NotFound:
            return
        except errdefs.BerthError as err:
            log.warning("could not remove extraction snapshot %s (the collector will): %s",
                        key, err)

    def abort(self) -> None:
        """Remove what was extracted but never committed."""
        with self._lock:
            left, self._extracted = list(self._extracted.values()), {}
        for extracted in left:
            self._discard(extracted.key)


