"""Talking to OCI distribution registries: resolve, fetch, push.

The interfaces are in :mod:`berth.remotes.remotes`; :class:`RegistryResolver` implements them
over HTTP(S) with containerd's hosts configuration (:class:`HostsConfig`, ``certs.d``),
bearer/basic auth from a docker config (:class:`DockerConfig`), retries and mirrors.

The names below are loaded when first used (PEP 562): the HTTP stack (urllib3, ssl, http,
email: about 7 MiB in berthd) is only imported once something talks to a registry, and
importing an interface module such as :mod:`berth.remotes.remotes` does not pull it in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from berth.remotes.dockerconfig import DockerConfig
    from berth.remotes.hosts import DEFAULT_CONFIG_PATH, HostsConfig, RegistryHost
    from berth.remotes.reference import Reference
    from berth.remotes.reference import parse as parse_reference
    from berth.remotes.remotes import (
        MAX_MANIFEST_SIZE,
        Credentials,
        Fetcher,
        Pusher,
        Resolver,
    )
    from berth.remotes.resolver import RegistryResolver

# name -> (module, attribute)
_LAZY = {
    "DEFAULT_CONFIG_PATH": ("hosts", "DEFAULT_CONFIG_PATH"),
    "MAX_MANIFEST_SIZE": ("remotes", "MAX_MANIFEST_SIZE"),
    "Credentials": ("remotes", "Credentials"),
    "DockerConfig": ("dockerconfig", "DockerConfig"),
    "Fetcher": ("remotes", "Fetcher"),
    "HostsConfig": ("hosts", "HostsConfig"),
    "Pusher": ("remotes", "Pusher"),
    "Reference": ("reference", "Reference"),
    "RegistryHost": ("hosts", "RegistryHost"),
    "RegistryResolver": ("resolver", "RegistryResolver"),
    "Resolver": ("remotes", "Resolver"),
    "parse_reference": ("reference", "parse"),
}

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


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value
