"""Berth: a core container runtime daemon that speaks containerd's protocols."""

__version__ = "0.1.0"
