"""The client side's conversions between API messages and Berth's own types (those the
servicers need too are :mod:`berth.wire`'s; timestamps are :mod:`berth.clock`'s)."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.field_mask_pb2 import FieldMask

from berth.clock import from_timestamp as from_timestamp
from berth.clock import timestamp as timestamp
from berth.wire import descriptor as descriptor
from berth.wire import from_descriptor as from_descriptor
from berth.wire import from_mounts as from_mounts


def field_mask(paths: Sequence[str]) -> FieldMask:
    return FieldMask(paths=list(paths))
