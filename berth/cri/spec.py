"""The OCI specs of pod sandboxes and CRI containers, as containerd 1.6.20's CRI plugin writes
them (its ``sandboxContainerSpec`` and ``containerSpec``), built on :mod:`berth.oci.spec`.

Everything here is computed from its arguments: the only I/O is reading the image's
``/etc/passwd`` and ``/etc/group`` under the ``rootfs`` a caller mounted, and a
``localhost/<path>`` seccomp profile. Bad input (a malformed seccomp profile, an unknown user, a
capability that does not exist) is an InvalidArgument or NotFound that names it.

Differences from ``oci.spec.default_spec`` that containerd's CRI makes for both kinds: no
``/run`` mount, no rlimits, every device denied in the device cgroup (and none allowed by
default), ``/dev/shm`` the pod's (a bind of the sandbox's tmpfs, or the host's with host IPC).
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.oci import seccomp
from berth.oci import spec as oci
from berth.oci.users import resolve_user, supplementary_gids

Spec = oci.Spec

# Annotations (containerd's pkg/cri/annotations).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"
TYPE_SANDBOX = "sandbox"
TYPE_CONTAINER = "container"

DEFAULT_SANDBOX_OOM_ADJ = -998
DEFAULT_SANDBOX_CPU_SHARES = 2
DEV_SHM = "/dev/shm"
ETC_HOSTNAME, ETC_HOSTS, RESOLV_CONF = "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"

PROFILE_RUNTIME_DEFAULT = "runtime/default"
PROFILE_DOCKER_DEFAULT = "docker/default"
PROFILE_UNCONFINED = "unconfined"
PROFILE_LOCALHOST = "localhost/"
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
APPARMOR_PARSER = "/sbin/apparmor_parser"
APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"

_PROPAGATION = {pb.PROPAGATION_PRIVATE: "rprivate",
                pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                pb.PROPAGATION_BIDIRECTIONAL: "rshared"}


def _cri_base(spec: Spec) -> Spec:
    """What the CRI takes away from containerd's default spec for every container."""
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/run"]
    spec["process"].pop("rlimits", None)
    spec["linux"]["resources"]["devices"] = [{"allow": False, "access": "rwm"}]
    return spec


def _bind(source: str, destination: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source,
            "options": list(options)}


def cgroups_path(parent: str, container_id: str, namespace: str) -> str:
    """containerd's getCgroupsPath (cgroupfs driver): ``parent/id``, or the default
    ``/<namespace>/<id>`` without a parent; for a systemd slice, ``slice:cri-containerd:id``."""
    if not parent:
        return oci.cgroups_path(namespace, container_id)
    if parent.endswith(".slice"):
        return f"{os.path.basename(parent)}:cri-containerd:{container_id}"
    return os.path.join(parent, container_id)


def _namespaces(spec: Spec, options: pb.NamespaceOption, sandbox_pid: int = 0,
                netns_path: str = "") -> None:
    """Set the spec's namespaces. A sandbox (``sandbox_pid`` 0) makes new ones but where its
    options say NODE (its network namespace the one pinned at ``netns_path``). A container
    joins its sandbox's (which are the host's where the pod's are), but for a pid namespace
    of its own with CONTAINER, and its mount namespace."""
    if options.pid == pb.TARGET:
        raise errdefs.NotImplementedByBerth("the TARGET pid namespace mode is not supported")
    if options.HasField("userns_options") and options.userns_options.mode != pb.NODE:
        # Never run as the host's root a pod that asked not to (hostUsers: false).
        raise errdefs.NotImplementedByBerth("user namespaces for pods are not supported")
    if sandbox_pid:
        def joined(kind: str, proc_name: str) -> dict[str, Any]:
            return {"type": kind, "path": f"/proc/{sandbox_pid}/ns/{proc_name}"}

        spec["linux"]["namespaces"] = [
            {"type": "pid"} if options.pid == pb.CONTAINER else joined("pid", "pid"),
            joined("ipc", "ipc"), joined("uts", "uts"), {"type": "mount"},
            joined("network", "net")]
        return
    wanted: list[dict[str, Any]] = []
    if options.pid != pb.NODE:
        wanted.append({"type": "pid"})
    if options.ipc != pb.NODE:
        wanted.append({"type": "ipc"})
    if options.network != pb.NODE:
        wanted.append({"type": "uts"})
    wanted.append({"type": "mount"})
    if options.network != pb.NODE:
        wanted.append({"type": "network", "path": netns_path} if netns_path
                      else {"type": "network"})
    spec["linux"]["namespaces"] = wanted


