"""Talking to OCI distribution registries: resolve, fetch, push.

The interfaces are in :mod:`berth.remotes.remotes`; :class:`RegistryResolver` implements them
over HTTP(S) with containerd's hosts configuration (:class:`HostsConfig`, ``certs.d``),
bearer/basic auth from a docker config (:class:`DockerConfig`), retries and mirrors.
"""

from berth.remotes.dockerconfig import DockerConfig
from berth.remotes.hosts import DEFAULT_CONFIG_PATH, HostsConfig, RegistryHost
from berth.remotes.reference import Reference
from berth.remotes.reference import parse as parse_reference
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Credentials, Fetcher, Pusher, Resolver
from berth.remotes.resolver import RegistryResolver

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MAX_MANIFEST_SIZE",
    "Credentials",
    "DockerConfig",
    "Fetcher",
    "HostsConfig",
    "Pusher",
    "Reference",
    "RegistryHost",
    "RegistryResolver",
    "Resolver",
    "parse_reference",
]
