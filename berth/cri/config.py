"""The CRI plugin's configuration: containerd 1.6.20's ``[plugins."io.containerd.grpc.v1.cri"]``
table, its keys and their defaults.

:func:`load` reads the table into a :class:`Config`; a key containerd knows but Berth does not act
on is kept (and listed in :attr:`Config.ignored`), a key containerd does not know is reported in
:attr:`Config.unknown` so that berthd warns about it (a misspelt key otherwise silently keeps its
default). A value of the wrong type is an InvalidArgument naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs

DEFAULT_SANDBOX_IMAGE = "registry.k8s.io/pause:3.6"
DEFAULT_RUNTIME_NAME = "runc"
DEFAULT_RUNTIME_TYPE = "io.containerd.runc.v2"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_MAX_LOG_LINE = 16 * 1024
DEFAULT_NETNS_DIR = "/var/run/netns"
DEFAULT_STREAM_IDLE_TIMEOUT = 4 * 3600.0  # containerd's "4h0m0s"

# Keys containerd 1.6.20 reads that Berth accepts without acting on them (yet).
_IGNORED_TOP = {
    "disable_tcp_service", "selinux_category_range",
    "max_concurrent_downloads", "disable_proc_mount", "unset_seccomp_profile",
    "tolerate_missing_hugetlb_controller", "disable_hugetlb_controller",
    "device_ownership_from_security_context", "ignore_image_defined_volumes",
    "stats_collect_period",
    "systemd_cgroup", "enable_cdi", "cdi_spec_dirs", "image_pull_progress_timeout",
    "image_decryption", "tcp_address", "tcp_port", "tcp_tls_cert",
    "tcp_tls_key", "drain_exec_sync_io_timeout",
}
_KNOWN_TOP = {
    "sandbox_image", "restrict_oom_score_adj", "max_container_log_line_size", "disable_cgroup",
    "enable_unprivileged_ports", "enable_unprivileged_icmp", "netns_mounts_under_state_dir",
    "cni", "containerd", "registry", "stream_server_address", "stream_server_port",
    "enable_tls_streaming", "x509_key_pair_streaming", "disable_apparmor", "enable_selinux",
    "stream_idle_timeout", *_IGNORED_TOP,
}
_KNOWN_CNI = {"bin_dir", "conf_dir", "max_conf_num", "conf_template", "ip_pref"}
_KNOWN_CONTAINERD = {
    "snapshotter", "default_runtime_name", "runtimes", "no_pivot", "disable_snapshot_annotations",
    "discard_unpacked_layers", "default_runtime", "untrusted_workload_runtime",
    "ignore_rdt_not_enabled_errors",
}
_KNOWN_RUNTIME = {
    "runtime_type", "runtime_engine", "runtime_root", "runtime_path", "options",
    "privileged_without_host_devices", "pod_annotations", "container_annotations",
    "base_runtime_spec", "cni_conf_dir", "cni_max_conf_num",
}
_KNOWN_REGISTRY = {"config_path", "mirrors", "configs", "auths", "headers"}
_KNOWN_KEY_PAIR = {"tls_cert_file", "tls_key_file"}


@dataclass(frozen=True)
class RuntimeHandler:
    """One ``containerd.runtimes.NAME`` table: the runtime (shim) a pod of that handler runs
    under. ``runtime_path``: a shim binary to run instead of the one ``runtime_type`` names."""

    name: str
    runtime_type: str = DEFAULT_RUNTIME_TYPE
    runtime_path: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    pod_annotations: tuple[str, ...] = ()
    container_annotations: tuple[str, ...] = ()
    privileged_without_host_devices: bool = False


@dataclass(frozen=True)
class Config:
    sandbox_image: str = DEFAULT_SANDBOX_IMAGE
    restrict_oom_score_adj: bool = False
    max_container_log_line_size: int = DEFAULT_MAX_LOG_LINE
    disable_cgroup: bool = False
    enable_unprivileged_ports: bool = False
    enable_unprivileged_icmp: bool = False
    netns_mounts_under_state_dir: bool = False
    cni_bin_dirs: tuple[str, ...] = (DEFAULT_CNI_BIN_DIR,)
    cni_conf_dir: str = DEFAULT_CNI_CONF_DIR
    cni_max_conf_num: int = 1
    snapshotter: str = "overlayfs"
    default_runtime_name: str = DEFAULT_RUNTIME_NAME
    runtimes: Mapping[str, RuntimeHandler] = field(
        default_factory=lambda: {DEFAULT_RUNTIME_NAME: RuntimeHandler(DEFAULT_RUNTIME_NAME)})
    registry_config_path: str = ""
    stream_server_address: str = "127.0.0.1"
    stream_server_port: int = 0
    """0: a port of the kernel's choosing (containerd's default "0")."""
    disable_apparmor: bool = False
    """Run containers without AppArmor on a host that enforces it (see
    :func:`berth.cri.spec.apparmor_profile`)."""
    stream_tls: tuple[str, str] | None = None
    """The streaming server's certificate and key files (``enable_tls_streaming`` with
    ``x509_key_pair_streaming``); None: plain HTTP."""
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    """Seconds a streaming connection may carry nothing either way before it is closed (0: no
    limit)."""
    ignored: tuple[str, ...] = ()
    """Keys containerd reads that were set but Berth does not act on."""
    unknown: tuple[str, ...] = ()
    """Keys containerd does not know (warned about)."""

    def handler(self, name: str) -> RuntimeHandler:
        """The runtime handler a pod asks for (the default for ``""``); NotFound otherwise,
        as containerd answers."""
        handler = self.runtimes.get(name or self.default_runtime_name)
        if handler is None:
            raise errdefs.NotFound(f"no runtime for {name!r} is configured")
        return handler


def _table(value: object, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise errdefs.InvalidArgument(f"cri config: {key} must be a table")
    return value


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
         where: str) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) and kind is int:
        raise errdefs.InvalidArgument(f"cri config: {where}{key} must be a number")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise errdefs.InvalidArgument(f"cri config: {where}{key} must be a {names}")
    return value


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errdefs.InvalidArgument(f"cri config: {key} must be a list of strings")
    return tuple(value)


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> list[str]:
    return [f"{where}{key}" for key in table if key not in known]


def _runtime(name: str, table: Mapping[str, Any]) -> RuntimeHandler:
    where = f"containerd.runtimes.{name}."
    options = _table(table.get("options", {}), where + "options")
    return RuntimeHandler(
        name=name,
        runtime_type=_get(table, "runtime_type", str, DEFAULT_RUNTIME_TYPE, where),
        runtime_path=_get(table, "runtime_path", str, "", where),
        options=dict(options),
        pod_annotations=_strings(table.get("pod_annotations", []), where + "pod_annotations"),
        container_annotations=_strings(table.get("container_annotations", []),
                                       where + "container_annotations"),
        privileged_without_host_devices=_get(table, "privileged_without_host_devices", bool,
                                             False, where),
    )


def _port(value: object) -> int:
    """stream_server_port: a string in containerd's config ("0"), a number accepted too."""
    try:
        port = int(str(value), 10)
    except ValueError:
        port = -1
    if isinstance(value, bool) or not 0 <= port < 65536:
        raise errdefs.InvalidArgument(
            f"cri config: stream_server_port {value!r} must be a port number (\"0\": any)")
    return port


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def _duration(value: object, key: str, default: float) -> float:
    """A Go duration string (``"4h0m0s"``, ``"90s"``, ``"1.5h"``, ``"+5s"``; ``"0"``) in
    seconds, as containerd parses durations in its CRI config; ``""`` is ``default``, as
    containerd leaves an empty value unparsed. A negative duration is refused (containerd would
    take it as already expired)."""
    if value == "":
        return default
    text = value.removeprefix("+") if isinstance(value, str) else ""
    seconds, pos = 0.0, 0
    if text == "0":
        pos = 1
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            break
        seconds += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not text or pos != len(text):
        raise errdefs.InvalidArgument(
            f"cri config: {key} {value!r} is not a duration (like \"4h0m0s\", \"30m\", \"0\")")
    return seconds


