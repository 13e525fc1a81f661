"""Berth: a core container runtime daemon that speaks containerd's protocols."""

__version__ = "0.1.0"

# The containerd API line Berth serves, as semver with Berth's own version as build metadata,
# so clients that gate features on containerd's version parse it (ctr notes the mismatch). The
# Version service and the CRI's runtime_version both report it, as containerd's do.
CONTAINERD_API_VERSION = "1.6.20"
CONTAINERD_VERSION = f"{CONTAINERD_API_VERSION}+berth.{__version__}"
