"""Garbage collection's scheduling: when to run the mark and sweep, which lives with the
database it sweeps (:mod:`berth.metadata.gc`)."""

from berth.gc.scheduler import Scheduler

__all__ = ["Scheduler"]
