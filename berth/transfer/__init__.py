"""Moving images between registries, the content store and snapshots: pulling
(:mod:`~berth.transfer.pull`), pushing (:mod:`~berth.transfer.push`) and unpacking layers into a
snapshot chain (:mod:`~berth.transfer.unpack`).

Everything here is typed against interfaces (``content.Store``, ``images.Store``,
``leases.Manager``, ``Snapshotter``, ``Applier``), so it runs over berthd's local stores or
over clients of its API alike; optional capabilities (:class:`~berth.diff.diff.UpperApplier`,
:class:`~berth.snapshots.snapshotter.Reparenting`) are found with ``isinstance``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from berth.transfer.progress import Progress, ProgressFn

if TYPE_CHECKING:
    from berth.transfer.pull import LABEL_DISTRIBUTION_SOURCE, Puller, PullOptions
    from berth.transfer.push import ImagePusher
    from berth.transfer.unpack import Unpacker

# The machinery is imported when first named: what only shows a transfer's progress (the CLI)
# imports berth.transfer.progress without a registry client.
_LAZY = {"LABEL_DISTRIBUTION_SOURCE": "pull", "Puller": "pull", "PullOptions": "pull",
         "ImagePusher": "push", "Unpacker": "unpack"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"berth.transfer.{module}"), name)


__all__ = [
    "LABEL_DISTRIBUTION_SOURCE",
    "ImagePusher",
    "Progress",
    "ProgressFn",
    "PullOptions",
    "Puller",
    "Unpacker",
]
