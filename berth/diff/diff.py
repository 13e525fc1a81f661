"""The diff subsystem's interfaces: an :class:`Applier` unpacks a layer into mounts (an
:class:`UpperApplier` into a bare overlay upper too), a :class:`Comparer` computes a layer from
two sets of mounts.

Lifecycle of a layer, as the image unpacker and the snapshotter see it::

    snapshotter.prepare(key, parent)  ->  mounts (an empty upper over the parent's layers)
    applier.apply(layer_desc, mounts, open_blob)  ->  diff descriptor (uncompressed digest)
    snapshotter.commit(chain_id, key)

and, the other way round, when a container's changes become a layer::

    comparer.compare(parent_mounts, container_mounts, content_writer)  ->  Comparison
    content_writer.commit(comparison.descriptor.size, comparison.descriptor.digest)
    ... label the blob with comparison.labels

Both work on the host's file systems and block: call them from a worker thread in async code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from berth.mount import Mount
from berth.oci.image import MEDIA_TYPE_LAYER_GZIP, Descriptor

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
"""The content label that names a compressed layer's uncompressed digest (its diff ID)."""


class Readable(Protocol):
    """Anything bytes can be pulled from: a file, a ``BinaryIO``, a decompressor. ``read``
    returns at most ``size`` bytes (all that remain if ``size`` is -1), and ``b''`` only at the
    end of the stream."""

    def read(self, size: int = -1, /) -> bytes: ...


class LayerSink(Protocol):
    """Where a comparer writes the layer blob: a content-store ``Writer`` (``write`` appends and
    returns the count written), an open file, a ``BytesIO``."""

    def write(self, data: bytes, /) -> int: ...


BlobOpener = Callable[[Descriptor], BinaryIO]
"""Opens the blob a descriptor names, for reading from its start; the caller closes it."""


class Applier(Protocol):
    """Unpacks layers into mounts."""

    def apply(self, desc: Descriptor, mounts: Sequence[Mount],
              open_blob: BlobOpener) -> Descriptor:
        """Apply the layer ``desc`` (a tar, gzip or zstd layer media type) onto ``mounts``.

        Contract:

        * ``open_blob(desc)`` is called once and the stream is read to its end (bytes after the
          tar's end-of-archive marker included) and closed, whether or not the apply succeeds.
        * The result describes the uncompressed tar: media type
          ``application/vnd.oci.image.layer.v1.tar``, the sha256 digest of every uncompressed
          byte (the layer's diff ID) and their count.
        * A media type the applier cannot handle raises ``errdefs.NotImplementedByBerth`` before
          anything is read, so the caller can try another applier (containerd's NotImplemented).
        * A layer that is corrupt or hostile raises ``errdefs.InvalidArgument``; nothing outside
          the mounts' root is ever touched, but the mounts may hold a partial layer: the caller
          discards the snapshot.
        * The compressed bytes are not verified against ``desc.digest``: the content store did
          that when the blob was committed.
        """
        ...


@runtime_checkable
class UpperApplier(Applier, Protocol):
    """An :class:`Applier` that can also unpack a layer into a bare overlay upper directory
    before the layers below it exist: what lets a pull unpack layers in parallel on a
    snapshotter that is :class:`~berth.snapshots.snapshotter.Reparenting` (callers check for
    both with ``isinstance``)."""

    sync: bool
    """Whether what it applies is on disk when it returns (see :mod:`berth.diff.durable`); the
    caller then syncs the directories it adopts at commit too."""

    def apply_upper(self, desc: Descriptor, upper: str, open_blob: BlobOpener,
                    made_parents: list[str]) -> Descriptor:
        """Apply ``desc`` into the directory ``upper`` with whiteouts in overlay form, as
        :meth:`Applier.apply` does otherwise. The directories the layer needed but did not
        hold are made and listed in ``made_parents``: once the lower layers exist, the caller
        gives them their lower metadata (:func:`berth.diff.archive.adopt_parents`).
        ``errdefs.NotImplementedByBerth`` where overlay whiteouts cannot be made (in a user
        namespace)."""
        ...


@dataclass(frozen=True)
class Comparison:
    """What a :class:`Comparer` wrote: ``descriptor`` names the blob as written to the sink
    (its media type, the digest and size of the bytes written) and ``diff_id`` is the digest
    of the uncompressed tar."""

    descriptor: Descriptor
    diff_id: str

    @property
    def labels(self) -> dict[str, str]:
        """The content labels containerd puts on such a blob."""
        return {LABEL_UNCOMPRESSED: self.diff_id}


class Comparer(Protocol):
    """Computes layers."""

    def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], out: LayerSink, *,
                media_type: str = MEDIA_TYPE_LAYER_GZIP) -> Comparison:
        """Write to ``out`` the layer that turns ``lower`` into ``upper``.

        Contract:

        * ``lower`` may be empty (the layer then adds everything in ``upper``). Both sets are
          only read: they are mounted read-only, or read in place when that is equivalent.
        * The layer is an OCI changeset (``.wh.`` whiteouts for deletions) in ``media_type``:
          ``application/vnd.oci.image.layer.v1.tar`` with ``+gzip`` (the default) or ``+zstd``,
          or plain. Anything else raises ``errdefs.NotImplementedByBerth`` before ``out`` is
          written.
        * ``out`` only gets ``write`` calls: the caller owns it, and commits it (for a content
          writer: ``commit(result.descriptor.size, result.descriptor.digest)``), then puts
          ``result.labels`` on the blob. On error, what was written is garbage: abort it.
        * The same trees give the same bytes (sorted walk, fixed whiteout times, no gzip name or
          time), so committing twice finds the blob already there.
        """
        ...
