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
from berth.logfmt import LEVELS as LOG_LEVELS

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


def _table(data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise errdefs.InvalidArgument(f"config file {path}: {key} must be a table ([{key}])")
    return value


def _str(table: dict[str, Any], key: str, default: str, path: str, where: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise errdefs.InvalidArgument(f"config file {path}: {where}{key} must be a string")
    return value


def load(path: str, *, required: bool) -> Config:
    """Read ``path``; a missing file gives the defaults unless ``required``. Anything malformed
    raises InvalidArgument naming the file and the key."""
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
    except UnicodeDecodeError as err:
        raise errdefs.InvalidArgument(f"config file {path} is not UTF-8: {err}") from None
    except OSError as err:
        raise errdefs.InvalidArgument(f"config file {path} cannot be read: {err.strerror}") \
            from None
    version = data.get("version", 1)
    if version not in (1, 2):
        raise errdefs.InvalidArgument(
            f"config file {path}: version {version} is not supported; use version = 2")
    for key in data:
        if key not in _KNOWN[""]:
            cfg.unknown_keys.append(key)
    sections = {name: _table(data, name, path) for name in ("grpc", "metrics", "debug")}
    for name, table in sections.items():
        cfg.unknown_keys.extend(f"{name}.{k}" for k in table if k not in _KNOWN[name])
    cfg.root = _str(data, "root", cfg.root, path)
    cfg.state = _str(data, "state", cfg.state, path)
    grpc = sections["grpc"]
    cfg.address = _str(grpc, "address", cfg.address, path, "grpc.")
    gid = grpc.get("gid", 0)
    if not isinstance(gid, int) or isinstance(gid, bool) or gid < 0:
        raise errdefs.InvalidArgument(f"config file {path}: grpc.gid must be a group number")
    cfg.grpc_gid = gid
    cfg.metrics_address = _str(sections["metrics"], "address", "", path, "metrics.")
    cfg.debug_level = _str(sections["debug"], "level", cfg.debug_level, path, "debug.")
    if cfg.debug_level.lower() not in LOG_LEVELS:
        raise errdefs.InvalidArgument(
            f"config file {path}: debug.level {cfg.debug_level!r} is not one of "
            f"{', '.join(LOG_LEVELS)}")
    disabled = data.get("disabled_plugins", [])
    if not isinstance(disabled, list) or not all(isinstance(p, str) for p in disabled):
        raise errdefs.InvalidArgument(
            f"config file {path}: disabled_plugins must be a list of plugin ids")
    cfg.disabled_plugins = list(disabled)
    plugins = _table(data, "plugins", path)
    # Version 1 used short ids ([plugins.overlayfs]); version 2 uses "<type>.<id>" keys.
    cfg.plugins = {str(k): dict(v) for k, v in plugins.items() if isinstance(v, dict)}
    return cfg
