"""Conversions between API messages and Berth's own types, for the servicers (those the
proxies need too are :mod:`berth.wire`'s, re-exported here)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

from berth.clock import from_timestamp as from_timestamp
from berth.clock import timestamp as timestamp
from berth.wire import descriptor as descriptor
from berth.wire import from_descriptor as from_descriptor
from berth.wire import from_mounts as from_mounts
from berth.wire import mounts as mounts

T = TypeVar("T")


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items, the last one shorter if need be, none for no items (as
    Python 3.12's ``itertools.batched``): a listing streamed as messages of bounded size. Items
    are drawn only as each batch is needed."""
    if n < 1:
        raise ValueError(f"batch size must be at least 1, got {n}")
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
