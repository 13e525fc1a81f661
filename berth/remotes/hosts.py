"""Which servers to talk to for a registry host: containerd's ``certs.d`` hosts configuration.

Layout (one directory per registry host, as it appears in references)::

    /etc/berth/certs.d/
        docker.io/hosts.toml          # for docker.io/... references
        127.0.0.1:5000/hosts.toml
        _default/hosts.toml           # for hosts without a directory of their own

``hosts.toml``::

    server = "https://registry.example.com"   # the origin; default https://<host>
    ca = "ca.pem"                              # or a list; relative to the directory
    skip_verify = false
    client = ["client.cert", "client.key"]    # or one file holding both
    [header]
      x-custom = "value"                       # or a list of values
    override_path = false                      # true: the URL path is the API root as-is

    [host."https://mirror.example.com:5000"]   # tried before the server, in file order
      capabilities = ["pull", "resolve"]       # default: pull, resolve, push
      ca = "/etc/ssl/mirror.pem"
      skip_verify = true
      [host."https://mirror.example.com:5000".header]
        x-mirror = "1"

A directory without ``hosts.toml`` is read the Docker way: ``*.crt`` files are CA certificates,
``*.cert`` + ``*.key`` a client pair. ``config_path`` is a list of roots; the first root that
has a directory for the host (or a ``_default``) wins, like containerd's CRI ``config_path``.

Decisions:

* A ``hosts.toml`` that does not parse is an error (``InvalidArgument`` naming the file), not
  silently ignored as containerd does: a typo should not quietly send pulls elsewhere.
* ``docker.io`` is served by ``registry-1.docker.io``.
* Plain HTTP: ``http://`` URLs in the file, or ``plain_http=True`` for every host whose scheme is
  not written down. Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) without a written
  scheme or TLS settings are tried over HTTPS first and fall back to HTTP when the server does
  not speak TLS (``RegistryHost.http_fallback``), as containerd 1.7 does; the fallback never
  applies to other hosts, where it would let a network attacker downgrade the connection.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from berth import errdefs

DEFAULT_CONFIG_PATH = "/etc/berth/certs.d"
DEFAULT_DIRECTORY = "_default"
DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"

CAPABILITY_PULL = "pull"
CAPABILITY_RESOLVE = "resolve"
CAPABILITY_PUSH = "push"
ALL_CAPABILITIES = frozenset({CAPABILITY_PULL, CAPABILITY_RESOLVE, CAPABILITY_PUSH})


@dataclass(frozen=True)
class RegistryHost:
    """One server to try for a registry: where it is, what it may be used for, how to talk TLS.

    ``path`` is the API root (``/v2`` normally). ``headers`` are sent with every request to it.
    ``ca`` are extra CA files trusted on top of the system's; ``client`` a (cert, key) pair for
    TLS client authentication (key empty: the cert file holds both).
    """

    scheme: str
    host: str  # "registry.example.com:5000"
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[str, str] | None = None
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    http_fallback: bool = False

    @property
    def is_mirror(self) -> bool:
        """A host that cannot take pushes is treated as a mirror (it gets ``?ns=<registry>``
        so that a pull-through cache knows which upstream is meant), as in containerd."""
        return CAPABILITY_PUSH not in self.capabilities

    @property
    def url(self) -> str:
        """``scheme://host/path``: the API root, for messages and URL building."""
        return f"{self.scheme}://{self.host}{self.path}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name``, ``name:port``, ``[v6]:port``) names this machine."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostsConfig:
    """The hosts configuration: ``hosts(registry)`` lists the servers to try, in order.

    ``config_path`` roots are searched in order (missing roots are fine). ``plain_http`` makes
    HTTP the scheme for every host whose scheme the configuration does not state.
    """

    config_path: Sequence[str | os.PathLike[str]] = (DEFAULT_CONFIG_PATH,)
    plain_http: bool = False

    def with_plain_http(self, plain_http: bool = True) -> HostsConfig:
        return replace(self, plain_http=plain_http)

    def host_directory(self, registry: str) -> Path | None:
        """The configuration directory that applies to ``registry``, if any."""
        for root in self.config_path:
            for name in (registry, DEFAULT_DIRECTORY):
                candidate = Path(root) / name
                if candidate.is_dir():
                    return candidate
        return None

    def hosts(self, registry: str) -> list[RegistryHost]:
        """Servers for ``registry`` (a reference's host): mirrors first, the origin last.

        An empty list is possible (a ``hosts.toml`` may configure no usable server);
        InvalidArgument for a malformed configuration.
        """
        directory = self.host_directory(registry)
        entries: list[_Entry] = [_Entry()]
        if directory is not None:
            hosts_file = directory / "hosts.toml"
            if hosts_file.exists():
                entries = parse_hosts_toml(hosts_file.read_bytes(), directory, str(hosts_file))
            else:
                entries = [_docker_cert_files(directory)]
        return [self._finish(entry, registry) for entry in entries]

    def _finish(self, entry: _Entry, registry: str) -> RegistryHost:
        explicit_scheme = bool(entry.scheme)
        if not entry.host:  # the origin, not named in the file
            host = DOCKER_HUB_REGISTRY if registry == DOCKER_HUB else registry
            scheme = "https" if registry == DOCKER_HUB else ""
            explicit_scheme = registry == DOCKER_HUB
            entry = replace(entry, host=host, scheme=scheme, path=entry.path or "/v2")
        scheme = entry.scheme or ("http" if self.plain_http else "https")
        tls_configured = bool(entry.ca or entry.client or entry.skip_verify is not None)
        fallback = (
            scheme == "https"
            and not explicit_scheme
            and not tls_configured
            and is_loopback(entry.host)
        )
        return RegistryHost(
            scheme=scheme,
            host=entry.host,
            path=entry.path,
            capabilities=entry.capabilities,
            skip_verify=bool(entry.skip_verify),
            ca=entry.ca,
            client=entry.client,
            headers=entry.headers,
            http_fallback=fallback,
        )


