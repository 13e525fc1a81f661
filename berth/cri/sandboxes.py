"""Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
ListPodSandbox, as containerd 1.6.20's CRI plugin does them.

A pod sandbox is a "pause" container made from ``sandbox_image`` (pulled like any image when it
is not here), holding the pod's namespaces; its network namespace is made and pinned by berthd
(:mod:`berth.cri.network`) and joined to the pod network by CNI before the pause process starts.
Its hostname, ``/etc/hosts`` (the host's) and ``resolv.conf`` (from the DNSConfig, else the
host's) are files under the CRI root that its containers get bound in; ``/dev/shm`` is a tmpfs
of the pod's (the host's with host IPC).

RunPodSandbox undoes everything it made when any step fails (snapshot, record, files, the shm
mount, the network namespace and the CNI allocation, the task), so a failed call leaves nothing
behind. StopPodSandbox stops the pod's containers, kills the pause process, tears the network
down and removes the namespace; RemovePodSandbox (which stops first) removes the containers,
the files and the record. Removing an unknown pod succeeds, as in containerd.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from berth import errdefs, mount, namespaces
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.containers import AnyValue, RuntimeInfo, pack_spec, unpack_spec
from berth.containers import Container as Record
from berth.cri import NAMESPACE
from berth.cri import spec as crispec
from berth.cri.base import Core, new_id, remove_tree
from berth.cri.containers import Containers
from berth.cri.network import PodNetwork
from berth.cri.store import (
    KIND_SANDBOX,
    SANDBOX_EXTENSION,
    Sandbox,
    SandboxState,
    build_labels,
    sandbox_name,
)
from berth.runtime.runtime import CreateOpts, Exit

log = logging.getLogger(__name__)

RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
SHM_SIZE = 64 << 20  # containerd's defaultShmSize
ETC_HOSTS = "/etc/hosts"
HOST_RESOLV_CONF = "/etc/resolv.conf"


def resolv_conf(dns: pb.DNSConfig) -> str:
    """containerd's parseDNSOptions: the resolv.conf a DNSConfig makes ("" for none)."""
    out = ""
    if dns.searches:
        out += f"search {' '.join(dns.searches)}\n"
    if dns.servers:
        out += "".join(f"nameserver {s}\n" for s in dns.servers)
    if dns.options:
        out += f"options {' '.join(dns.options)}\n"
    return out


@dataclass(frozen=True)
class SandboxInfo:
    """PodSandboxStatus's answer."""

    sandbox: Sandbox
    state: SandboxState
    ip: str
    additional_ips: list[str]
    info: dict[str, str]


