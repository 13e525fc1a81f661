"""Garbage collection: mark and sweep over the metadata database."""

from berth.gc.collector import Collector, Scheduler, Stats

__all__ = ["Collector", "Scheduler", "Stats"]