def clamp_oom_score_adj(value: int, restrict: bool) -> int:
    """containerd's restrict_oom_score_adj: never below berthd's own score (root here lacks
    CAP_SYS_RESOURCE, so a lower one makes runc fail)."""
    if not restrict:
        return value
    with open("/proc/self/oom_score_adj") as f:
        current = int(f.read().strip() or 0)
    return max(value, current)


def _read_profile(path: str) -> bytes:
    """A localhost profile's bytes (at most 1 MiB): a regular file only, so a FIFO or device
    named there cannot hang or feed a CRI call."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(1 << 20)
    finally:
        os.close(fd)


@functools.cache
def apparmor_supported() -> bool:
    """Whether this host enforces AppArmor (the kernel has it on and its parser is installed),
    as containerd decides."""
    try:
        with open(APPARMOR_ENABLED) as f:
            enabled = f.read().strip() == "Y"
    except OSError:
        return False
    return enabled and os.path.exists(APPARMOR_PARSER)


def apparmor_profile(security: pb.LinuxContainerSecurityContext, *, enabled: bool,
                     loaded: str = APPARMOR_PROFILES) -> str | None:
    """The ``process.apparmorProfile`` a container's security context asks for (None: no
    profile), as containerd 1.6 decides, with ``enabled`` whether AppArmor is in use (host
    support and no ``disable_apparmor``):

    * without AppArmor, asking for any profile but ``unconfined`` is an error (containerd:
      "apparmor is not supported"), never silently dropped;
    * with it, ``localhost/NAME`` must be loaded (``loaded`` lists the kernel's profiles), for
      privileged containers too; containerd applies a default profile of its own to the rest
      (but privileged ones), which Berth does not make: such a container is refused (Unknown)
      rather than run unconfined."""
    requested: str | None = security.apparmor_profile or None
    if security.HasField("apparmor"):
        profile = security.apparmor
        requested = {pb.SecurityProfile.RuntimeDefault: PROFILE_RUNTIME_DEFAULT,
                     pb.SecurityProfile.Unconfined: PROFILE_UNCONFINED}.get(
            profile.profile_type, PROFILE_LOCALHOST + profile.localhost_ref)
    if not enabled:
        if requested not in (None, PROFILE_UNCONFINED):
            raise errdefs.Unknown(
                f"apparmor is not supported: this host cannot apply profile {requested!r}")
        return None
    if requested == PROFILE_UNCONFINED:
        return None
    if requested is None or requested == PROFILE_RUNTIME_DEFAULT:
        if security.privileged:
            return None  # as containerd: a privileged container gets no default profile
        if requested is None:
            raise errdefs.Unknown(
                "apparmor is enforced on this host, and Berth has no default profile to "
                "apply: ask for a localhost/ profile, or set disable_apparmor = true in the "
                "CRI configuration to run such containers without AppArmor")
        raise errdefs.Unknown(
            "apparmor is enforced on this host, and Berth has no runtime/default profile to "
            "apply: ask for a localhost/ profile instead")
    if not requested.startswith(PROFILE_LOCALHOST):
        raise errdefs.Unknown(f"invalid apparmor profile {requested!r}")
    name = requested.removeprefix(PROFILE_LOCALHOST)
    try:
        with open(loaded) as f:
            names = {line.rsplit(" (", 1)[0] for line in f}
    except OSError as err:
        raise errdefs.Unknown(f"cannot list the loaded apparmor profiles: {err.strerror}") from None
    if not name or name not in names:
        raise errdefs.Unknown(f"apparmor profile not found {name!r}")
    return name


def seccomp_profile(security: pb.LinuxContainerSecurityContext | pb.LinuxSandboxSecurityContext,
                    capabilities: Sequence[str]) -> dict[str, Any] | None:
    """The ``linux.seccomp`` a security context asks for (None: unconfined). A profile that
    cannot be used is an Unknown error, the code containerd answers with."""
    if security.privileged:
        return None
    path = security.seccomp_profile_path
    if security.HasField("seccomp"):
        profile = security.seccomp
        if profile.profile_type == pb.SecurityProfile.RuntimeDefault:
            path = PROFILE_RUNTIME_DEFAULT
        elif profile.profile_type == pb.SecurityProfile.Unconfined:
            path = PROFILE_UNCONFINED
        else:
            path = PROFILE_LOCALHOST + profile.localhost_ref
    if path in ("", PROFILE_UNCONFINED):
        return None
    if path in (PROFILE_RUNTIME_DEFAULT, PROFILE_DOCKER_DEFAULT):
        return seccomp.default_profile(capabilities)
    if path.startswith(PROFILE_LOCALHOST):
        file = path.removeprefix(PROFILE_LOCALHOST)
        if not os.path.isabs(file):
            raise errdefs.Unknown(
                f"seccomp profile {path!r}: the localhost profile path must be absolute")
        try:
            data = _read_profile(file)
            doc = json.loads(data)
        except OSError as err:
            raise errdefs.Unknown(
                f"cannot load seccomp profile {file!r}: {err.strerror}") from None
        except ValueError as err:
            raise errdefs.Unknown(
                f"seccomp profile {file!r} is not valid JSON: {err}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("defaultAction"), str):
            raise errdefs.Unknown(
                f"seccomp profile {file!r} is malformed: it needs a defaultAction")
        return doc
    raise errdefs.Unknown(f"unsupported seccomp profile {path!r}")


def _user_ids(rootfs: str | None, user: str, run_as_user: int | None, run_as_group: int | None,
              username: str) -> tuple[int, int]:
    """(uid, gid) as containerd picks them: runAsUser (+ runAsGroup), runAsUsername, else the
    image's user."""
    if run_as_user is not None:
        who = str(run_as_user) if run_as_group is None else f"{run_as_user}:{run_as_group}"
    elif username:
        who = username if run_as_group is None else f"{username}:{run_as_group}"
    elif user:
        who = user
    else:
        who = "0" if run_as_group is None else f"0:{run_as_group}"
    return resolve_user(who, rootfs)


def _process_user(spec: Spec, rootfs: str | None, image_user: str, security: Any,
                  supplemental: Sequence[int], *, image_groups: bool) -> None:
    """The process's user and groups. With ``image_groups`` (containers), the groups the
    image's ``/etc/group`` gives the user containerd looks up: runAsUsername, else runAsUser,
    else uid 0, never the image's own user (containerd's WithAdditionalGIDs). Then the CRI's
    supplemental groups."""
    run_as_user = security.run_as_user.value if security.HasField("run_as_user") else None
    run_as_group = security.run_as_group.value if security.HasField("run_as_group") else None
    username = getattr(security, "run_as_username", "")
    uid, gid = _user_ids(rootfs, image_user, run_as_user, run_as_group, username)
    gids = [gid]
    if image_groups:
        lookup = username or str(run_as_user or 0)
        gids += supplementary_gids(lookup, rootfs)
    gids += [int(g) for g in supplemental]
    spec["process"]["user"] = {"uid": uid, "gid": gid,
                               "additionalGids": list(dict.fromkeys(gids))}


def _image_config(doc: Mapping[str, Any]) -> dict[str, Any]:
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise errdefs.InvalidArgument("image config: config must be an object")
    return config


def _passthrough(annotations: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The annotations whose keys match a runtime handler's ``pod_annotations`` (a glob each)."""
    return {k: v for k, v in annotations.items()
            if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def sandbox_spec(sandbox_id: str, config: pb.PodSandboxConfig, image_doc: Mapping[str, Any],
                 *, namespace: str, rootfs: str | None, netns_path: str, shm_path: str,
                 resolv_path: str, restrict_oom_score_adj: bool,
                 pod_annotations: Sequence[str] = (), unprivileged_ports: bool = False,
                 unprivileged_icmp: bool = False) -> Spec:
    image = _image_config(image_doc)
    args = [*(image.get("Entrypoint") or []), *(image.get("Cmd") or [])]
    if not args:
        raise errdefs.InvalidArgument(
            "invalid empty entrypoint and cmd in the sandbox image's config")
    spec = _cri_base(oci.default_spec(namespace, sandbox_id))
    process = spec["process"]
    process["args"] = [str(a) for a in args]
    process["env"] = list(image.get("Env") or [oci.DEFAULT_PATH_ENV])
    process["cwd"] = oci.check_cwd(str(image.get("WorkingDir") or "/"))
    spec["root"]["readonly"] = True
    if config.hostname:
        spec["hostname"] = config.hostname
    linux_config = config.linux
    security = linux_config.security_context
    options = security.namespace_options
    _namespaces(spec, options, netns_path=netns_path)
    spec["mounts"] += [_bind(DEV_SHM if options.ipc == pb.NODE else shm_path, DEV_SHM,
                             "rbind", "ro"),
                       _bind(resolv_path, RESOLV_CONF, "rbind", "ro")]
    _process_user(spec, rootfs, str(image.get("User") or ""), security,
                  security.supplemental_groups, image_groups=False)
    if security.readonly_rootfs:
        spec["root"]["readonly"] = True
    sysctls = dict(linux_config.sysctls)
    if options.network != pb.NODE:
        if unprivileged_ports:
            sysctls.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
        if unprivileged_icmp:
            sysctls.setdefault("net.ipv4.ping_group_range", "0 2147483647")
    if sysctls:
        spec["linux"]["sysctl"] = sysctls
    spec["linux"]["resources"]["cpu"] = {"shares": DEFAULT_SANDBOX_CPU_SHARES}
    spec["linux"]["cgroupsPath"] = cgroups_path(linux_config.cgroup_parent, sandbox_id,
                                                namespace)
    process["oomScoreAdj"] = clamp_oom_score_adj(DEFAULT_SANDBOX_OOM_ADJ,
                                                 restrict_oom_score_adj)
    profile = seccomp_profile(security, process["capabilities"]["bounding"])
    if profile is not None:
        spec["linux"]["seccomp"] = profile
    meta = config.metadata
    spec["annotations"] = {
        **_passthrough(config.annotations, pod_annotations),
        CONTAINER_TYPE: TYPE_SANDBOX, SANDBOX_ID: sandbox_id,
        SANDBOX_NAMESPACE: meta.namespace, SANDBOX_NAME: meta.name,
        SANDBOX_UID: meta.uid, SANDBOX_LOG_DIR: config.log_directory}
    return spec


def _capabilities(security: pb.LinuxContainerSecurityContext) -> list[str]:
    """containerd's capability rules: ``ALL`` adds every capability berthd has itself (as
    containerd takes its own) or drops all; any
    other name gets ``CAP_`` put in front, unchecked (an unknown one, or one already prefixed,
    reaches runc, which ignores what it does not know), adds after drops of ``ALL``."""
    caps = list(oci.DEFAULT_CAPABILITIES)
    add = [c.upper() for c in security.capabilities.add_capabilities]
    drop = [c.upper() for c in security.capabilities.drop_capabilities]
    if "ALL" in add:
        caps = oci.current_capabilities()
    if "ALL" in drop:
        caps = []
    for cap in add:
        if cap != "ALL" and "CAP_" + cap not in caps:
            caps.append("CAP_" + cap)
    for cap in drop:
        if cap != "ALL":
            caps = [c for c in caps if c != "CAP_" + cap]
    return caps


def _device(device: pb.Device) -> tuple[dict[str, Any], dict[str, Any]]:
    """A CRI device as a ``linux.devices`` entry and its device cgroup rule."""
    try:
        st = os.stat(device.host_path)
    except OSError as err:
        raise errdefs.InvalidArgument(
            f"device {device.host_path!r}: {err.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise errdefs.InvalidArgument(f"{device.host_path!r} is not a device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    entry = {"path": device.container_path, "type": kind, "major": major, "minor": minor,
             "fileMode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}
    rule = {"allow": True, "type": kind, "major": major, "minor": minor,
            "access": device.permissions or "rwm"}
    return entry, rule


def _resources(spec: Spec, res: pb.LinuxContainerResources, restrict: bool) -> None:
    linux = spec["linux"]
    resources = linux.setdefault("resources", {})
    cpu: dict[str, Any] = {}
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        resources["cpu"] = cpu
    if res.memory_limit_in_bytes:
        resources["memory"] = {"limit": res.memory_limit_in_bytes}
        # containerd: no swap beyond the limit unless asked, where swap is accounted.
        swap = res.memory_swap_limit_in_bytes or (res.memory_limit_in_bytes
                                                  if swap_accounted() else 0)
        if swap:
            resources["memory"]["swap"] = swap
    if res.hugepage_limits:
        resources["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                       for h in res.hugepage_limits]
    if res.unified:
        resources["unified"] = dict(res.unified)
    if res.oom_score_adj:
        spec["process"]["oomScoreAdj"] = clamp_oom_score_adj(res.oom_score_adj, restrict)


def swap_accounted() -> bool:
    """Whether the kernel accounts swap in the memory cgroup (containerd's
    SwapControllerAvailable): cgroup v1's memsw files, or v2's memory.swap.max."""
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") or \
        os.path.exists("/sys/fs/cgroup/init.scope/memory.swap.max")


def linux_resources(res: pb.LinuxContainerResources) -> dict[str, Any]:
    """The OCI ``LinuxResources`` of an UpdateContainerResources request."""
    spec: Spec = {"linux": {}, "process": {}}
    _resources(spec, res, False)
    return dict(spec["linux"].get("resources") or {})


def container_spec(container_id: str, config: pb.ContainerConfig,
                   sandbox_config: pb.PodSandboxConfig, image_doc: Mapping[str, Any], *,
                   namespace: str, sandbox_id: str, sandbox_pid: int, rootfs: str | None,
                   sandbox_files: Mapping[str, str], shm_path: str, image_name: str,
                   restrict_oom_score_adj: bool, host_devices: Sequence[Mapping[str, Any]] = (),
                   container_annotations: Sequence[str] = (), apparmor: bool = False) -> Spec:
    """``sandbox_files``: the sandbox's hostname, hosts and resolv.conf files by their path in
    the container (ETC_HOSTNAME, ETC_HOSTS, RESOLV_CONF). ``apparmor``: whether AppArmor is in
    use (see :func:`apparmor_profile`)."""
    image = _image_config(image_doc)
    spec = _cri_base(oci.default_spec(namespace, container_id))
    process = spec["process"]
    security = config.linux.security_context
    # Command: the CRI's command replaces the entrypoint; args replace the image's Cmd.
    command = list(config.command)
    args = list(config.args)
    if not command:
        command = [str(a) for a in image.get("Entrypoint") or []]
        if not args:
            args = [str(a) for a in image.get("Cmd") or []]
    argv = command + args
    if not argv:
        raise errdefs.InvalidArgument("no command specified")
    process["args"] = argv
    if config.tty:
        process["terminal"] = True
    cwd = config.working_dir or str(image.get("WorkingDir") or "")
    process["cwd"] = oci.check_cwd(cwd or "/")
    env = list(image.get("Env") or [oci.DEFAULT_PATH_ENV])
    hostname = sandbox_config.hostname or (os.uname().nodename
                                           if sandbox_config.linux.security_context
                                           .namespace_options.network == pb.NODE else "")
    if hostname:
        env = oci.replace_or_append_env(env, [f"HOSTNAME={hostname}"])
    env = oci.replace_or_append_env(env, [f"{kv.key}={kv.value}" for kv in config.envs])
    process["env"] = env
    _process_user(spec, rootfs, str(image.get("User") or ""), security,
                  security.supplemental_groups, image_groups=True)
    if security.no_new_privs:
        process["noNewPrivileges"] = True
    else:
        process.pop("noNewPrivileges", None)
    if security.readonly_rootfs:
        spec["root"]["readonly"] = True
    # Mounts: the cgroup filesystem, the sandbox's files, /dev/shm, then the CRI's, each
    # replacing a default mount at the same place.
    ro = "ro" if security.readonly_rootfs else "rw"
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != DEV_SHM]
    spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup",
                           "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime",
                                       "rw" if security.privileged else "ro"]})
    wanted = {m.container_path for m in config.mounts}
    added: list[dict[str, Any]] = []
    for m in config.mounts:
        if not os.path.isabs(m.container_path):
            raise errdefs.InvalidArgument(
                f"mount destination {m.container_path!r} must be an absolute path")
        if m.uidMappings or m.gidMappings or m.recursive_read_only or m.HasField("image"):
            # Each changes what the container may do with the mount: refused, not dropped.
            raise errdefs.NotImplementedByBerth(
                f"mount {m.container_path!r}: id-mapped, recursively read-only and image "
                "mounts are not supported")
        source = _host_source(m.host_path)
        propagation = _PROPAGATION.get(m.propagation, "rprivate")
        _check_propagation(source, propagation)
        added.append(_bind(source, m.container_path, "rbind", propagation,
                           "ro" if m.readonly else "rw"))
    for dest in (ETC_HOSTNAME, ETC_HOSTS, RESOLV_CONF):
        if dest not in wanted and sandbox_files.get(dest):
            added.append(_bind(sandbox_files[dest], dest, "rbind", "rprivate", ro))
    if DEV_SHM not in wanted:
        # The container's own IPC option decides (the kubelet sets it as the pod's).
        host_ipc = security.namespace_options.ipc == pb.NODE
        added.append(_bind(DEV_SHM if host_ipc else shm_path, DEV_SHM, "rbind", "rprivate",
                           "rw"))
    # Shallower first (a stable sort), so that no mount hides one inside it.
    added.sort(key=lambda m: len([p for p in m["destination"].split("/") if p]))
    replaced = {m["destination"] for m in added}
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in replaced] + added
    linux = spec["linux"]
    # Namespaces: the sandbox's, as its pid / ipc / network options say.
    _namespaces(spec, namespace_options(config, sandbox_config), sandbox_pid=sandbox_pid)
    linux["cgroupsPath"] = cgroups_path(sandbox_config.linux.cgroup_parent, container_id,
                                        namespace)
    for device in config.devices:
        entry, rule = _device(device)
        linux.setdefault("devices", []).append(entry)
        linux["resources"]["devices"].append(rule)
    if config.linux.HasField("resources"):
        _resources(spec, config.linux.resources, restrict_oom_score_adj)
    # Privileges.
    if security.privileged:
        if not sandbox_config.linux.security_context.privileged:
            raise errdefs.InvalidArgument(
                "no privileged container allowed in a sandbox that is not privileged")
        caps = oci.current_capabilities()
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        for mount in spec["mounts"]:
            if mount["type"] == "sysfs":
                mount["options"] = ["rw" if o == "ro" else o for o in mount["options"]]
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        linux["devices"] = [*(linux.get("devices") or []), *[dict(d) for d in host_devices]]
    else:
        caps = _capabilities(security)
        # Exactly the paths the CRI names (the kubelet sends its defaults): none if none.
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        if security.masked_paths:
            linux["maskedPaths"] = list(security.masked_paths)
        if security.readonly_paths:
            linux["readonlyPaths"] = list(security.readonly_paths)
    process["capabilities"] = {"bounding": list(caps), "effective": list(caps),
                               "permitted": list(caps)}
    profile = seccomp_profile(security, caps)
    if profile is not None:
        linux["seccomp"] = profile
    confinement = apparmor_profile(security, enabled=apparmor)
    if confinement is not None:
        process["apparmorProfile"] = confinement
    meta = sandbox_config.metadata
    spec["annotations"] = {
        **_passthrough(config.annotations, container_annotations),
        CONTAINER_NAME: config.metadata.name, CONTAINER_TYPE: TYPE_CONTAINER,
        IMAGE_NAME: image_name, SANDBOX_ID: sandbox_id, SANDBOX_NAME: meta.name,
        SANDBOX_NAMESPACE: meta.namespace, SANDBOX_UID: meta.uid}
    return spec


def _mount_of(path: str) -> tuple[str, list[str]]:
    """(mount point, optional fields) of the mount ``path`` lies on, from mountinfo."""
    real = os.path.realpath(path)
    best: tuple[str, list[str]] = ("/", [])
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) \
                    and len(point) >= len(best[0]):
                best = (point, fields[6:fields.index("-")])
    return best