@dataclass(frozen=True)
class _Entry:
    """A host as the file states it: empty scheme/host mean "not stated"."""

    scheme: str = ""
    host: str = ""
    path: str = ""
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool | None = None
    ca: tuple[str, ...] = ()
    client: tuple[str, str] | None = None
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def parse_hosts_toml(data: bytes, base_dir: Path, source: str = "hosts.toml") -> list[_Entry]:
    """The entries of a ``hosts.toml``: ``[host."..."]`` sections in file order, then the
    ``server`` (the origin; host left empty when not given). Raises InvalidArgument."""
    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise errdefs.InvalidArgument(f"{source}: not valid TOML: {err}") from err
    sections = doc.get("host", {})
    if not isinstance(sections, dict):
        raise errdefs.InvalidArgument(f"{source}: 'host' must be a table of [host.\"URL\"]")
    entries = []
    for server, section in sections.items():  # tomllib keeps file order
        if not isinstance(section, dict):
            raise errdefs.InvalidArgument(f"{source}: [host.{server!r}] must be a table")
        entries.append(_parse_entry(server, section, base_dir, f"{source} [host.{server!r}]"))
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise errdefs.InvalidArgument(f"{source}: 'server' must be a string")
    top = {k: v for k, v in doc.items() if k not in ("host", "server")}
    entries.append(_parse_entry(server, top, base_dir, source))
    return entries


_KNOWN_KEYS = {"capabilities", "ca", "client", "skip_verify", "header", "override_path"}


def _parse_entry(server: str, section: dict[str, Any], base_dir: Path, where: str) -> _Entry:
    unknown = set(section) - _KNOWN_KEYS
    if unknown:
        raise errdefs.InvalidArgument(f"{where}: unknown keys {sorted(unknown)}")
    override_path = section.get("override_path", False)
    if not isinstance(override_path, bool):
        raise errdefs.InvalidArgument(f"{where}: override_path must be true or false")
    scheme = host = path = ""
    if server:
        url = server if server.startswith(("http://", "https://")) else f"https://{server}"
        parts = urlsplit(url)
        if not parts.netloc or parts.query or parts.fragment:
            raise errdefs.InvalidArgument(f"{where}: {server!r} is not a server URL")
        scheme = parts.scheme if server.startswith(("http://", "https://")) else ""
        host = parts.netloc
        path = os.path.normpath(parts.path) if parts.path not in ("", "/") else ""
        if not override_path and not path.endswith("/v2"):
            path += "/v2"
    skip_verify = section.get("skip_verify")
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise errdefs.InvalidArgument(f"{where}: skip_verify must be true or false")
    return _Entry(
        scheme=scheme,
        host=host,
        path=path,
        capabilities=_capabilities(section.get("capabilities"), where),
        skip_verify=skip_verify,
        ca=tuple(_abs(p, base_dir) for p in _strings(section.get("ca"), f"{where}: ca")),
        client=_client(section.get("client"), base_dir, where),
        headers=_headers(section.get("header"), where),
    )


def _abs(path: str, base_dir: Path) -> str:
    return str(base_dir / path) if not os.path.isabs(path) else path


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise errdefs.InvalidArgument(f"{where} must be a string or a list of strings")


def _capabilities(value: object, where: str) -> frozenset[str]:
    if value is None:
        return ALL_CAPABILITIES
    names = {c.lower() for c in _strings(value, f"{where}: capabilities")}
    unknown = names - ALL_CAPABILITIES
    if unknown:
        raise errdefs.InvalidArgument(
            f"{where}: unknown capabilities {sorted(unknown)} (known: pull, resolve, push)"
        )
    return frozenset(names)


def _client(value: object, base_dir: Path, where: str) -> tuple[str, str] | None:
    """One client pair. containerd accepts several and lets Go pick; Python's ssl takes one
    chain per context, so more than one is refused rather than half-honoured."""
    if value is None:
        return None
    if isinstance(value, str):
        return (_abs(value, base_dir), "")
    if isinstance(value, list) and len(value) == 1:
        return _client(value[0], base_dir, where)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return (_abs(value[0], base_dir), _abs(value[1], base_dir))
    raise errdefs.InvalidArgument(
        f"{where}: client must be a file, or one [cert, key] pair (several are not supported)"
    )


def _headers(value: object, where: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errdefs.InvalidArgument(f"{where}: header must be a table")
    return {str(k): tuple(_strings(v, f"{where}: header {k!r}")) for k, v in value.items()}


def _docker_cert_files(directory: Path) -> _Entry:
    """Docker's certs.d layout: ``*.crt`` CAs, ``NAME.cert`` + ``NAME.key`` client pairs."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    ca = tuple(str(directory / n) for n in names if n.endswith(".crt"))
    certs = [n for n in names if n.endswith(".cert")]
    if len(certs) > 1:
        raise errdefs.InvalidArgument(
            f"{directory}: several client certificates ({', '.join(certs)}); keep one"
        )
    client = None
    if certs:
        key = directory / (certs[0].removesuffix(".cert") + ".key")
        client = (str(directory / certs[0]), str(key) if key.exists() else "")
    return _Entry(ca=ca, client=client)
