"""Pod networking through CNI plugins, as containerd 1.6's CRI runs them (go-cni over libcni).

Configuration (:meth:`CNI.load`, go-cni's ``WithLoNetwork`` + ``WithDefaultConf``): first a
loopback network (``cni-loopback``, plugin ``loopback``) on ``lo``; then, from ``conf_dir``, the
files ending in ``.conf``, ``.conflist`` or ``.json`` sorted by name, of which the first
``max_conf_num`` valid ones (1 by default, containerd's ``max_conf_num``) become networks on
``eth0``, ``eth1``... A ``.conf``/``.json`` file holds one plugin and becomes a list of one. A
file that does not parse, or lacks ``name``, ``cniVersion`` or plugins, is skipped with a logged
reason (as kubelet's CNI loaders do; go-cni would stop at it). :meth:`CNI.load` reads the
directory again each time it is called, so a configuration written later is found.
:meth:`CNI.status` answers go-cni's ``cni plugin not initialized`` until a network is loaded.

Each operation runs a network's plugins as libcni does: the binary named by ``type``, found in
``bin_dirs``, with ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
``CNI_ARGS`` (``K=V;K=V`` in the caller's order) and ``CNI_PATH`` added to the daemon's own
environment; on stdin the plugin's configuration with the list's ``name`` and ``cniVersion``,
the previous plugin's result as ``prevResult``, and as ``runtimeConfig`` those capability
arguments the plugin declares in ``capabilities``. Each run has a timeout; a plugin's stderr goes
to the log; a failure (CNI's error JSON: ``code``, ``msg``, ``details``) becomes an error naming
the plugin, the network and the command.

* :meth:`CNI.setup` (ADD): networks in order, plugins in order. The final result of each network
  is cached as libcni caches it (``<cache_dir>/results/<network>-<id>-<ifname>``, kind
  ``cniCacheV1``). A failed ADD undoes itself (DEL of every network it reached) before raising,
  as containerd's RunPodSandbox tears down what it set up; a later :meth:`CNI.remove` is harmless.
* :meth:`CNI.remove` (DEL): networks in reverse, plugins in reverse, each with the cached result
  as ``prevResult`` (CNI >= 0.4.0), the cached configuration when the loaded one changed since
  (and attachments of networks no longer configured, from the cache alone), the cached CNI_ARGS
  and capability arguments; a missing cache is fine. The cache entry goes once DEL succeeded. A
  namespace that is gone is passed as an empty ``CNI_NETNS``, as containerd does. Errors that
  say ``not found`` count as done, as go-cni's ``Remove``. Every network is attempted; the first
  failure is raised at the end. Unlike go-cni it works with no configuration loaded: what the
  cache holds is enough to tear a pod down.
* :meth:`CNI.check` (CHECK): for networks of CNI >= 0.4.0 without ``disableCheck``, with the
  cached result as ``prevResult``; older networks (the loopback's 0.3.1) have no CHECK and are
  skipped.

The :class:`Result` is go-cni's: per interface name its IPs (an IP belongs to the interface its
``interface`` index names, or to the default interface), plus DNS and routes;
:meth:`Result.pod_ips` picks the pod IP on ``eth0`` as containerd 1.6 does.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs
from berth.cri.netns import is_netns

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin",)
DEFAULT_CACHE_DIR = "/var/lib/cni"  # libcni's CacheDir
DEFAULT_IFNAME_PREFIX = "eth"
DEFAULT_PLUGIN_TIMEOUT = 60.0
CONF_SUFFIXES = (".conf", ".conflist", ".json")
MAX_CONF_SIZE = 2 * 1024 * 1024  # go-cni's MaxFileSize

LOOPBACK_IFNAME = "lo"
LOOPBACK_CONFIG = (b'{"cniVersion":"0.3.1","name":"cni-loopback",'
                   b'"plugins":[{"type":"loopback"}]}')

# go-cni's errors, word for word: containerd's CRI shows them to kubelet.
CNI_NOT_INITIALIZED = "cni plugin not initialized"
FAILED_TO_LOAD = "failed to load cni config"
INVALID_CONFIG = "invalid cni config"

CACHE_KIND = "cniCacheV1"
CNI_ERROR_TRY_AGAIN_LATER = 11

# libcni's utils: container ids and network names become cache file names.
_VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_IFNAME_MAX = 15

Json = dict[str, Any]


# -- configuration ---------------------------------------------------------------------------


def _version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {text!r}")
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class PluginConfig:
    """One plugin of a network: its ``type`` (the binary) and its configuration as written."""

    type: str
    conf: Json
    capabilities: frozenset[str]


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: a named, versioned chain of plugins (libcni's ``NetworkConfigList``).
    ``data`` is the configuration's bytes, as cached with a result."""

    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    data: bytes
    disable_check: bool = False
    source: str = ""

    @property
    def version(self) -> tuple[int, int, int]:
        return _version(self.cni_version)


