"""A pod's network, as containerd 1.6's CRI makes it: a network namespace pinned by berthd
(:mod:`berth.cri.netns`), joined by CNI (:mod:`berth.cri.cni`: ``lo`` by the loopback plugin,
``eth0`` by the configured network) with the pod's port mappings and DNS as capabilities and
containerd's CNI_ARGS; the pod IP is the first address on ``eth0``.

The CNI configuration directory is read again whenever it changes (its modification time), so a
node whose network configuration is written after berthd started (the usual kubelet set-up)
becomes ready without a restart, as containerd's config syncer makes it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.cni import CNI, Capabilities, DNSConfig, PortMapping, Result
from berth.cri.config import Config
from berth.cri.netns import NetNS
from berth.cri.store import Sandbox

log = logging.getLogger(__name__)

_PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


def cni_args(sb: Sandbox) -> list[tuple[str, str]]:
    meta = sb.config.metadata
    return [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", meta.namespace),
            ("K8S_POD_NAME", meta.name), ("K8S_POD_INFRA_CONTAINER_ID", sb.id),
            ("K8S_POD_UID", meta.uid)]


def capabilities(config: pb.PodSandboxConfig) -> Capabilities:
    ports = tuple(PortMapping(host_port=p.host_port, container_port=p.container_port,
                              protocol=_PROTOCOLS.get(p.protocol, "tcp"), host_ip=p.host_ip)
                  for p in config.port_mappings)
    dns = None
    if config.HasField("dns_config"):
        d = config.dns_config
        dns = DNSConfig(tuple(d.servers), tuple(d.searches), tuple(d.options))
    return Capabilities(port_mappings=ports, dns=dns)


def result_document(result: Result) -> dict[str, Any]:
    """A CNI result as containerd keeps it in the sandbox metadata (go-cni's Result)."""
    return {
        "Interfaces": {
            name: {"IPConfigs": [{"IP": c.ip, "Gateway": c.gateway} for c in iface.ip_configs]
                   or None, "Mac": iface.mac, "Sandbox": iface.sandbox}
            for name, iface in result.interfaces.items()},
        # One entry per network, empty ones too, as go-cni keeps them.
        "DNS": [raw.get("dns") or {} for raw in result.raw],
        "Routes": [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in result.routes]
        or None,
    }


class PodNetwork:
    def __init__(self, config: Config, *, netns_dir: str, cache_dir: str = "") -> None:
        self.netns_dir = netns_dir
        self.cni = CNI(config.cni_conf_dir, config.cni_bin_dirs,
                       *((cache_dir,) if cache_dir else ()),
                       max_conf_num=config.cni_max_conf_num)
        self._lock = threading.Lock()
        self._seen: float | None = None
        self._refresh()

    def _refresh(self) -> None:
        """Load the CNI configuration again if its directory changed."""
        try:
            mtime: float | None = os.stat(self.cni.conf_dir).st_mtime
        except OSError:
            mtime = None
        with self._lock:
            if mtime == self._seen and self._seen is not None:
                return
            self._seen = mtime
        try:
            self.cni.load()
        except errdefs.BerthError as err:
            log.info("cri: no usable CNI configuration yet: %s", err)

    def error(self) -> str | None:
        """Why pods cannot get a network (RuntimeStatus's NetworkReady), or None."""
        self._refresh()
        try:
            self.cni.status()
        except errdefs.BerthError as err:
            return str(err)
        return None

    # -- namespaces

    def create_netns(self) -> str:
        return NetNS.create(self.netns_dir).path

    def remove_netns(self, path: str) -> None:
        NetNS.load(path).remove()

    def netns_closed(self, path: str) -> bool:
        return not NetNS.load(path).pinned()

    # -- CNI

    def setup(self, sb: Sandbox) -> None:
        """ADD the pod's networks (undone by the CNI layer itself when it fails)."""
        self._refresh()
        try:
            result = self.cni.setup(sb.id, sb.netns_path, cni_args(sb), capabilities(sb.config))
        except errdefs.BerthError as err:
            # containerd answers Unknown for a failed CNI ADD (a plain error).
            raise errdefs.Unknown(
                f'failed to setup network for sandbox "{sb.id}": {err}') from None
        sb.ip, additional = result.pod_ips()
        sb.additional_ips = list(additional)
        sb.cni_result = result_document(result)

    def teardown(self, sb: Sandbox) -> None:
        """DEL the pod's networks (a pod whose namespace is gone is torn down too)."""
        self._refresh()
        self.cni.remove(sb.id, sb.netns_path, cni_args(sb), capabilities(sb.config))
