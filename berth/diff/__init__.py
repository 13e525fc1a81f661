"""Applying image layers to mounts and computing layers from them (containerd's ``diff`` and
``archive``).

The interfaces are in :mod:`berth.diff.diff`; :class:`WalkingDiff` implements both over plain
mounts. :func:`apply_tar` and :func:`write_diff` are the mount-free cores.
"""

from berth.diff.archive import apply_tar
from berth.diff.compression import DigestingReader, decompressed_reader
from berth.diff.diff import (
    LABEL_UNCOMPRESSED,
    Applier,
    BlobOpener,
    Comparer,
    Comparison,
    LayerSink,
    Readable,
    UpperApplier,
)
from berth.diff.walking import WalkingDiff
from berth.diff.writediff import write_diff

__all__ = [
    "LABEL_UNCOMPRESSED",
    "Applier",
    "BlobOpener",
    "Comparer",
    "Comparison",
    "DigestingReader",
    "LayerSink",
    "Readable",
    "UpperApplier",
    "WalkingDiff",
    "apply_tar",
    "decompressed_reader",
    "write_diff",
]
