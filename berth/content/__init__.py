"""The content store: blobs addressed by their sha256 digest."""

from berth.content.content import (
    Info,
    Ingester,
    IngestManager,
    Manager,
    Provider,
    ReaderAt,
    Status,
    Store,
    Writer,
)

__all__ = [
    "Info",
    "IngestManager",
    "Ingester",
    "Manager",
    "Provider",
    "ReaderAt",
    "Status",
    "Store",
    "Writer",
]
