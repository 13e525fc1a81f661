"""The CRI runtime's identity and conditions, as containerd 1.6.20 reports them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from berth import CONTAINERD_VERSION

# containerd's pkg/cri/server constants: the CRI's own "kube API" version, and the runtime name.
KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "containerd"
RUNTIME_API_VERSION = "v1"

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
CNI_NOT_INITIALIZED = "cni plugin not initialized"

DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
CNI_CONF_SUFFIXES = (".conf", ".conflist", ".json")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class Runtime:
    """The answers of RuntimeService.Version and Status.

    Pods and CNI are not run yet: the network is ready only once ``cni_conf_dir`` holds a
    network configuration (as libcni finds one), which is when containerd stops reporting
    ``NetworkPluginNotReady``.
    """

    def __init__(self, cni_conf_dir: str = DEFAULT_CNI_CONF_DIR) -> None:
        self.cni_conf_dir = cni_conf_dir

    def version(self) -> tuple[str, str, str, str]:
        """(version, runtime_name, runtime_version, runtime_api_version)."""
        return KUBE_API_VERSION, RUNTIME_NAME, CONTAINERD_VERSION, RUNTIME_API_VERSION

    def _cni_configured(self) -> bool:
        try:
            names = os.listdir(self.cni_conf_dir)
        except OSError:
            return False
        return any(Path(name).suffix in CNI_CONF_SUFFIXES for name in names)

    def conditions(self) -> list[Condition]:
        network = Condition(NETWORK_READY, True)
        if not self._cni_configured():
            network = Condition(NETWORK_READY, False, NETWORK_NOT_READY_REASON,
                                f"Network plugin returns error: {CNI_NOT_INITIALIZED}")
        return [Condition(RUNTIME_READY, True), network]