@dataclass(frozen=True)
class Network:
    """A loaded network and the interface it is attached as."""

    config: NetworkConfigList
    ifname: str


def _invalid(message: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(message)


def conf_list_from_bytes(data: bytes, source: str = "") -> NetworkConfigList:
    """Parse a network configuration list (``.conflist``), checking what running it needs."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"error parsing configuration list: {e}") from e
    if not isinstance(raw, dict):
        raise _invalid("error parsing configuration list: not a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("error parsing configuration list: no name")
    if not _VALID_NAME.match(name):
        raise _invalid(f"error parsing configuration list: invalid network name {name!r}")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _invalid("error parsing configuration list: no cniVersion")
    try:
        _version(version)
    except ValueError as e:
        raise _invalid(f"error parsing configuration list: {e}") from e
    disable_check = raw.get("disableCheck", False)
    if isinstance(disable_check, str) and disable_check.lower() in ("true", "false"):
        disable_check = disable_check.lower() == "true"
    if not isinstance(disable_check, bool):
        raise _invalid(f"error parsing configuration list: invalid disableCheck "
                       f"{disable_check!r}")
    if "plugins" not in raw:
        raise _invalid("error parsing configuration list: no 'plugins' key")
    entries = raw["plugins"]
    if not isinstance(entries, list):
        raise _invalid("error parsing configuration list: invalid 'plugins' type")
    if not entries:
        raise _invalid("error parsing configuration list: no plugins in list")
    plugins = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _invalid(f"failed to parse plugin config {i}: not a JSON object")
        kind = entry.get("type")
        if not isinstance(kind, str) or not kind:
            raise _invalid(f"failed to parse plugin config {i}: "
                           "error parsing configuration: missing 'type'")
        caps = entry.get("capabilities") or {}
        if not isinstance(caps, dict):
            raise _invalid(f"failed to parse plugin config {i}: invalid capabilities")
        plugins.append(PluginConfig(kind, entry, frozenset(k for k, v in caps.items() if v)))
    return NetworkConfigList(name, version, tuple(plugins), bytes(data), disable_check, source)


def conf_list_from_conf(data: bytes, source: str = "") -> NetworkConfigList:
    """A single-plugin configuration (``.conf``, ``.json``) as a list of one (libcni's
    ``ConfListFromConf``)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"error parsing configuration: {e}") from e
    if not isinstance(raw, dict):
        raise _invalid("error parsing configuration: not a JSON object")
    if not isinstance(raw.get("type"), str) or not raw["type"]:
        # Also what a conflist written into a .conf file looks like.
        raise _invalid(f"network type not found in {source or 'configuration'}")
    listed = {"cniVersion": raw.get("cniVersion"), "name": raw.get("name"), "plugins": [raw]}
    return conf_list_from_bytes(json.dumps(listed, separators=(",", ":")).encode(), source)