class Sandboxes:
    def __init__(self, core: Core, containers: Containers, network: PodNetwork) -> None:
        self.core = core
        self.containers = containers
        self.network = network
        self._cni_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cri-cni")
        core.on_exit(self._exited)

    # -- files ----------------------------------------------------------------------------------

    def _setup_files(self, sb: Sandbox, undo: contextlib.ExitStack) -> None:
        root = self.core.paths.sandbox_root(sb.id)
        state = self.core.paths.sandbox_state(sb.id)
        os.makedirs(root, mode=0o700)
        undo.callback(remove_tree, root)
        os.makedirs(state, mode=0o700)
        undo.callback(remove_tree, state)
        hostname = sb.config.hostname or os.uname().nodename
        _write(os.path.join(root, "hostname"), hostname + "\n")
        shutil.copyfile(ETC_HOSTS, os.path.join(root, "hosts"))
        os.chmod(os.path.join(root, "hosts"), 0o644)
        content = resolv_conf(sb.config.dns_config) if sb.config.HasField("dns_config") else ""
        if content:
            _write(os.path.join(root, "resolv.conf"), content)
        else:
            shutil.copyfile(HOST_RESOLV_CONF, os.path.join(root, "resolv.conf"))
            os.chmod(os.path.join(root, "resolv.conf"), 0o644)
        if sb.config.linux.security_context.namespace_options.ipc == pb.NODE:
            if not os.path.exists(crispec.DEV_SHM):
                raise errdefs.FailedPrecondition(
                    f"host {crispec.DEV_SHM} is not available for host ipc")
            return
        shm = self.core.paths.shm(sb.id)
        os.makedirs(shm, mode=0o700)
        mount.mount(mount.Mount("tmpfs", "shm", ("nosuid", "nodev", "noexec", "mode=1777",
                                                 f"size={SHM_SIZE // 1024}k")), shm)
        undo.callback(self._unmount_shm, sb.id)

    def _unmount_shm(self, sandbox_id: str) -> None:
        shm = self.core.paths.shm(sandbox_id)
        if os.path.ismount(shm):
            mount.unmount(shm, detach=True)

    def sandbox_files(self, sandbox_id: str) -> dict[str, str]:
        root = self.core.paths.sandbox_root(sandbox_id)
        return {crispec.ETC_HOSTNAME: os.path.join(root, "hostname"),
                crispec.ETC_HOSTS: os.path.join(root, "hosts"),
                crispec.RESOLV_CONF: os.path.join(root, "resolv.conf")}

    # -- RunPodSandbox -----------------------------------------------------------------------

    def run(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        if not config.HasField("metadata"):
            raise errdefs.InvalidArgument("sandbox config must include metadata")
        name = sandbox_name(config.metadata)
        sandbox_id = new_id()
        index = self.core.index
        index.reserve(name, sandbox_id)
        try:
            with namespaces.use(NAMESPACE), self.core.leased(), contextlib.ExitStack() as undo:
                sb = self._run(sandbox_id, name, config, runtime_handler, undo)
                undo.pop_all()
        except BaseException:
            index.release(name)
            raise
        with index.lock:
            index.sandboxes[sb.id] = sb
        log.info("cri: pod sandbox %s (%s) is ready, pid %d, ip %s", sb.id, name, sb.pid,
                 sb.ip or "-")
        return sb.id

    def _run(self, sandbox_id: str, name: str, config: pb.PodSandboxConfig,
             handler_name: str, undo: contextlib.ExitStack) -> Sandbox:
        core = self.core
        try:
            image = core.images.ensure(core.config.sandbox_image)
        except errdefs.BerthError as err:
            raise type(err)(
                f"failed to get sandbox image {core.config.sandbox_image!r}: {err}") from None
        handler = core.config.handler(handler_name)
        sb = Sandbox(sandbox_id, name, config, runtime_handler=handler_name)
        core.snapshotter.prepare(sandbox_id, image.chain_id)
        undo.callback(core.delete_record, sandbox_id)
        self._setup_files(sb, undo)
        if not sb.host_network:
            sb.netns_path = self.network.create_netns()
            undo.callback(self.network.remove_netns, sb.netns_path)
        with core.rootfs(sandbox_id) as rootfs:
            spec = crispec.sandbox_spec(
                sandbox_id, config, image.config, namespace=NAMESPACE, rootfs=rootfs,
                netns_path=sb.netns_path, shm_path=core.paths.shm(sandbox_id),
                resolv_path=self.sandbox_files(sandbox_id)[crispec.RESOLV_CONF],
                restrict_oom_score_adj=core.config.restrict_oom_score_adj,
                pod_annotations=handler.pod_annotations,
                unprivileged_ports=core.config.enable_unprivileged_ports,
                unprivileged_icmp=core.config.enable_unprivileged_icmp)
        record = core.containers.create(Record(
            id=sandbox_id, runtime=RuntimeInfo(handler.runtime_type,
                                               AnyValue(RUNC_OPTIONS_TYPE)),
            spec=pack_spec(spec), labels=build_labels(dict(config.labels), image.config,
                                                      KIND_SANDBOX),
            image=image.name, snapshotter=core.config.snapshotter, snapshot_key=sandbox_id,
            extensions={SANDBOX_EXTENSION: sb.extension()}))
        sb.created_at = record.created_at
        # The pod's network is set up (CNI ADD: a few plugin runs) while its task is created
        # (the shim, runc create): neither needs the other until the pause process starts.
        network: Future[None] | None = None
        if sb.netns_path:
            network = self._cni_pool.submit(self.network.setup, sb)
        try:
            task = core.runtime.create(sandbox_id, CreateOpts(runtime_path=handler.runtime_path))
            undo.callback(core.remove_task, sandbox_id)
        finally:
            if network is not None:
                network.result()  # a failed ADD undoes what it allocated, then raises here
                undo.callback(self.network.teardown, sb)
        if network is not None:
            record.extensions = {**record.extensions, SANDBOX_EXTENSION: sb.extension()}
            core.containers.update(record, [f"extensions.{SANDBOX_EXTENSION}"])
        sb.pid = task.start()
        sb.state = SandboxState.READY
        return sb

    # -- StopPodSandbox / RemovePodSandbox ------------------------------------------------

    def stop(self, sandbox_id: str) -> None:
        try:
            sb = self.core.index.sandbox(sandbox_id)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                f"an error occurred when try to find sandbox {sandbox_id!r}: not found") from None
        with namespaces.use(NAMESPACE), sb.lock:
            for c in self.core.index.containers_of(sb.id):
                self.containers.stop(c.id, 0)
            self._stop(sb)

    def _stop(self, sb: Sandbox) -> None:
        self.core.remove_task(sb.id)
        sb.state = SandboxState.NOTREADY
        if sb.netns_path:
            self.network.teardown(sb)
            self.network.remove_netns(sb.netns_path)
        self._unmount_shm(sb.id)

    def remove(self, sandbox_id: str) -> None:
        try:
            sb = self.core.index.sandbox(sandbox_id)
        except errdefs.NotFound:
            return  # containerd: removing what is not there succeeds
        with namespaces.use(NAMESPACE), sb.lock:
            for c in self.core.index.containers_of(sb.id):
                self.containers.remove(c.id)
            self._stop(sb)
            self.core.delete_record(sb.id)
            remove_tree(self.core.paths.sandbox_root(sb.id))
            remove_tree(self.core.paths.sandbox_state(sb.id))
        index = self.core.index
        with index.lock:
            index.sandboxes.pop(sb.id, None)
        index.release(sb.name)
        log.info("cri: pod sandbox %s (%s) removed", sb.id, sb.name)

    def _exited(self, task_id: str, exit_: Exit) -> None:
        with self.core.index.lock:
            sb = self.core.index.sandboxes.get(task_id)
        if sb is None:
            return
        log.info("cri: the pause process of pod sandbox %s exited with status %d", task_id,
                 exit_.status)
        with sb.lock:  # after a StopPodSandbox under way, which deletes the task itself
            sb.state = SandboxState.NOTREADY
            with contextlib.suppress(errdefs.NotFound, errdefs.FailedPrecondition):
                self.core.runtime.delete(task_id)

    # -- status and list ---------------------------------------------------------------------

    def status(self, sandbox_id: str, verbose: bool = False) -> SandboxInfo:
        try:
            sb = self.core.index.sandbox(sandbox_id)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                "an error occurred when try to find sandbox: not found") from None
        state = sb.state
        closed = bool(sb.netns_path) and self.network.netns_closed(sb.netns_path)
        ip, extra = ("", []) if sb.host_network or closed or not sb.netns_path \
            else (sb.ip, sb.additional_ips)
        info: dict[str, str] = {}
        if verbose:
            info["info"] = json.dumps(self._verbose(sb, state, closed), separators=(",", ":"))
        return SandboxInfo(sb, state, ip, extra, info)

    def _verbose(self, sb: Sandbox, state: SandboxState, closed: bool) -> dict[str, Any]:
        with namespaces.use(NAMESPACE):
            try:
                record = self.core.containers.get(sb.id)
            except errdefs.NotFound:
                record = None
        doc: dict[str, Any] = {
            "pid": sb.pid, "processStatus": "running" if state == SandboxState.READY
            else "stopped", "netNamespaceClosed": closed,
            "image": record.image if record else "", "snapshotKey": sb.id,
            "snapshotter": self.core.config.snapshotter, "runtimeHandler": sb.runtime_handler,
            "runtimeType": record.runtime.name if record else "",
            "runtimeOptions": {}, "config": json.loads(sb.extension().value)["Metadata"]["Config"],
        }
        if record is not None:
            doc["runtimeSpec"] = unpack_spec(record.spec)
        if sb.cni_result is not None:
            doc["cniResult"] = sb.cni_result
        return doc

    def list(self, flt: pb.PodSandboxFilter | None = None) -> builtins.list[SandboxInfo]:
        with self.core.index.lock:
            sandboxes = list(self.core.index.sandboxes.values())
        out = []
        for sb in sandboxes:
            state = sb.state
            if flt is not None:
                if flt.id and not sb.id.startswith(flt.id):
                    continue
                if flt.HasField("state") and sandbox_state(state) != flt.state.state:
                    continue
                if any(sb.config.labels.get(k) != v for k, v in flt.label_selector.items()):
                    continue
            out.append(SandboxInfo(sb, state, sb.ip, sb.additional_ips, {}))
        return sorted(out, key=lambda i: i.sandbox.created_at)

    # -- recovery -----------------------------------------------------------------------------

    def recover(self, sandboxes: builtins.list[Sandbox]) -> None:
        """Take back the pods found at start: READY if their pause task still runs."""
        index = self.core.index
        with namespaces.use(NAMESPACE):
            for sb in sandboxes:
                task = self.core.task(sb.id)
                running = False
                if task is not None:
                    try:
                        state = task.state()
                        running = state.status.value == "running"
                        sb.pid = state.pid
                    except errdefs.BerthError as err:
                        log.warning("cri: pod sandbox %s: its task does not answer: %s", sb.id,
                                    err)
                    if not running:
                        with contextlib.suppress(errdefs.BerthError):
                            self.core.remove_task(sb.id)
                sb.state = SandboxState.READY if running else SandboxState.NOTREADY
                with index.lock:
                    index.sandboxes[sb.id] = sb
                index.reserve(sb.name, sb.id)


def sandbox_state(state: SandboxState) -> pb.PodSandboxState:
    """The CRI PodSandboxState."""
    return pb.SANDBOX_READY if state == SandboxState.READY else pb.SANDBOX_NOTREADY


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
