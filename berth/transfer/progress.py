"""What a transfer reports as it goes: one :class:`Progress` per change of a piece's state.

Kept apart from the pull and push machinery so that whoever only shows progress (the ``berth``
CLI, over :mod:`berth.proxy.transfer`) imports a record, not a registry client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from berth.oci.image import Descriptor


@dataclass
class Progress:
    """One update: ``kind`` is image/index/manifest/config/layer; ``status`` one of resolving,
    waiting, downloading, downloaded, uploading, exists, extracting, mounted, done. A transfer
    that succeeds ends with ``kind`` image, ``status`` done, the image's ``name`` and its
    target as ``descriptor``."""

    kind: str
    status: str
    descriptor: Descriptor | None = None
    offset: int = 0
    total: int = 0
    name: str = ""


ProgressFn = Callable[[Progress], None]
