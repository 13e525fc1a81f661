"""Plugins: what the daemon is built from.

A :class:`Registration` names a plugin by type (``io.containerd.snapshotter.v1``) and id
(``overlayfs``), lists the plugin types it requires, and gives an ``init`` that builds it from an
:class:`InitContext`. The registry initialises plugins in dependency order; a plugin whose init
fails (or is disabled) is recorded with its error and skipped, and plugins that require its type
see only the others — as in containerd, where ``ctr plugins ls`` shows each with its status.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs

log = logging.getLogger(__name__)

# Plugin types, as containerd names them.
CONTENT = "io.containerd.content.v1"
METADATA = "io.containerd.metadata.v1"
SNAPSHOTTER = "io.containerd.snapshotter.v1"
DIFFER = "io.containerd.differ.v1"
EVENT = "io.containerd.event.v1"
GC = "io.containerd.gc.v1"
LEASE = "io.containerd.lease.v1"
SERVICE = "io.containerd.service.v1"
GRPC = "io.containerd.grpc.v1"
INTERNAL = "io.containerd.internal.v1"
RUNTIME = "io.containerd.runtime.v2"

ALL = "*"


class Disabled(errdefs.BerthError):
    """Raised for a plugin the configuration turned off."""


class Skipped(errdefs.BerthError):
    """Raised by an init that does not apply on this host (not an error)."""


@dataclass
class InitContext:
    root: str  # this plugin's own directory: <root>/<type>.<id>
    state: str  # this plugin's own state directory: <state>/<type>.<id>
    config: Mapping[str, Any]
    registry: Registry
    exports: dict[str, str] = field(default_factory=dict)
    address: str = ""  # the daemon's gRPC socket
    ttrpc_address: str = ""  # where shims forward events

    def get(self, type_: str, id_: str | None = None) -> Any:
        """The instance of a required plugin; NotFound if it is absent or failed."""
        return self.registry.get(type_, id_)

    def get_all(self, type_: str) -> dict[str, Any]:
        return self.registry.get_all(type_)


@dataclass
class Registration:
    type: str
    id: str
    init: Callable[[InitContext], Any]
    requires: Sequence[str] = ()
    platforms: Sequence[str] = ()
    capabilities: Sequence[str] = ()

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"


@dataclass
class Plugin:
    registration: Registration
    instance: Any = None
    error: BaseException | None = None
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Registry:
    def __init__(self) -> None:
        self._registrations: list[Registration] = []
        self._plugins: dict[str, Plugin] = {}
        self._order: list[str] = []

    def register(self, reg: Registration) -> None:
        if any(r.uri == reg.uri for r in self._registrations):
            raise errdefs.AlreadyExists(f"plugin {reg.uri} is registered twice")
        self._registrations.append(reg)

    def _sorted(self) -> list[Registration]:
        """Registrations ordered so each comes after every type it requires."""
        done: list[Registration] = []
        seen: set[str] = set()

        def visit(reg: Registration, path: tuple[str, ...]) -> None:
            if reg.uri in seen:
                return
            if reg.uri in path:
                raise errdefs.FailedPrecondition(f"plugin dependency cycle: {' -> '.join(path)}")
            for req in reg.requires:
                for other in self._registrations:
                    if other is not reg and (req == ALL or other.type == req):
                        if req == ALL and other.requires and ALL in other.requires:
                            continue
                        visit(other, (*path, reg.uri))
            seen.add(reg.uri)
            done.append(reg)

        for reg in self._registrations:
            visit(reg, ())
        return done

    def init_all(self, root: str, state: str, configs: Mapping[str, Mapping[str, Any]],
                 disabled: Sequence[str] = (), *, address: str = "",
                 ttrpc_address: str = "") -> None:
        for reg in self._sorted():
            plugin = Plugin(reg)
            self._plugins[reg.uri] = plugin
            self._order.append(reg.uri)
            if reg.uri in disabled or reg.id in disabled:
                plugin.error = Disabled("disabled in the configuration")
                log.info("plugin %s disabled", reg.uri)
                continue
            ctx = InitContext(
                root=os.path.join(root, reg.uri), state=os.path.join(state, reg.uri),
                config=configs.get(reg.uri, {}), registry=self, address=address,
                ttrpc_address=ttrpc_address,
            )
            try:
                plugin.instance = reg.init(ctx)
                plugin.exports = ctx.exports
                log.debug("plugin %s loaded", reg.uri)
            except Skipped as err:
                plugin.error = err
                log.info("plugin %s skipped: %s", reg.uri, err)
            except Exception as err:
                plugin.error = err
                log.warning("plugin %s failed to load: %s", reg.uri, err)

    def get(self, type_: str, id_: str | None = None) -> Any:
        for uri in self._order:
            p = self._plugins[uri]
            if p.registration.type == type_ and (id_ is None or p.registration.id == id_):
                if p.ok:
                    return p.instance
                if id_ is not None:
                    raise errdefs.NotFound(f"plugin {uri} is not loaded: {p.error}")
        raise errdefs.NotFound(f"no loaded plugin of type {type_}" +
                               (f" with id {id_}" if id_ else ""))

    def get_all(self, type_: str) -> dict[str, Any]:
        return {p.registration.id: p.instance for uri in self._order
                if (p := self._plugins[uri]).registration.type == type_ and p.ok}

    def plugins(self) -> list[Plugin]:
        return [self._plugins[uri] for uri in self._order]

    def close(self) -> None:
        """Close plugins in reverse order of their init."""
        for uri in reversed(self._order):
            p = self._plugins[uri]
            close = getattr(p.instance, "close", None)
            if p.ok and callable(close):
                try:
                    close()
                except Exception:
                    log.exception("plugin %s failed to close", uri)
