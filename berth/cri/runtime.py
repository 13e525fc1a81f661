"""The CRI runtime's identity and conditions, as containerd 1.6.20 reports them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from berth import CONTAINERD_VERSION

# containerd's pkg/cri/server constants: the CRI's own "kube API" version, and the runtime name.
KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "containerd"
RUNTIME_API_VERSION = "v1"

log = logging.getLogger(__name__)

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"



@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class Runtime:
    """The answers of RuntimeService.Version, Status and UpdateRuntimeConfig.

    The network is ready once CNI has a network configuration (``network_error`` answers
    None), which is when containerd stops reporting ``NetworkPluginNotReady``.
    """

    def __init__(self, network_error: Callable[[], str | None]) -> None:
        self.network_error = network_error
        self.pod_cidr = ""

    def version(self) -> tuple[str, str, str, str]:
        """(version, runtime_name, runtime_version, runtime_api_version)."""
        return KUBE_API_VERSION, RUNTIME_NAME, CONTAINERD_VERSION, RUNTIME_API_VERSION

    def conditions(self) -> list[Condition]:
        network = Condition(NETWORK_READY, True)
        error = self.network_error()
        if error is not None:
            network = Condition(NETWORK_READY, False, NETWORK_NOT_READY_REASON,
                                f"Network plugin returns error: {error}")
        return [Condition(RUNTIME_READY, True), network]

    def update_pod_cidr(self, cidr: str) -> None:
        """UpdateRuntimeConfig: the node's pod CIDR. containerd writes a CNI config from its
        ``conf_template`` with it; without a template (Berth has none yet) it is only kept."""
        if cidr and cidr != self.pod_cidr:
            log.info("cri: the node's pod CIDR is now %s", cidr)
        self.pod_cidr = cidr