def load_conf_dir(conf_dir: str, max_conf_num: int = 1) -> list[NetworkConfigList]:
    """The first ``max_conf_num`` (0: all) valid network configurations in ``conf_dir``, by
    file name. Raises :class:`~berth.errdefs.FailedPrecondition` when there is none."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise errdefs.Internal(f"failed to read config file: {e}: failed to read config "
                               "file") from e
    files = [os.path.join(conf_dir, n) for n in names
             if os.path.splitext(n)[1] in CONF_SUFFIXES
             and not os.path.isdir(os.path.join(conf_dir, n))]
    if not files:
        raise errdefs.FailedPrecondition(
            f"no network config found in {conf_dir}: {CNI_NOT_INITIALIZED}")
    found: list[NetworkConfigList] = []
    problems: list[str] = []
    for path in files:
        try:
            found.append(_load_conf_file(path))
        except errdefs.InvalidArgument as e:
            log.warning("skipping CNI config %s: %s", path, e)
            problems.append(str(e))
            continue
        if len(found) == max_conf_num:
            break
    if not found:
        raise errdefs.FailedPrecondition(
            f"no valid networks found in {conf_dir} ({'; '.join(problems)}): "
            f"{CNI_NOT_INITIALIZED}")
    return found


def _load_conf_file(path: str) -> NetworkConfigList:
    is_list = path.endswith(".conflist")
    kind = "config list file" if is_list else "config file"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONF_SIZE + 1)
    except OSError as e:
        raise _invalid(f"failed to load CNI {kind} {path}: {e}: {INVALID_CONFIG}") from e
    if len(data) > MAX_CONF_SIZE:
        raise _invalid(f"CNI config in {path} exceeded max size of {MAX_CONF_SIZE}")
    try:
        return conf_list_from_bytes(data, path) if is_list else conf_list_from_conf(data, path)
    except errdefs.InvalidArgument as e:
        raise _invalid(f"failed to load CNI {kind} {path}: {e}: {INVALID_CONFIG}") from e


# -- what the runtime passes -----------------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    """A hostPort, as the ``portMappings`` capability carries it (protocol lower-case)."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> Json:
        return {"hostPort": self.host_port, "containerPort": self.container_port,
                "protocol": self.protocol.lower(), "hostIP": self.host_ip}


@dataclass(frozen=True)
class Bandwidth:
    """The ``bandwidth`` capability (bits per second, and bits of burst)."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> Json:
        return {"ingressRate": self.ingress_rate, "ingressBurst": self.ingress_burst,
                "egressRate": self.egress_rate, "egressBurst": self.egress_burst}


@dataclass(frozen=True)
class DNSConfig:
    """The ``dns`` capability."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_cni(self) -> Json:
        return {"servers": list(self.servers), "searches": list(self.searches),
                "options": list(self.options)}


@dataclass(frozen=True)
class Capabilities:
    """Capability arguments; each reaches only plugins that declare it. ``portMappings`` is
    always passed (maybe empty) and mappings without a host port are left out, as containerd
    does; ``extra`` carries any other capability (``ipRanges``...) as JSON values."""

    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: Bandwidth | None = None
    dns: DNSConfig | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def args(self) -> Json:
        out: Json = {"portMappings": [p.to_cni() for p in self.port_mappings
                                      if p.host_port > 0]}
        if self.bandwidth is not None:
            out["bandwidth"] = self.bandwidth.to_cni()
        if self.dns is not None:
            out["dns"] = self.dns.to_cni()
        out.update(self.extra)
        return out


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPConfig:
    ip: str
    prefix_len: int
    gateway: str = ""


@dataclass(frozen=True)
class InterfaceConfig:
    ip_configs: tuple[IPConfig, ...] = ()
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""


