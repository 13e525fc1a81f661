"""The image record, and the contract of a store of them."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from berth.oci.image import Descriptor


@dataclass
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0


class Store(Protocol):
    """Images by name, in the current namespace (containerd's ``images.Store``); the metadata
    database keeps them (:class:`berth.metadata.images.ImageStore`).

    Contract: names are unique per namespace; ``create`` raises ``AlreadyExists`` for a name in
    use, ``get``/``update``/``delete`` raise ``NotFound`` for one that is not. ``update`` with no
    field paths replaces the image; otherwise ``labels``/``labels.<key>``, ``target`` and
    ``annotations``/``annotations.<key>`` name what changes. The content an image references
    stays while the image does; after ``delete`` the garbage collector may take it, at once when
    ``sync``.
    """

    def get(self, name: str) -> Image: ...

    def list(self, filter_strings: Sequence[str] = ()) -> builtins.list[Image]:
        """Images matching any of the filters (``name``, ``target.digest``,
        ``target.mediatype``, ``labels.<key>``); all with none."""
        ...

    def create(self, image: Image) -> Image: ...

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image: ...

    def delete(self, name: str, *, sync: bool = False) -> None: ...
