"""Prometheus metrics: per-container cgroup statistics and the daemon's own."""
