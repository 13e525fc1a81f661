"""Containers: the metadata a task is created from (spec, runtime, root filesystem snapshot).

The record, the :class:`Store` contract and validation live in :mod:`berth.containers.container`;
the SQLite-backed store in :mod:`berth.metadata.containers`; the gRPC service in
:mod:`berth.services.containers`.
"""

from berth.containers.container import (
    MAX_ID_LENGTH,
    UPDATABLE,
    AnyValue,
    Container,
    RuntimeInfo,
    Store,
    pack_spec,
    unpack_spec,
    validate,
    validate_id,
)

__all__ = [
    "MAX_ID_LENGTH",
    "UPDATABLE",
    "AnyValue",
    "Container",
    "RuntimeInfo",
    "Store",
    "pack_spec",
    "unpack_spec",
    "validate",
    "validate_id",
]
