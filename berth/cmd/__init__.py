"""Entry points: berthd, berth, containerd-shim-berth-v2."""
