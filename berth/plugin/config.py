"""The daemon's config.toml, in containerd's format (``version = 2``).

Known keys: ``version``, ``root``, ``state``, ``disabled_plugins``, ``[grpc] address, uid, gid``,
``[metrics] address``, ``[debug] level``, and ``[plugins."<type>.<id>"]`` sections handed to each
plugin as-is. Unknown keys are reported (the caller logs them) and otherwise ignored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs

DEFAULT_ROOT = "/var/lib/berth"
DEFAULT_STATE = "/run/berth"
DEFAULT_ADDRESS = "/run/berth/berth.sock"
DEFAULT_CONFIG = "/etc/berth/config.toml"

_KNOWN = {
    "": {"version", "root", "state", "disabled_plugins", "grpc", "metrics", "debug", "plugins",
         "required_plugins", "oom_score", "imports", "temp", "plugin_dir", "ttrpc", "timeouts",
         "cgroup", "proxy_plugins", "stream_processors"},
    "grpc": {"address", "uid", "gid", "max_recv_message_size", "max_send_message_size",
             "tcp_address", "tcp_tls_cert", "tcp_tls_key", "tcp_tls_ca"},
    "metrics": {"address", "grpc_histogram"},
    "debug": {"level", "address", "uid", "gid", "format"},
}


@dataclass
class Config:
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    address: str = DEFAULT_ADDRESS
    grpc_gid: int = 0
    metrics_address: str = ""
    debug_level: str = "info"
    disabled_plugins: list[str] = field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)


def load(path: str, *, required: bool) -> Config:
    """Read ``path``; a missing file gives the defaults unless ``required``."""
    cfg = Config()
    if not os.path.exists(path):
        if required:
            raise errdefs.NotFound(f"config file {path} does not exist")
        return cfg
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise errdefs.InvalidArgument(f"config file {path} is not valid TOML: {err}") from None
    version = data.get("version", 1)
    if version not in (1, 2):
        raise errdefs.InvalidArgument(
            f"config file {path}: version {version} is not supported; use version = 2")
    for key in data:
        if key not in _KNOWN[""]:
            cfg.unknown_keys.append(key)
    for section in ("grpc", "metrics", "debug"):
        for key in data.get(section, {}):
            if key not in _KNOWN[section]:
                cfg.unknown_keys.append(f"{section}.{key}")
    cfg.root = str(data.get("root", cfg.root))
    cfg.state = str(data.get("state", cfg.state))
    grpc = data.get("grpc", {})
    cfg.address = str(grpc.get("address", cfg.address))
    cfg.grpc_gid = int(grpc.get("gid", 0))
    cfg.metrics_address = str(data.get("metrics", {}).get("address", ""))
    cfg.debug_level = str(data.get("debug", {}).get("level", cfg.debug_level))
    cfg.disabled_plugins = [str(p) for p in data.get("disabled_plugins", [])]
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict):
        raise errdefs.InvalidArgument(f"config file {path}: [plugins] must be a table")
    # Version 1 used short ids ([plugins.overlayfs]); version 2 uses "<type>.<id>" keys.
    cfg.plugins = {str(k): dict(v) for k, v in plugins.items() if isinstance(v, dict)}
    return cfg
