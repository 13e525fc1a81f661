"""The one wall clock Berth stamps records and events with: nanoseconds since the epoch, as
containerd's timestamps are; and their wire form, ``google.protobuf.Timestamp``."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

# Go's zero time.Time, which Go peers send for "unset".
_GO_ZERO_SECONDS = -62135596800


def now_ns() -> int:
    return time.time_ns()


def timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def from_timestamp(ts: Timestamp) -> int:
    """Nanoseconds since the epoch; 0 for unset (including Go's zero time)."""
    if ts.seconds <= _GO_ZERO_SECONDS:
        return 0
    return int(ts.ToNanoseconds())