def _host_source(host_path: str) -> str:
    """A mount's host path as containerd mounts it: made (0755) if missing, any other failure
    to look at it an error, and then with its symlinks resolved, so that the path checked here
    and the path mounted are the same."""
    try:
        os.stat(host_path)
    except FileNotFoundError:
        try:
            os.makedirs(host_path, mode=0o755, exist_ok=True)
        except OSError as err:
            raise errdefs.Unknown(
                f"failed to mkdir {host_path!r}: {err.strerror or err}") from None
    except OSError as err:
        raise errdefs.Unknown(f"failed to stat {host_path!r}: {err.strerror}") from None
    return os.path.realpath(host_path)


def _check_propagation(host_path: str, propagation: str) -> None:
    """containerd's ensureShared / ensureSharedOrSlave: a mount that propagates from the host
    needs its source on a shared (or, for rslave, slave) mount."""
    if propagation == "rprivate":
        return
    point, optional = _mount_of(host_path)
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if propagation == "rshared" and not shared:
        raise errdefs.Unknown(f"path {host_path!r} is mounted on {point!r} but it is not a "
                              "shared mount")
    if propagation == "rslave" and not (shared or slave):
        raise errdefs.Unknown(f"path {host_path!r} is mounted on {point!r} but it is not a "
                              "shared or slave mount")


def namespace_options(config: pb.ContainerConfig,
                                 sandbox_config: pb.PodSandboxConfig) -> pb.NamespaceOption:
    """A container's namespace options: its own pid mode, the pod's network and IPC modes."""
    pod = sandbox_config.linux.security_context.namespace_options
    own = config.linux.security_context.namespace_options
    return pb.NamespaceOption(network=pod.network, ipc=pod.ipc, pid=own.pid)


def exec_process(container_spec_doc: Mapping[str, Any], cmd: Sequence[str],
                 tty: bool = False) -> dict[str, Any]:
    """The OCI process of an exec into a container: the container's process with ``cmd``."""
    if not cmd:
        raise errdefs.InvalidArgument("cmd must not be empty")
    process = dict(container_spec_doc.get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = tty
    return process
