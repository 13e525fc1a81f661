"""Images: names pointing at a target descriptor (manifest or index) in the content store, and
the documents they lead to (:mod:`~berth.images.manifest`, :mod:`~berth.images.platforms`).
Pulling, pushing and unpacking them is :mod:`berth.transfer`'s work."""

from berth.images.image import Image, Store

__all__ = ["Image", "Store"]