@dataclass(frozen=True)
class Result:
    """All networks' results of one ADD, by interface (go-cni's ``Result``); ``raw`` holds each
    network's result JSON, in order."""

    interfaces: Mapping[str, InterfaceConfig]
    dns: tuple[Json, ...] = ()
    routes: tuple[Route, ...] = ()
    raw: tuple[Json, ...] = ()

    def pod_ips(self, ifname: str = f"{DEFAULT_IFNAME_PREFIX}0") -> tuple[str, tuple[str, ...]]:
        """(pod IP, additional IPs) on ``ifname``, as containerd 1.6's ``selectPodIPs``: the
        first IPv4 address, else the first address; the rest in order. ("", ()) if none."""
        ips = [c.ip for c in self.interfaces.get(ifname, InterfaceConfig()).ip_configs]
        for i, ip in enumerate(ips):
            if ipaddress.ip_address(ip).version == 4:
                return ip, tuple(ips[:i] + ips[i + 1:])
        return (ips[0], tuple(ips[1:])) if ips else ("", ())


def _result_parts(raw: Json) -> tuple[list[Json], list[Json], list[Json], Json]:
    """(interfaces, ips, routes, dns) of a result of any CNI version."""
    if "ip4" in raw or "ip6" in raw:  # 0.1.0 / 0.2.0: no interfaces, ip4/ip6 blocks
        ips: list[Json] = []
        routes: list[Json] = []
        for key in ("ip4", "ip6"):
            block = raw.get(key)
            if isinstance(block, dict):
                ips.append({"address": block.get("ip", ""), "gateway": block.get("gateway", "")})
                routes.extend(r for r in block.get("routes") or [] if isinstance(r, dict))
        return [], ips, routes, raw.get("dns") or {}
    return (list(raw.get("interfaces") or []), list(raw.get("ips") or []),
            list(raw.get("routes") or []), raw.get("dns") or {})


def build_result(results: Sequence[Json], default_ifname: str) -> Result:
    """go-cni's ``createResult`` over the networks' results, in order."""
    found: dict[str, tuple[list[IPConfig], str, str]] = {default_ifname: ([], "", "")}
    dns: list[Json] = []
    routes: list[Route] = []
    for raw in results:
        interfaces, ips, route_list, dns_block = _result_parts(raw)
        for intf in interfaces:
            found[str(intf.get("name", ""))] = ([], str(intf.get("mac", "")),
                                                str(intf.get("sandbox", "")))
        for ip in ips:
            index = ip.get("interface")
            if index is not None and not (isinstance(index, int) and 0 <= index < len(interfaces)):
                raise errdefs.Internal(
                    f"invalid interface config: invalid IP configuration (interface number "
                    f"{index} is > number of interfaces {len(interfaces)}): invalid result")
            name = default_ifname if index is None else str(interfaces[index].get("name", ""))
            try:
                address = ipaddress.ip_interface(str(ip.get("address", "")))
            except ValueError as e:
                raise errdefs.Internal(f"invalid result: bad address {ip.get('address')!r}") from e
            found.setdefault(name, ([], "", ""))[0].append(
                IPConfig(str(address.ip), address.network.prefixlen, str(ip.get("gateway") or "")))
        if dns_block:
            dns.append(dns_block)
        routes.extend(Route(str(r.get("dst", "")), str(r.get("gw") or "")) for r in route_list)
    interfaces_out = {name: InterfaceConfig(tuple(ips), mac, sandbox)
                      for name, (ips, mac, sandbox) in found.items()}
    return Result(interfaces_out, tuple(dns), tuple(routes), tuple(results))


# -- the cache -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cached:
    config: bytes
    args: tuple[tuple[str, str], ...] | None
    capability_args: Json
    result: Json


