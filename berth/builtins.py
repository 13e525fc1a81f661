"""The plugins berthd is built from, and how each is made. The implementations live in their own
packages; this module only wires them (as containerd's ``builtins`` does)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from berth import errdefs, fsmode
from berth.plugin import registry as p
from berth.plugin.registry import InitContext, Registration, Registry
from berth.services.server import Edge, Observer

log = logging.getLogger(__name__)

TRANSFER = "io.containerd.transfer.v1"
DEFAULT_CERTS_D = "/etc/berth/certs.d"


class GRPCService:
    """A servicer and the generated function that adds it to a server."""

    def __init__(self, servicer: Any, add: Callable[[Any, grpc.Server], None],
                 name: str) -> None:
        self.servicer = servicer
        self._add = add
        self.name = name

    def register(self, server: grpc.Server, observe: Observer | None = None) -> None:
        self._add(Edge(self.servicer, self.name, observe), server)


class GRPCServices:
    """Several services one plugin serves (the CRI's runtime and image services)."""

    def __init__(self, *services: GRPCService) -> None:
        self.services = services

    def register(self, server: grpc.Server, observe: Observer | None = None) -> None:
        for service in self.services:
            service.register(server, observe)


class LazyGRPCServices:
    """The gRPC services ``names``, built by ``build`` on the first call to any of them: a
    plugin that would cost an idle daemon memory and threads for callers that may never come
    (the CRI without a kubelet). If ``build`` fails, the error is logged once and the services
    stay unimplemented, as a plugin that failed to load at start."""

    def __init__(self, names: tuple[str, ...], build: Callable[[], GRPCServices]) -> None:
        self.names = names
        self._build = build
        self._lock = threading.Lock()
        self._handlers: list[_Handler] | None = None
        self._observe: Observer | None = None

    def register(self, server: grpc.Server, observe: Observer | None = None) -> None:
        self._observe = observe
        server.add_generic_rpc_handlers((cast("_Handler", self),))

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> _Method | None:
        name = handler_call_details.method.split("/")[1:2]  # "/<service>/<method>"
        if not name or name[0] not in self.names:
            return None
        handlers = self._handlers  # set once: no lock once the services are built
        for handler in handlers if handlers is not None else self._built():
            method = handler.service(handler_call_details)
            if method is not None:
                return method
        return None

    def _built(self) -> list[_Handler]:
        with self._lock:
            if self._handlers is None:
                capture = _Capture()
                try:
                    # The generated functions call only the two methods _Capture has.
                    self._build().register(cast(grpc.Server, capture), self._observe)
                except Exception:
                    log.exception("services %s failed to start; they stay unimplemented",
                                  ", ".join(self.names))
                self._handlers = capture.handlers
            return self._handlers


if TYPE_CHECKING:
    from berth.cri.config import Config as CRIConfig

    _Handler = grpc.GenericRpcHandler[Any, Any]
    _Method = grpc.RpcMethodHandler[Any, Any]


class _Capture:
    """Stands in for a server to the generated ``add_*_to_server`` functions, keeping their
    generic handlers (the registered method handlers they also add are the same methods)."""

    def __init__(self) -> None:
        self.handlers: list[_Handler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[_Handler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass


def _exchange(ctx: InitContext) -> Any:
    from berth.events import Exchange

    return Exchange()


def _content(ctx: InitContext) -> Any:
    from berth.content.local import LocalStore

    ctx.exports["root"] = ctx.root
    return LocalStore(ctx.root)


def _overlayfs(ctx: InitContext) -> Any:
    from berth.snapshots import overlay

    root = str(ctx.config.get("root_path", ctx.root))
    # 0700 even when root_path puts it outside berthd's root: the layers hold setuid binaries.
    fsmode.private_dir(root)
    overlay.supported(root)
    ctx.exports["root"] = root
    return overlay.OverlaySnapshotter(root)


def _native(ctx: InitContext) -> Any:
    from berth.snapshots.native import NativeSnapshotter

    root = str(ctx.config.get("root_path", ctx.root))
    ctx.exports["root"] = root
    return NativeSnapshotter(root)


def _metadata(ctx: InitContext) -> Any:
    from berth.metadata.store import Metadata

    fsmode.private_dir(ctx.root)
    return Metadata(ctx.root, ctx.get(p.CONTENT), ctx.get_all(p.SNAPSHOTTER), ctx.get(p.EVENT))


def _gc(ctx: InitContext) -> Any:
    from berth.gc import Scheduler

    md = ctx.get(p.METADATA)
    scheduler = Scheduler(md.collector, delay=float(ctx.config.get("deletion_delay", 0.5)))
    md.set_scheduler(scheduler.trigger)
    scheduler.start()
    return scheduler


def _walking(ctx: InitContext) -> Any:
    from berth.diff.archive import LayerLimits
    from berth.diff.local import LocalDiff
    from berth.diff.walking import WalkingDiff

    # Its temporary mounts go where berthd set them (<root>/tmpmounts, 0700): under the state
    # dir, which others may traverse, they would expose the snapshots they show.
    differ = WalkingDiff(limits=LayerLimits.from_config(ctx.config))
    return LocalDiff(differ, ctx.get(p.METADATA).content)


def _transfer(ctx: InitContext) -> Any:
    from berth.transfer import ImagePusher, Puller

    md = ctx.get(p.METADATA)
    differ = ctx.get(p.DIFFER)
    config_path = ctx.config.get("config_path", DEFAULT_CERTS_D)
    paths = [config_path] if isinstance(config_path, str) else [str(x) for x in config_path]
    ctx.exports["config_path"] = ":".join(paths)
    puller = Puller(md.content, md.images, md.leases, md.snapshotters, differ.differ,
                    shared=md.content.local)
    return puller, ImagePusher(md.content), _resolvers(paths)


def _resolvers(config_path: list[str]) -> Callable[[bool, dict[str, tuple[str, str]]], Any]:
    def make(plain_http: bool, auth: dict[str, tuple[str, str]]) -> Any:
        # Imported on the first pull: the HTTP stack is not loaded until it is needed.
        from berth.remotes.hosts import HostsConfig
        from berth.remotes.resolver import RegistryResolver

        def credentials(host: str) -> tuple[str, str] | None:
            if host in auth:
                return auth[host]
            if host in ("registry-1.docker.io", "index.docker.io"):
                return auth.get("docker.io")
            return None

        return RegistryResolver(HostsConfig(config_path=config_path, plain_http=plain_http),
                                credentials, plain_http=plain_http)

    return make


def _tasks(ctx: InitContext) -> Any:
    from berth.runtime.events import EventsEndpoint
    from berth.runtime.manager import TaskManager
    from berth.shimcontract import DEFAULT_GROUP_SIZE, DEFAULT_LINGER
    from berth.ttrpc import BackgroundLoop

    shims = ctx.config.get("shims", {})
    if not isinstance(shims, dict):
        raise errdefs.InvalidArgument("runtime config: shims must map runtime names to binaries")
    loop = BackgroundLoop.default()
    events = EventsEndpoint(loop, ctx.ttrpc_address, ctx.get(p.EVENT))
    manager = TaskManager(ctx.state, ctx.get(p.METADATA), ctx.get(p.EVENT), ctx.address,
                          ctx.ttrpc_address, {str(k): str(v) for k, v in shims.items()},
                          on_close=[events.close], loop=loop,
                          shim_group=str(ctx.config.get("shim_group", "namespace")),
                          shim_group_size=ctx.config.get("shim_group_size", DEFAULT_GROUP_SIZE),
                          shim_linger=ctx.config.get("shim_linger", DEFAULT_LINGER))
    manager.recover()
    return manager


def _grpc(name: str,
          make: Callable[[InitContext], GRPCService | GRPCServices | LazyGRPCServices],
          *requires: str) -> Registration:
    """A gRPC service over the plugins of the types it ``requires`` (and only those: a
    disabled runtime leaves the image services up)."""
    return Registration(p.GRPC, name, make, requires=requires)


def _content_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.content.v1 import content_pb2_grpc
    from berth.services.content import ContentService

    return GRPCService(ContentService(ctx.get(p.METADATA).content),
                       content_pb2_grpc.add_ContentServicer_to_server,
                       "containerd.services.content.v1.Content")


def _images_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.images.v1 import images_pb2_grpc
    from berth.services.images import ImagesService

    return GRPCService(ImagesService(ctx.get(p.METADATA).images),
                       images_pb2_grpc.add_ImagesServicer_to_server,
                       "containerd.services.images.v1.Images")


def _containers_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.containers.v1 import containers_pb2_grpc
    from berth.services.containers import ContainersService

    return GRPCService(ContainersService(ctx.get(p.METADATA).containers),
                       containers_pb2_grpc.add_ContainersServicer_to_server,
                       "containerd.services.containers.v1.Containers")


def _snapshots_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.snapshots.v1 import snapshots_pb2_grpc
    from berth.services.snapshots import SnapshotsService

    return GRPCService(SnapshotsService(ctx.get(p.METADATA).snapshotters),
                       snapshots_pb2_grpc.add_SnapshotsServicer_to_server,
                       "containerd.services.snapshots.v1.Snapshots")


def _diff_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.diff.v1 import diff_pb2_grpc
    from berth.services.diff import DiffService

    return GRPCService(DiffService(ctx.get(p.DIFFER)), diff_pb2_grpc.add_DiffServicer_to_server,
                       "containerd.services.diff.v1.Diff")


def _leases_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.leases.v1 import leases_pb2_grpc
    from berth.services.leases import LeasesService

    md = ctx.get(p.METADATA)
    return GRPCService(LeasesService(md.leases, md.collect),
                       leases_pb2_grpc.add_LeasesServicer_to_server,
                       "containerd.services.leases.v1.Leases")


def _namespaces_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.namespaces.v1 import namespace_pb2_grpc
    from berth.services.namespaces import NamespacesService

    return GRPCService(NamespacesService(ctx.get(p.METADATA).namespaces, ctx.get(p.EVENT)),
                       namespace_pb2_grpc.add_NamespacesServicer_to_server,
                       "containerd.services.namespaces.v1.Namespaces")


def _events_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.events.v1 import events_pb2_grpc
    from berth.services.events import EventsService

    return GRPCService(EventsService(ctx.get(p.EVENT)),
                       events_pb2_grpc.add_EventsServicer_to_server,
                       "containerd.services.events.v1.Events")


def _transfer_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.transfer.v1 import transfer_pb2_grpc
    from berth.services.transfer import TransferService

    puller, pusher, resolvers = ctx.get(TRANSFER)
    return GRPCService(TransferService(puller, pusher, ctx.get(p.METADATA).images, resolvers),
                       transfer_pb2_grpc.add_TransferServicer_to_server,
                       "berth.services.transfer.v1.Transfer")


def _tasks_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.tasks.v1 import tasks_pb2_grpc
    from berth.services.tasks import TasksService

    return GRPCService(TasksService(ctx.get(p.RUNTIME)), tasks_pb2_grpc.add_TasksServicer_to_server,
                       "containerd.services.tasks.v1.Tasks")


def _version_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.version.v1 import version_pb2_grpc
    from berth.services.version import VersionService

    return GRPCService(VersionService(), version_pb2_grpc.add_VersionServicer_to_server,
                       "containerd.services.version.v1.Version")


def _introspection_service(ctx: InitContext) -> GRPCService:
    from berth.api.services.introspection.v1 import introspection_pb2_grpc
    from berth.services.introspection import IntrospectionService, server_uuid

    fsmode.private_dir(ctx.root)
    return GRPCService(IntrospectionService(ctx.registry, server_uuid(ctx.root)),
                       introspection_pb2_grpc.add_IntrospectionServicer_to_server,
                       "containerd.services.introspection.v1.Introspection")


def _cri(ctx: InitContext) -> GRPCServices | LazyGRPCServices:
    """The CRI plugin. Its configuration is checked at start; the plugin itself (its stream
    server, CNI and exit monitor, 5 MiB and two threads) starts then only if ``k8s.io`` holds
    containers, whose pods it must recover, and otherwise with the first CRI call."""
    from berth import namespaces
    from berth.cri import NAMESPACE
    from berth.cri import config as cri_config

    config = cri_config.load(ctx.config)
    cri_log = logging.getLogger("berth.cri")
    for key in config.unknown:
        cri_log.warning("cri config: unknown key %r (ignored: containerd 1.6 has no such key)",
                        key)
    for key in config.ignored:
        cri_log.info("cri config: %r is accepted but has no effect in Berth yet", key)
    md = ctx.get(p.METADATA)
    if config.snapshotter not in md.snapshotters:
        raise errdefs.InvalidArgument(
            f"cri config: snapshotter {config.snapshotter!r} is not loaded")
    if config.stream_tls is not None:
        from berth.cri.streaming.server import tls_context

        tls_context(*config.stream_tls)  # a key pair that does not load stops berthd now

    def build() -> GRPCServices:
        return _cri_services(ctx, config)

    with namespaces.use(NAMESPACE):
        recorded = any(True for _ in md.containers.list())
    if recorded:
        return build()
    cri_log.info("cri: no pods recorded; the CRI starts with its first call")
    return LazyGRPCServices(("runtime.v1.RuntimeService", "runtime.v1.ImageService"), build)


def _cri_services(ctx: InitContext, config: CRIConfig) -> GRPCServices:
    from berth.api.cri.runtime.v1 import api_pb2_grpc
    from berth.cri import config as cri_config
    from berth.cri.base import Core, Paths
    from berth.cri.containers import Containers
    from berth.cri.images import ImageService
    from berth.cri.network import PodNetwork
    from berth.cri.processes import StreamBackend
    from berth.cri.runtime import Runtime
    from berth.cri.sandboxes import Sandboxes
    from berth.cri.service import ImageServicer, RuntimeServicer
    from berth.cri.spec import apparmor_supported
    from berth.cri.stats import Stats
    from berth.cri.streaming.server import StreamServer
    from berth.cri.streams import Streaming

    if apparmor_supported() and not config.disable_apparmor:
        logging.getLogger("berth.cri").error(
            "cri: this host enforces AppArmor and Berth has no default profile to load: "
            "containers that ask for no profile (most) are refused; give them a localhost/ "
            "profile, or set disable_apparmor = true to run them without AppArmor")
    md = ctx.get(p.METADATA)
    fs_path = next((pl.exports.get("root", "") for pl in ctx.registry.plugins()
                    if pl.registration.type == p.SNAPSHOTTER
                    and pl.registration.id == config.snapshotter), "")
    puller, _, resolvers = ctx.get(TRANSFER)
    if config.registry_config_path:
        # The CRI's own hosts.toml directories (mirrors, CAs, plain HTTP), as containerd's.
        resolvers = _resolvers(config.registry_config_path.split(":"))
    images = ImageService(md.images, md.content, puller, resolvers,
                          md.snapshotters[config.snapshotter],
                          snapshotter_name=config.snapshotter, fs_path=fs_path)
    tasks = ctx.get(p.RUNTIME)
    netns_dir = os.path.join(ctx.state, "netns") if config.netns_mounts_under_state_dir \
        else cri_config.DEFAULT_NETNS_DIR
    network = PodNetwork(config, netns_dir=netns_dir)
    core = Core(config, images, md.containers, md.snapshotters[config.snapshotter], tasks,
                Paths(ctx.root, ctx.state), md.leases, exchange=ctx.get(p.EVENT),
                berth_shim=tasks.is_berth_shim)
    containers = Containers(core)
    sandboxes = Sandboxes(core, containers, network)
    found_sandboxes, found_containers = core.load_records()
    sandboxes.recover(found_sandboxes)
    containers.recover(found_containers)
    core.start_monitor()
    stream_server = StreamServer(StreamBackend(core, containers), config.stream_server_address,
                                 config.stream_server_port, tls=config.stream_tls,
                                 idle_timeout=config.stream_idle_timeout)
    stream_server.start()
    streaming = Streaming(stream_server, sandboxes, containers)
    runtime = Runtime(network.error)
    return GRPCServices(
        GRPCService(RuntimeServicer(runtime, sandboxes, containers, Stats(core, fs_path),
                                    streaming),
                    api_pb2_grpc.add_RuntimeServiceServicer_to_server,
                    "runtime.v1.RuntimeService"),
        GRPCService(ImageServicer(images), api_pb2_grpc.add_ImageServiceServicer_to_server,
                    "runtime.v1.ImageService"))


def registry() -> Registry:
    """A registry with every built-in plugin registered."""
    reg = Registry()
    linux = ("linux/amd64",) if os.uname().machine == "x86_64" else ()
    for r in (
        Registration(p.EVENT, "exchange", _exchange),
        Registration(p.CONTENT, "content", _content),
        Registration(p.SNAPSHOTTER, "overlayfs", _overlayfs, platforms=linux),
        Registration(p.SNAPSHOTTER, "native", _native, platforms=linux),
        Registration(p.METADATA, "sqlite", _metadata,
                     requires=(p.CONTENT, p.SNAPSHOTTER, p.EVENT)),
        Registration(p.GC, "scheduler", _gc, requires=(p.METADATA,)),
        Registration(p.DIFFER, "walking", _walking, requires=(p.METADATA,), platforms=linux),
        Registration(TRANSFER, "local", _transfer, requires=(p.METADATA, p.DIFFER)),
        Registration(p.RUNTIME, "task", _tasks, requires=(p.METADATA, p.EVENT),
                     platforms=linux),
        _grpc("content", _content_service, p.METADATA),
        _grpc("images", _images_service, p.METADATA),
        _grpc("containers", _containers_service, p.METADATA),
        _grpc("snapshots", _snapshots_service, p.METADATA),
        _grpc("diff", _diff_service, p.DIFFER),
        _grpc("leases", _leases_service, p.METADATA),
        _grpc("namespaces", _namespaces_service, p.METADATA, p.EVENT),
        _grpc("events", _events_service, p.EVENT),
        _grpc("tasks", _tasks_service, p.RUNTIME),
        _grpc("transfer", _transfer_service, TRANSFER, p.METADATA),
        _grpc("version", _version_service),
        _grpc("cri", _cri, TRANSFER, p.METADATA, p.RUNTIME, p.EVENT),
        _grpc("introspection", _introspection_service, p.ALL),
    ):
        reg.register(r)
    return reg
