"""One container in a shim: its bundle, runtime options, rootfs, init and exec processes, cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from berth import errdefs
from berth.shim import cgroups
from berth.shim.options import RuntimeOptions
from berth.shim.process import ExecProcess, InitProcess, Process, RuntimeContext
from berth.shim.reaper import Reaper
from berth.shim.stdio import StdioRequest

if TYPE_CHECKING:
    from berth.api.runtime.task.v2.shim_pb2 import CreateTaskRequest
    from berth.api.types.mount_pb2 import Mount as MountMessage


def _kills_all_on_exit(bundle: str) -> bool:
    """containerd's rule: when the container shares a PID namespace, its other processes do
    not die with init, so the shim kills them; in a PID namespace of its own the kernel does."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return True
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "pid" and not ns.get("path"):
            return False
    return True


class Container:
    def __init__(self, container_id: str, bundle: str, init: InitProcess, ctx: RuntimeContext,
                 *, rootfs: str = "") -> None:
        self.id = container_id
        self.bundle = bundle
        self.init = init
        self.ctx = ctx
        self.rootfs = rootfs  # set when the shim mounted it (and so unmounts it)
        self.execs: dict[str, ExecProcess] = {}
        self.cgroup: cgroups.Cgroup | None = None
        self.oom: cgroups.OOMWatcher | None = None
        self.kill_all_on_exit = _kills_all_on_exit(bundle)

    @classmethod
    async def create(cls, request: CreateTaskRequest, namespace: str,
                     reaper: Reaper) -> Container:
        """Mount the rootfs (when the request has mounts) and ``runc create`` the container."""
        bundle = request.bundle
        options = RuntimeOptions.from_any(request.options)
        options.save(bundle)
        ctx = RuntimeContext(options.runc(bundle, namespace), reaper, namespace, bundle)
        stdio = StdioRequest(request.stdin, request.stdout, request.stderr, request.terminal)
        init = InitProcess(request.id, stdio, ctx, no_pivot=options.no_pivot_root,
                           no_new_keyring=options.no_new_keyring)
        rootfs = ""
        if request.rootfs:
            rootfs = os.path.join(bundle, "rootfs")
            _mount_rootfs(request.rootfs, rootfs)
        container = cls(request.id, bundle, init, ctx, rootfs=rootfs)
        try:
            await init.create()
        except BaseException:
            container.unmount_rootfs()
            raise
        container.cgroup = cgroups.load(init.pid)
        return container

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        process = self.execs.get(exec_id)
        if process is None:
            raise errdefs.NotFound(f"process does not exist {exec_id}")
        return process

    def processes(self) -> Iterator[Process]:
        yield self.init
        yield from self.execs.values()

    def add_exec(self, exec_id: str, stdio: StdioRequest, spec: bytes) -> ExecProcess:
        if exec_id in self.execs:
            raise errdefs.AlreadyExists(f"id {exec_id}")
        self.init.check_exec()
        process = ExecProcess(exec_id, stdio, self.ctx, self.init, spec)
        self.execs[exec_id] = process
        return process

    async def delete(self, exec_id: str) -> Process:
        process = self.process(exec_id)
        await process.delete()
        if exec_id:
            del self.execs[exec_id]
        else:
            self.stop_watching()
            self.unmount_rootfs()
        return process

    def stop_watching(self) -> None:
        if self.oom is not None:
            self.oom.close()
            self.oom = None

    def unmount_rootfs(self) -> None:
        if self.rootfs:
            from berth.mount import unmount

            unmount(self.rootfs)
            self.rootfs = ""


def _mount_rootfs(mounts: Iterable[MountMessage], target: str) -> None:
    from berth.mount import Mount, mount_all

    with contextlib.suppress(FileExistsError):
        os.mkdir(target, 0o711)
    try:
        mount_all([Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts], target)
    except errdefs.BerthError as err:
        raise errdefs.BerthError(f"failed to mount rootfs component: {err}") from None
