"""The one wall clock Berth stamps records and events with: nanoseconds since the epoch, as
containerd's timestamps are."""

from __future__ import annotations

import time


def now_ns() -> int:
    return time.time_ns()