class _Cache:
    """libcni's result cache: ``<dir>/results/<network>-<container id>-<ifname>``."""

    def __init__(self, directory: str) -> None:
        self.results = os.path.join(directory, "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.results, f"{network}-{container_id}-{ifname}")

    def write(self, network: NetworkConfigList, container_id: str, ifname: str, netns: str,
              args: Sequence[tuple[str, str]], capability_args: Json, result: Json) -> None:
        entry: Json = {"kind": CACHE_KIND, "containerId": container_id,
                       "config": base64.b64encode(network.data).decode(),
                       "ifName": ifname, "networkName": network.name}
        if netns:
            entry["netns"] = netns
        if args:
            entry["cniArgs"] = [[k, v] for k, v in args]
        if capability_args:
            entry["capabilityArgs"] = capability_args
        entry["result"] = result
        path = self.path(network.name, container_id, ifname)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_native_id()}"
        try:
            os.makedirs(self.results, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(entry, separators=(",", ":")).encode())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise errdefs.Internal(f'failed to set network "{network.name}" cached result: '
                                   f"{e}") from e

    def read(self, network: str, container_id: str, ifname: str) -> _Cached | None:
        """The cached entry, or None (missing, or unreadable: logged)."""
        path = self.path(network, container_id, ifname)
        try:
            with open(path, "rb") as f:
                entry = json.loads(f.read())
            if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
                raise ValueError(f"not a {CACHE_KIND} entry")
            raw_args = entry.get("cniArgs")
            args = None if raw_args is None else tuple((str(k), str(v)) for k, v in raw_args)
            result = entry.get("result") or {}
            caps = entry.get("capabilityArgs") or {}
            if not isinstance(result, dict) or not isinstance(caps, dict):
                raise ValueError("result and capabilityArgs must be objects")
            return _Cached(base64.b64decode(entry.get("config", "")), args, caps, result)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable CNI cache entry %s: %s", path, e)
            return None

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self.path(network, container_id, ifname))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise errdefs.Internal(f'failed to remove network "{network}" cached result: '
                                   f"{e}") from e

    def attachments(self, container_id: str) -> list[tuple[str, str]]:
        """(network name, ifname) of every entry cached for ``container_id``."""
        try:
            names = sorted(os.listdir(self.results))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise errdefs.Internal(f"cannot list CNI cache {self.results}: {e}") from e
        found = []
        for name in names:
            if f"-{container_id}-" not in name or ".tmp-" in name:
                continue
            try:
                with open(os.path.join(self.results, name), "rb") as f:
                    entry = json.loads(f.read())
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable CNI cache entry %s: %s", name, e)
                continue
            if not (isinstance(entry, dict) and entry.get("kind") == CACHE_KIND
                    and entry.get("containerId") == container_id):
                continue
            network, ifname = str(entry.get("networkName", "")), str(entry.get("ifName", ""))
            if _VALID_NAME.match(network) and _valid_ifname(ifname):
                found.append((network, ifname))
        return found


# -- running plugins -------------------------------------------------------------------------


def _validate(container_id: str, args: Sequence[tuple[str, str]]) -> None:
    if not _VALID_NAME.match(container_id):
        raise errdefs.InvalidArgument(f"invalid container id {container_id!r} for CNI")
    for key, value in args:
        if not key or any(c in key for c in "=;") or ";" in value:
            raise errdefs.InvalidArgument(f"invalid CNI_ARGS pair {key!r}={value!r}")


def _valid_ifname(ifname: str) -> bool:
    return not (not ifname or len(ifname) > _IFNAME_MAX or ifname in (".", "..")
                or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname))


def _validate_ifname(ifname: str) -> None:
    if not _valid_ifname(ifname):
        raise errdefs.InvalidArgument(f"invalid interface name {ifname!r}")


def _describe(plugin: PluginConfig, network: NetworkConfigList) -> str:
    return f'type="{plugin.type}" name="{network.name}"'


