"""Snapshotters: copy-on-write filesystems identified by key."""

from berth.snapshots.snapshotter import Info, Kind, Snapshotter, Usage

__all__ = ["Info", "Kind", "Snapshotter", "Usage"]
