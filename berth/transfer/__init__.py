"""Moving images between registries, the content store and snapshots: pulling
(:mod:`~berth.transfer.pull`), pushing (:mod:`~berth.transfer.push`) and unpacking layers into a
snapshot chain (:mod:`~berth.transfer.unpack`).

Everything here is typed against interfaces (``content.Store``, ``images.Store``,
``leases.Manager``, ``Snapshotter``, ``Applier``), so it runs over berthd's local stores or
over clients of its API alike; optional capabilities (:class:`~berth.diff.diff.UpperApplier`,
:class:`~berth.snapshots.snapshotter.Reparenting`) are found with ``isinstance``.
"""

from berth.transfer.pull import (
    LABEL_DISTRIBUTION_SOURCE,
    Progress,
    ProgressFn,
    Puller,
    PullOptions,
)
from berth.transfer.push import ImagePusher
from berth.transfer.unpack import Unpacker

__all__ = [
    "LABEL_DISTRIBUTION_SOURCE",
    "ImagePusher",
    "Progress",
    "ProgressFn",
    "PullOptions",
    "Puller",
    "Unpacker",
]
