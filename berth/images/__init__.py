"""Images: names pointing at a target descriptor (manifest or index) in the content store."""

from berth.images.image import Image

__all__ = ["Image"]