def _stream_tls(enabled: bool, cert: str, key: str) -> tuple[str, str] | None:
    """The streaming server's key pair, checked as containerd checks it: both files or
    neither, and only with ``enable_tls_streaming``. containerd makes a self-signed certificate
    when TLS is on without a key pair; Berth refuses to start instead of serving plain HTTP."""
    if not enabled:
        if cert or key:
            raise errdefs.InvalidArgument(
                "cri config: x509_key_pair_streaming is set but enable_tls_streaming is not: "
                "set it, or remove the key pair")
        return None
    if not cert and not key:
        raise errdefs.InvalidArgument(
            "cri config: enable_tls_streaming needs x509_key_pair_streaming.tls_cert_file and "
            "tls_key_file (Berth does not make a self-signed certificate)")
    if not cert or not key:
        raise errdefs.InvalidArgument(
            "cri config: enable_tls_streaming needs x509_key_pair_streaming."
            + ("tls_key_file" if cert else "tls_cert_file"))
    return cert, key


def load(table: Mapping[str, Any]) -> Config:
    """The configuration in ``table`` (the plugin's TOML table), containerd's defaults for what
    it leaves out."""
    cni = _table(table.get("cni", {}), "cni")
    ctrd = _table(table.get("containerd", {}), "containerd")
    registry = _table(table.get("registry", {}), "registry")
    unknown = (_unknown(table, _KNOWN_TOP, "") + _unknown(cni, _KNOWN_CNI, "cni.")
               + _unknown(ctrd, _KNOWN_CONTAINERD, "containerd.")
               + _unknown(registry, _KNOWN_REGISTRY, "registry."))
    runtimes = {DEFAULT_RUNTIME_NAME: RuntimeHandler(DEFAULT_RUNTIME_NAME)}
    for name, value in _table(ctrd.get("runtimes", {}), "containerd.runtimes").items():
        rt = _table(value, f"containerd.runtimes.{name}")
        unknown += _unknown(rt, _KNOWN_RUNTIME, f"containerd.runtimes.{name}.")
        runtimes[str(name)] = _runtime(str(name), rt)
    bin_dir = cni.get("bin_dir", DEFAULT_CNI_BIN_DIR)
    bin_dirs = (bin_dir,) if isinstance(bin_dir, str) else _strings(bin_dir, "cni.bin_dir")
    default_runtime = _get(ctrd, "default_runtime_name", str, DEFAULT_RUNTIME_NAME,
                           "containerd.")
    if default_runtime not in runtimes:
        raise errdefs.InvalidArgument(
            f"cri config: containerd.default_runtime_name {default_runtime!r} names no "
            "[containerd.runtimes] table")
    key_pair = _table(table.get("x509_key_pair_streaming", {}), "x509_key_pair_streaming")
    unknown += _unknown(key_pair, _KNOWN_KEY_PAIR, "x509_key_pair_streaming.")
    stream_address = _get(table, "stream_server_address", str, "127.0.0.1", "")
    if not stream_address:
        raise errdefs.InvalidArgument(
            "cri config: stream_server_address must name the address to listen on "
            "(containerd's default is 127.0.0.1; Berth does not guess the node's address)")
    if _get(table, "enable_selinux", bool, False, ""):
        raise errdefs.InvalidArgument(
            "cri config: enable_selinux is not supported by Berth (it does not label processes "
            "and mounts); remove it to run without SELinux labels")
    max_line = _get(table, "max_container_log_line_size", int, DEFAULT_MAX_LOG_LINE, "")
    if max_line == 0 or max_line < -1:
        raise errdefs.InvalidArgument(
            "cri config: max_container_log_line_size must be positive, or -1 for no limit")
    return Config(
        sandbox_image=_get(table, "sandbox_image", str, DEFAULT_SANDBOX_IMAGE, ""),
        restrict_oom_score_adj=_get(table, "restrict_oom_score_adj", bool, False, ""),
        max_container_log_line_size=max_line,
        disable_cgroup=_get(table, "disable_cgroup", bool, False, ""),
        enable_unprivileged_ports=_get(table, "enable_unprivileged_ports", bool, False, ""),
        enable_unprivileged_icmp=_get(table, "enable_unprivileged_icmp", bool, False, ""),
        netns_mounts_under_state_dir=_get(table, "netns_mounts_under_state_dir", bool, False,
                                          ""),
        cni_bin_dirs=bin_dirs,
        cni_conf_dir=_get(cni, "conf_dir", str, DEFAULT_CNI_CONF_DIR, "cni."),
        cni_max_conf_num=_get(cni, "max_conf_num", int, 1, "cni."),
        snapshotter=_get(ctrd, "snapshotter", str, "overlayfs", "containerd."),
        default_runtime_name=default_runtime,
        runtimes=runtimes,
        registry_config_path=_get(registry, "config_path", str, "", "registry."),
        disable_apparmor=_get(table, "disable_apparmor", bool, False, ""),
        stream_server_address=stream_address,
        stream_server_port=_port(table.get("stream_server_port", "0")),
        stream_tls=_stream_tls(_get(table, "enable_tls_streaming", bool, False, ""),
                               _get(key_pair, "tls_cert_file", str, "",
                                    "x509_key_pair_streaming."),
                               _get(key_pair, "tls_key_file", str, "",
                                    "x509_key_pair_streaming.")),
        stream_idle_timeout=_duration(table.get("stream_idle_timeout", ""),
                                      "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT),
        ignored=tuple(sorted(k for k in table if k in _IGNORED_TOP)),
        unknown=tuple(unknown),
    )
