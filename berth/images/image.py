"""The image record."""

from __future__ import annotations

from dataclasses import dataclass, field

from berth.oci.image import Descriptor


@dataclass
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0
