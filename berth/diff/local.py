"""The differ as the Diff service uses it: layers read from, and written to, a content store
(berthd gives it the namespaced one)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from berth import errdefs, heap
from berth.content.content import Store, open_stream
from berth.diff.walking import WalkingDiff
from berth.mount import Mount
from berth.oci.image import MEDIA_TYPE_LAYER_GZIP, Descriptor


class LocalDiff:
    def __init__(self, differ: WalkingDiff, content: Store) -> None:
        self.differ = differ
        self.content = content

    def _open(self, desc: Descriptor) -> BinaryIO:
        return open_stream(self.content.reader(desc.digest))

    def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Apply the layer blob ``desc`` onto ``mounts``; the result names the uncompressed
        tar (its digest is the layer's diff ID)."""
        if not mounts:
            raise errdefs.InvalidArgument("apply needs the mounts of an active snapshot")
        self.content.info(desc.digest)  # NotFound, before anything is mounted
        try:
            return self.differ.apply(desc, mounts, self._open)
        finally:
            heap.release()  # clients apply one layer at a time: its buffers are done with

    def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], *, media_type: str = "",
                ref: str = "", labels: Mapping[str, str] | None = None) -> Descriptor:
        """Write the layer from ``lower`` to ``upper`` into the content store and return it.
        The blob gets ``labels`` and ``containerd.io/uncompressed``."""
        ref = ref or f"diff-{uuid.uuid4().hex}"
        w = self.content.writer(ref)
        try:
            try:
                result = self.differ.compare(lower, upper, w,
                                             media_type=media_type or MEDIA_TYPE_LAYER_GZIP)
            except BaseException:
                w.close()
                self.content.abort(ref)
                raise
            desc = result.descriptor
            # AlreadyExists: the same layer was computed before and the blob is stored.
            with contextlib.suppress(errdefs.AlreadyExists):
                w.commit(desc.size, desc.digest, {**(labels or {}), **result.labels})
        finally:
            w.close()
        return desc