def _plugin_failure(stdout: bytes, stderr: bytes, returncode: int) -> tuple[str, int]:
    """libcni's reading of a failed plugin: (message, CNI error code or 0)."""
    if not stdout.strip():
        if not stderr.strip():
            return f"netplugin failed with no error message: exit status {returncode}", 0
        return f"netplugin failed: {stderr.decode(errors='replace')!r}", 0
    try:
        err = json.loads(stdout)
        if not isinstance(err, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        return (f"netplugin failed but error parsing its diagnostic message "
                f"{stdout.decode(errors='replace')!r}: {e}", 0)
    message = str(err.get("msg", "")) or f"exit status {returncode}"
    if err.get("details"):
        message += f"; {err['details']}"
    code = err.get("code", 0)
    return message, code if isinstance(code, int) else 0


class CNI:
    """CNI networks for pods (see the module's contract). Thread-safe; every call blocks while
    plugins run, so call it from a worker thread in async code."""

    def __init__(self, conf_dir: str = DEFAULT_CONF_DIR,
                 bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
                 cache_dir: str = DEFAULT_CACHE_DIR, *, max_conf_num: int = 1,
                 ifname_prefix: str = DEFAULT_IFNAME_PREFIX, loopback: bool = True,
                 plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = cache_dir
        self.max_conf_num = max_conf_num
        self.ifname_prefix = ifname_prefix
        self.loopback = loopback
        self.plugin_timeout = plugin_timeout
        self._cache = _Cache(cache_dir)
        self._lock = threading.Lock()
        self._networks: tuple[Network, ...] = ()
        self._load_error: str | None = None

    # -- configuration

    def load(self) -> None:
        """Read ``conf_dir`` again: the loopback network, then the configured ones. On failure
        only the loopback network stays, :meth:`status` fails, and this raises go-cni's
        ``cni config load failed: ...: failed to load cni config``."""
        networks: list[Network] = []
        if self.loopback:
            networks.append(Network(conf_list_from_bytes(LOOPBACK_CONFIG), LOOPBACK_IFNAME))
        try:
            found = load_conf_dir(self.conf_dir, self.max_conf_num)
        except errdefs.BerthError as e:
            message = f"cni config load failed: {e}: {FAILED_TO_LOAD}"
            with self._lock:
                self._networks, self._load_error = tuple(networks), message
            raise type(e)(message) from e
        networks.extend(Network(conf, f"{self.ifname_prefix}{i}")
                        for i, conf in enumerate(found))
        with self._lock:
            self._networks, self._load_error = tuple(networks), None
        log.info("CNI networks loaded from %s: %s", self.conf_dir,
                 ", ".join(f"{n.config.name} ({n.config.source or 'built in'}) on {n.ifname}"
                           for n in networks))

    @property
    def networks(self) -> tuple[Network, ...]:
        with self._lock:
            return self._networks

    @property
    def load_error(self) -> str | None:
        """Why the last :meth:`load` failed, or None."""
        with self._lock:
            return self._load_error

    def status(self) -> None:
        """Raise go-cni's ``cni plugin not initialized`` until a network is configured."""
        needed = 2 if self.loopback else 1
        if len(self.networks) < needed:
            raise errdefs.FailedPrecondition(CNI_NOT_INITIALIZED)

    def ready(self) -> bool:
        try:
            self.status()
        except errdefs.FailedPrecondition:
            return False
        return True

    # -- operations

    def setup(self, container_id: str, netns_path: str,
              args: Sequence[tuple[str, str]] = (),
              capabilities: Capabilities | None = None) -> Result:
        """ADD every network to the namespace at ``netns_path``; undone on failure."""
        self.status()
        _validate(container_id, args)
        if not is_netns(netns_path):
            raise errdefs.FailedPrecondition(f"{netns_path} is not a network namespace")
        caps = (capabilities or Capabilities()).args()
        networks = self.networks
        results: list[Json] = []
        reached: list[Network] = []
        try:
            for network in networks:
                reached.append(network)
                results.append(self._add(network, container_id, netns_path, args, caps))
            return build_result(results, f"{self.ifname_prefix}0")
        except BaseException:
            for network in reversed(reached):
                try:
                    self._del(network.config, network.ifname, container_id, netns_path,
                              args, caps)
                except errdefs.BerthError as e:
                    log.error("undoing a failed CNI ADD for %s: %s", container_id, e)
            raise

    def remove(self, container_id: str, netns_path: str,
               args: Sequence[tuple[str, str]] = (),
               capabilities: Capabilities | None = None) -> None:
        """DEL every network from the namespace (gone is fine: see the module's contract)."""
        _validate(container_id, args)
        if netns_path and not is_netns(netns_path):
            netns_path = ""  # containerd: a closed namespace is torn down with an empty path
        caps = (capabilities or Capabilities()).args()
        networks = self.networks
        current = {(n.config.name, n.ifname) for n in networks}
        targets: list[tuple[NetworkConfigList | None, str, str]] = [
            (None, name, ifname) for name, ifname in reversed(self._cache.attachments(container_id))
            if (name, ifname) not in current]
        targets += [(n.config, n.config.name, n.ifname) for n in reversed(networks)]
        first: errdefs.BerthError | None = None
        for config, name, ifname in targets:
            try:
                if config is None:
                    self._del_cached(name, ifname, container_id, netns_path)
                else:
                    self._del(config, ifname, container_id, netns_path, args, caps)
            except errdefs.BerthError as e:
                text = str(e)
                if "not found" in text or (not netns_path and "no such file or directory" in text):
                    log.info("CNI DEL of %s on %s for %s: already gone (%s)", name, ifname,
                             container_id, text)
                    self._cache.delete(name, container_id, ifname)
                    continue
                log.error("CNI DEL of %s on %s for %s: %s", name, ifname, container_id, text)
                first = first or e
        if first is not None:
            raise first

    def check(self, container_id: str, netns_path: str,
              args: Sequence[tuple[str, str]] = (),
              capabilities: Capabilities | None = None) -> None:
        """CHECK every network of CNI >= 0.4.0 against its cached result."""
        self.status()
        _validate(container_id, args)
        caps = (capabilities or Capabilities()).args()
        for network in self.networks:
            config = network.config
            if config.version < (0, 4, 0) or config.disable_check:
                log.debug("CNI CHECK skipped for %s (version %s, disableCheck %s)", config.name,
                          config.cni_version, config.disable_check)
                continue
            cached = self._cache.read(config.name, container_id, network.ifname)
            if cached is None:
                raise errdefs.FailedPrecondition(
                    f'no cached result of network "{config.name}" for {container_id} on '
                    f"{network.ifname}: was it set up?")
            for plugin in config.plugins:
                self._exec(plugin, config, "CHECK", container_id, netns_path, network.ifname,
                           args, caps, cached.result)

    # -- one network

    def _add(self, network: Network, container_id: str, netns: str,
             args: Sequence[tuple[str, str]], caps: Json) -> Json:
        _validate_ifname(network.ifname)
        config = network.config
        result: Json | None = None
        for plugin in config.plugins:
            out = self._exec(plugin, config, "ADD", container_id, netns, network.ifname, args,
                             caps, result)
            try:
                parsed = json.loads(out)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                raise errdefs.Internal(f"plugin {_describe(plugin, config)} failed (add): "
                                       f"invalid result {out[:200]!r}: {e}") from e
            parsed.setdefault("cniVersion", config.cni_version)
            result = parsed
        assert result is not None  # a list has at least one plugin
        self._cache.write(config, container_id, network.ifname, netns, args, caps, result)
        return result

    def _del(self, config: NetworkConfigList, ifname: str, container_id: str, netns: str,
             args: Sequence[tuple[str, str]], caps: Json) -> None:
        cached = self._cache.read(config.name, container_id, ifname)
        if cached is not None:
            if cached.config != config.data:
                try:
                    config = conf_list_from_bytes(cached.config, "cache")
                except errdefs.InvalidArgument as e:
                    log.warning("cached CNI config of %s for %s is unusable, using the loaded "
                                "one: %s", config.name, container_id, e)
            if cached.args is not None:
                args = cached.args
            caps = cached.capability_args
        prev = cached.result if cached is not None and config.version >= (0, 4, 0) else None
        for plugin in reversed(config.plugins):
            self._exec(plugin, config, "DEL", container_id, netns, ifname, args, caps, prev)
        self._cache.delete(config.name, container_id, ifname)

    def _del_cached(self, name: str, ifname: str, container_id: str, netns: str) -> None:
        cached = self._cache.read(name, container_id, ifname)
        if cached is None:
            return
        try:
            config = conf_list_from_bytes(cached.config, "cache")
        except errdefs.InvalidArgument as e:
            raise errdefs.FailedPrecondition(
                f'network "{name}" of {container_id} is no longer configured and its cached '
                f"config is unusable: {e}") from e
        log.info("CNI DEL of %s on %s for %s from its cached config (no longer loaded)", name,
                 ifname, container_id)
        self._del(config, ifname, container_id, netns, cached.args or (),
                  cached.capability_args)

    # -- one plugin

    def _find(self, plugin: PluginConfig) -> str:
        if "/" in plugin.type or plugin.type in (".", ".."):
            raise errdefs.InvalidArgument(f"invalid plugin name {plugin.type!r}")
        for directory in self.bin_dirs:
            path = os.path.join(directory, plugin.type)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise errdefs.FailedPrecondition(
            f'failed to find plugin "{plugin.type}" in path [{" ".join(self.bin_dirs)}]')

    def _exec(self, plugin: PluginConfig, config: NetworkConfigList, command: str,
              container_id: str, netns: str, ifname: str, args: Sequence[tuple[str, str]],
              caps: Json, prev: Json | None) -> bytes:
        """Run one plugin; its stdout. Failures are errors naming plugin, network, command."""
        what = f"plugin {_describe(plugin, config)} failed ({command.lower()})"
        try:
            path = self._find(plugin)
        except errdefs.BerthError as e:
            raise type(e)(f"{what}: {e}") from e
        stdin: Json = dict(plugin.conf)
        stdin["name"] = config.name
        stdin["cniVersion"] = config.cni_version
        if prev is not None:
            stdin["prevResult"] = prev
        runtime_config = {k: v for k, v in caps.items() if k in plugin.capabilities}
        if runtime_config:
            stdin["runtimeConfig"] = runtime_config
        env = dict(os.environ)
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns,
                   CNI_ARGS=";".join(f"{k}={v}" for k, v in args), CNI_IFNAME=ifname,
                   CNI_PATH=":".join(self.bin_dirs))
        data = json.dumps(stdin, separators=(",", ":")).encode()
        stdout, stderr, returncode = self._run(path, data, env, what)
        if stderr.strip():
            level = logging.WARNING if returncode else logging.INFO
            log.log(level, "CNI plugin %s (%s %s on %s) stderr: %s", plugin.type, command,
                    config.name, container_id, stderr.decode(errors="replace").strip())
        if returncode == 0:
            return stdout
        message, code = _plugin_failure(stdout, stderr, returncode)
        code_note = f" (CNI error code {code})" if code else ""
        cls: type[errdefs.BerthError] = (
            errdefs.Unavailable if code == CNI_ERROR_TRY_AGAIN_LATER else errdefs.Internal)
        raise cls(f"{what}: {message}{code_note}")

    def _run(self, path: str, data: bytes, env: dict[str, str],
             what: str) -> tuple[bytes, bytes, int]:
        attempt = 0
        while True:
            try:
                proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, close_fds=True,
                                        start_new_session=True)
                break
            except OSError as e:
                if e.errno == errno.ETXTBSY and attempt < 5:  # libcni retries "text file busy"
                    attempt += 1
                    time.sleep(1)
                    continue
                raise errdefs.Internal(f"{what}: cannot run {path}: {e}") from e
        try:
            stdout, stderr = proc.communicate(data, timeout=self.plugin_timeout)
        except subprocess.TimeoutExpired as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # Something that left the plugin's process group still holds its pipes.
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                proc.wait()
            raise errdefs.DeadlineExceeded(
                f"{what}: timed out after {self.plugin_timeout:g}s") from e
        return stdout, stderr, proc.returncode
