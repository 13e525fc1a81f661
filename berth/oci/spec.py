"""The OCI runtime spec a container runs with: containerd's Linux defaults and the options that
shape it.

A spec is the runtime-spec ``config.json`` as a JSON-ready ``dict`` (:data:`Spec`). A
:data:`SpecOpt` takes a spec and returns the changed copy; it never alters its argument, so
options compose freely (:func:`compose`, :func:`generate_spec`) and a spec can be reused as a
template. Applying an option does no I/O. Making one may read, once: user and group names are
looked up in the image's ``/etc/passwd`` and ``/etc/group`` under the ``rootfs`` a caller passes
when :func:`with_user`, :func:`with_additional_gids` or :func:`with_image_config` is called (so a
missing user is reported there), and those files are resolved *inside* that directory (symlinks
cannot lead out of it; see :func:`berth.rootpath.resolve_in_root`), opened without following
a final symlink, and must be regular files of bounded size (berth.oci.users reads them).
:func:`current_capabilities` and :func:`host_devices`, which :func:`with_privileged` takes, read
this process's status and the host's ``/dev`` when called.

The defaults are what containerd 1.6.20's ``oci.WithDefaultSpec`` + ``oci.WithDefaultUnixDevices``
give on Linux (as ``ctr containers create`` sends them, measured here): process as root (0:0) in
``/`` with ``noNewPrivileges``, containerd's 14 default capabilities, ``RLIMIT_NOFILE`` 1024/1024;
root ``rootfs`` (relative to the bundle), read-write; mounts ``/proc``, ``/dev`` (tmpfs),
``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys`` (read-only) and ``/run`` (tmpfs); new pid,
ipc, uts, mount and network namespaces; the masked and read-only ``/proc`` paths; all devices
denied but the usual character devices (null, zero, full, random, urandom, tty, console, ptmx,
the pts); and ``cgroupsPath`` ``/<namespace>/<id>``. Like containerd 1.6.20's, it mounts no cgroup
filesystem at ``/sys/fs/cgroup``; add one where a container needs it. Like containerd's, the
default spec has no seccomp filter: :mod:`berth.oci.seccomp` makes containerd's default profile
(``berth run`` applies it); :func:`with_seccomp_unconfined` and :func:`with_privileged` take it
away.

Capabilities: the default spec and every option here set only the bounding, effective and
permitted sets, never ``inheritable`` or ``ambient`` (CVE-2022-24769: containerd before 1.6.2
gave containers a non-empty inheritable set, so a program with inheritable file capabilities
gained them on exec even for a non-root user). Working directories are refused where they lead
through a process's own ``/proc`` directory (:func:`check_cwd`, CVE-2024-21626 class).

User strings follow the OCI image spec and containerd's ``WithUser``: ``user``, ``uid``,
``user:group``, ``uid:gid``, ``uid:group``, ``user:gid``. A numeric uid alone takes its primary
group from ``/etc/passwd`` (gid 0 if the uid is not listed or there is no file); a name that is
not listed is an error (``NotFound``). Supplementary groups are the ``/etc/group`` entries that
list the user as a member; the primary gid is always among ``additionalGids`` (CVE-2023-25173:
a user's groups are exactly these, so that a group's restrictions cannot be shed by leaving it).
Every uid and gid must lie in 0 to 2^31 - 1 (see :mod:`berth.oci.users`; CVE-2024-40635).
"""

from __future__ import annotations

import copy
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from berth import errdefs, namespaces
from berth.oci.users import resolve_user, supplementary_gids

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], Spec]

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
OCI_VERSION = "1.0.2-dev"  # the runtime-spec version containerd 1.6 writes
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ROOTFS = "rootfs"


DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
DEFAULT_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# (major, minor or None for all) of the character devices a container may use.
DEFAULT_DEVICES = ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2))


def _default_mounts() -> list[dict[str, Any]]:
    def mount(dest: str, type_: str, source: str, *options: str) -> dict[str, Any]:
        return {"destination": dest, "type": type_, "source": source, "options": list(options)}

    return [
        mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance",
              "ptmxmode=0666", "mode=0620", "gid=5"),
        mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777",
              "size=65536k"),
        mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        mount("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    ]


def _default_devices() -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for major, minor in DEFAULT_DEVICES:
        entry: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            entry["minor"] = minor
        entry["access"] = "rwm"
        devices.append(entry)
    return devices


def cgroups_path(namespace: str, container_id: str) -> str:
    """containerd's default cgroup for a container: ``/<namespace>/<id>``."""
    namespaces.validate(namespace)
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise errdefs.InvalidArgument(
            f"container id {container_id!r} cannot name a cgroup: it must be a single, "
            "non-empty path component")
    return f"/{namespace}/{container_id}"


def default_spec(namespace: str, container_id: str) -> Spec:
    """A new copy of the default Linux spec for ``container_id`` in ``namespace``."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS},
        "mounts": _default_mounts(),
        "linux": {
            "resources": {"devices": _default_devices()},
            "cgroupsPath": cgroups_path(namespace, container_id),
            "namespaces": [{"type": t} for t in DEFAULT_NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def compose(*opts: SpecOpt) -> SpecOpt:
    """One option that applies ``opts`` in order."""

    def apply_all(spec: Spec) -> Spec:
        for opt in opts:
            spec = opt(spec)
        return spec

    return apply_all


def generate_spec(namespace: str, container_id: str, *opts: SpecOpt) -> Spec:
    """The default spec with ``opts`` applied in order (containerd's ``GenerateSpec``)."""
    return compose(*opts)(default_spec(namespace, container_id))


def _edit(change: Callable[[Spec], None]) -> SpecOpt:
    """An option that applies ``change`` to a deep copy of its argument."""

    def opt(spec: Spec) -> Spec:
        out = copy.deepcopy(spec)
        change(out)
        return out

    return opt


def _process(spec: Spec) -> dict[str, Any]:
    process = spec.setdefault("process", {})
    if not isinstance(process, dict):
        raise errdefs.InvalidArgument("the spec's process is not an object")
    return process


def _user(spec: Spec) -> dict[str, Any]:
    user = _process(spec).setdefault("user", {"uid": 0, "gid": 0})
    if not isinstance(user, dict):
        raise errdefs.InvalidArgument("the spec's process.user is not an object")
    return user


# -- environment -------------------------------------------------------------------------------


def replace_or_append_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``defaults`` with each ``KEY=VALUE`` of ``overrides`` replacing the entry of that key (or
    appended); a bare ``KEY`` removes it. Order is kept. This is containerd's
    ``replaceOrAppendEnvValues``, except that a key set twice among ``overrides`` appears once,
    with the last value."""
    result: list[str | None] = list(defaults)
    index = {entry.split("=", 1)[0]: i for i, entry in enumerate(defaults)}
    for value in overrides:
        key = value.split("=", 1)[0]
        if "=" not in value:
            if key in index:
                result[index[key]] = None
        elif key in index:
            result[index[key]] = value
        else:
            index[key] = len(result)
            result.append(value)
    return [e for e in result if e is not None]


def with_env(env: Sequence[str]) -> SpecOpt:
    """Set (``KEY=VALUE``) or unset (``KEY``) environment variables of the process."""
    for entry in env:
        if not entry or entry.startswith("=") or "\0" in entry:
            raise errdefs.InvalidArgument(
                f"environment entry {entry!r} is invalid: use KEY=VALUE, or KEY to unset")
    overrides = list(env)

    def change(spec: Spec) -> None:
        if overrides:
            process = _process(spec)
            process["env"] = replace_or_append_env(process.get("env") or [], overrides)

    return _edit(change)


# -- process -----------------------------------------------------------------------------------


def with_process_args(*args: str) -> SpecOpt:
    """Replace the process's command line."""
    if not args:
        raise errdefs.InvalidArgument("a process needs at least one argument (its program)")
    argv = list(args)

    def change(spec: Spec) -> None:
        _process(spec)["args"] = list(argv)

    return _edit(change)


# The first component of a /proc path that names a process's own directory.
_PROCESS_DIR = re.compile(r"^(self|thread-self|[0-9]+)$")
# Links runc makes in the container's /dev that lead into /proc/self.
_DEV_LINKS_TO_PROC = frozenset({"fd", "stdin", "stdout", "stderr"})


def _into_process_dir(parts: Sequence[str]) -> bool:
    """Whether the path ``parts`` (no "", "." or "..") is inside a process's /proc directory
    (``/proc/self/fd``, ``/proc/1/cwd``...), or /dev's links to it (``/dev/fd/7``)."""
    if len(parts) >= 3 and parts[0] == "proc" and _PROCESS_DIR.match(parts[1]):
        return True
    return len(parts) >= 2 and parts[0] == "dev" and parts[1] in _DEV_LINKS_TO_PROC


def check_cwd(cwd: str, what: str = "working directory") -> str:
    """``cwd`` if it can be a process's working directory: absolute, and never through a
    process's own /proc directory (CVE-2024-21626 class). There the ``fd``, ``cwd``, ``root``
    links lead wherever the process that follows them has them at that moment: runc before
    1.1.12 started containers with a host directory open as fd 7 or 8, and a cwd of
    ``/proc/self/fd/7`` put the container on the host. No working directory is legitimately
    there, so the path is refused as written (each ``..`` as the kernel would take it after
    the links before it, which is why every prefix is checked). A symbolic link in the image
    that leads there is runc's to catch when it changes directory (Debian's runc carries that
    fix); this check gives the clear, early error for what a person or an image writes.
    ``what`` names the path in the error."""
    if not cwd.startswith("/") or "\0" in cwd:
        raise errdefs.InvalidArgument(
            f"{what} {cwd!r} must be an absolute path inside the container")
    parts: list[str] = []
    for part in cwd.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
        if _into_process_dir(parts):
            raise errdefs.InvalidArgument(
                f"{what} {cwd!r} leads into a process's own /proc directory "
                f"(/{'/'.join(parts)}), whose links can lead out of the container: use a "
                "directory of the container's filesystem")
    return cwd


def with_cwd(cwd: str) -> SpecOpt:
    """Run the process in ``cwd``, an absolute path inside the container (see
    :func:`check_cwd`)."""
    check_cwd(cwd)

    def change(spec: Spec) -> None:
        _process(spec)["cwd"] = cwd

    return _edit(change)


def with_tty() -> SpecOpt:
    """Give the process a terminal (and ``TERM=xterm``, as containerd does on Linux)."""

    def change(spec: Spec) -> None:
        process = _process(spec)
        process["terminal"] = True
        if "linux" in spec:
            process["env"] = [*(process.get("env") or []), "TERM=xterm"]

    return _edit(change)


def with_hostname(hostname: str) -> SpecOpt:
    """Set the container's hostname (in its own uts namespace)."""
    if not hostname or len(hostname) > 64 or any(ch.isspace() or ch in "\0/" for ch in hostname):
        raise errdefs.InvalidArgument(
            f"hostname {hostname!r} is invalid: 1 to 64 characters, no spaces or '/'")

    def change(spec: Spec) -> None:
        spec["hostname"] = hostname

    return _edit(change)


def with_root_path(path: str, *, readonly: bool = False) -> SpecOpt:
    """Use ``path`` (absolute, or relative to the bundle) as the root filesystem."""
    if not path or "\0" in path:
        raise errdefs.InvalidArgument(f"root path {path!r} is invalid")

    def change(spec: Spec) -> None:
        spec["root"] = {"path": path, "readonly": True} if readonly else {"path": path}

    return _edit(change)


# -- mounts and namespaces ---------------------------------------------------------------------


def parse_bind_mount(text: str) -> dict[str, Any]:
    """A bind mount from ``SRC:DST[:ro|rw]`` (both paths absolute): ``rbind``, read-write unless
    ``ro``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise errdefs.InvalidArgument(f"bind mount {text!r} is invalid: use SRC:DST[:ro]")
    source, destination = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise errdefs.InvalidArgument(
            f"bind mount {text!r}: unknown mode {mode!r} (use ro or rw)")
    for what, path in (("source", source), ("destination", destination)):
        if not path.startswith("/") or "\0" in path:
            raise errdefs.InvalidArgument(
                f"bind mount {text!r}: the {what} must be an absolute path")
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", mode]}


def with_mounts(binds: Sequence[str]) -> SpecOpt:
    """Add bind mounts, each ``SRC:DST[:ro|rw]`` (see :func:`parse_bind_mount`)."""
    mounts = [parse_bind_mount(b) for b in binds]

    def change(spec: Spec) -> None:
        spec["mounts"] = [*(spec.get("mounts") or []), *copy.deepcopy(mounts)]

    return _edit(change)


def with_host_network(hostname: str | None = None) -> SpecOpt:
    """Share the host's network namespace, with its ``/etc/hosts`` and ``/etc/resolv.conf``
    bound read-only, as ``ctr run --net-host`` does (``HOSTNAME`` set when given)."""

    def change(spec: Spec) -> None:
        linux = spec.setdefault("linux", {})
        linux["namespaces"] = [n for n in linux.get("namespaces") or []
                               if n.get("type") != "network"]
        spec["mounts"] = [*(spec.get("mounts") or []), *(
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
            for path in ("/etc/hosts", "/etc/resolv.conf"))]

    opt = _edit(change)
    return compose(opt, with_env([f"HOSTNAME={hostname}"])) if hostname else opt


# -- users and groups --------------------------------------------------------------------------


def _ensure_primary_gid(user: dict[str, Any]) -> None:
    gids = list(user.get("additionalGids") or [])
    if user.get("gid", 0) not in gids:
        gids.insert(0, user.get("gid", 0))
    user["additionalGids"] = gids


def with_user(user: str, rootfs: str | None = None) -> SpecOpt:
    """Run as ``user`` (see the module's user rules), resolved against ``rootfs``. Resets
    ``additionalGids`` to the primary gid (add more with :func:`with_additional_gids`)."""
    return _with_ids(*resolve_user(user, rootfs))


def _with_ids(uid: int, gid: int) -> SpecOpt:
    def change(spec: Spec) -> None:
        u = _user(spec)
        u["uid"], u["gid"] = uid, gid
        u.pop("additionalGids", None)
        _ensure_primary_gid(u)

    return _edit(change)


def with_additional_gids(user: str, rootfs: str | None) -> SpecOpt:
    """Set ``additionalGids`` to the primary gid and ``user``'s supplementary groups from
    ``rootfs``'s ``/etc/group`` (containerd's ``WithAdditionalGIDs``)."""
    gids = supplementary_gids(user, rootfs)

    def change(spec: Spec) -> None:
        u = _user(spec)
        u["additionalGids"] = list(gids)
        _ensure_primary_gid(u)

    return _edit(change)


# -- image configuration -----------------------------------------------------------------------


def _string_list(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errdefs.InvalidArgument(f"image config: {key} must be a list of strings")
    return list(value)


def _string(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errdefs.InvalidArgument(f"image config: {key} must be a string")
    return value


def with_image_config(config_doc: Mapping[str, Any], rootfs: str | None = None,
                      args: Sequence[str] = ()) -> SpecOpt:
    """Apply an image's configuration (the OCI image config document, whose ``config`` holds
    ``Env``, ``Entrypoint``, ``Cmd``, ``WorkingDir``, ``User``), as containerd's
    ``WithImageConfigArgs``: the image's ``Env`` (or the default ``PATH``) with the spec's own
    variables over it; ``Entrypoint`` + (``args`` or ``Cmd``); ``WorkingDir`` or ``/``; ``User``
    resolved against ``rootfs`` (root otherwise), with supplementary groups."""
    config = config_doc.get("config") or {}
    if not isinstance(config, Mapping):
        raise errdefs.InvalidArgument("image config: config must be an object")
    image_env = _string_list(config, "Env")
    argv = _string_list(config, "Entrypoint") + (list(args) or _string_list(config, "Cmd"))
    cwd = check_cwd(_string(config, "WorkingDir") or "/",
                    "image config: the working directory (WorkingDir)")
    user = _string(config, "User")
    if user:
        uid, gid = resolve_user(user, rootfs)
        user_opt = compose(_with_ids(uid, gid), with_additional_gids(str(uid), rootfs))
    else:
        user_opt = with_additional_gids("root", rootfs)

    def change(spec: Spec) -> None:
        process = _process(spec)
        process["env"] = replace_or_append_env(image_env or [DEFAULT_PATH_ENV],
                                               process.get("env") or [])
        process["args"] = argv
        process["cwd"] = cwd

    return compose(_edit(change), user_opt)


# -- privileges --------------------------------------------------------------------------------

# Linux capability names by bit number (linux/capability.h), to read a capability bitmap.
CAPABILITY_BITS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# Directories of /dev that hold no device a privileged container should get (or that the
# container mounts itself), as containerd's HostDevices skips them.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def current_capabilities(status: str | None = None) -> list[str]:
    """The names of the capabilities in this process's effective set (``CapEff`` of
    ``/proc/self/status``, or of the ``status`` text given), in bit order; bits this table
    does not name (a newer kernel's) are left out, as containerd's ``cap.Current`` does."""
    if status is None:
        with open("/proc/self/status") as f:
            status = f.read()
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                bits = int(value.strip(), 16)
            except ValueError:
                break
            return [name for i, name in enumerate(CAPABILITY_BITS) if bits >> i & 1]
    raise errdefs.Internal("cannot read this process's capabilities (no CapEff in its status)")


def with_capabilities(caps: Sequence[str]) -> SpecOpt:
    """Set the bounding, effective and permitted sets to ``caps`` (containerd's
    ``WithCapabilities``)."""
    for cap in caps:
        if not cap.startswith("CAP_") or not cap[4:].replace("_", "").isalnum():
            raise errdefs.InvalidArgument(f"capability {cap!r} is invalid: use names like "
                                          "CAP_NET_ADMIN")
    names = list(caps)

    def change(spec: Spec) -> None:
        current = _process(spec).get("capabilities")
        kept = dict(current) if isinstance(current, dict) else {}
        for which in ("bounding", "effective", "permitted"):
            kept[which] = list(names)
        _process(spec)["capabilities"] = kept

    return _edit(change)


def with_new_privileges(allowed: bool) -> SpecOpt:
    """Let the process gain privileges through setuid files and file capabilities
    (``noNewPrivileges: false``), or forbid it (``true``, the default)."""

    def change(spec: Spec) -> None:
        _process(spec)["noNewPrivileges"] = not allowed

    return _edit(change)


def _linux(spec: Spec) -> dict[str, Any]:
    linux = spec.setdefault("linux", {})
    if not isinstance(linux, dict):
        raise errdefs.InvalidArgument("the spec's linux section is not an object")
    return linux


def with_seccomp(profile: Mapping[str, Any]) -> SpecOpt:
    """Filter the process's system calls with ``profile`` (an OCI ``linux.seccomp`` object; see
    :mod:`berth.oci.seccomp` for the default one)."""
    action = profile.get("defaultAction")
    if not isinstance(action, str) or not action.startswith("SCMP_ACT_"):
        raise errdefs.InvalidArgument(
            "a seccomp profile must be an OCI linux.seccomp object with a defaultAction "
            "such as SCMP_ACT_ERRNO")
    kept = copy.deepcopy(dict(profile))

    def change(spec: Spec) -> None:
        _linux(spec)["seccomp"] = copy.deepcopy(kept)

    return _edit(change)


def with_seccomp_unconfined() -> SpecOpt:
    """No seccomp filter at all."""

    def change(spec: Spec) -> None:
        _linux(spec).pop("seccomp", None)

    return _edit(change)


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """The host's block, character and FIFO devices under ``root`` as ``linux.devices``
    entries (containerd's ``HostDevices``: symbolic links, ``console`` and the directories in
    :data:`_SKIPPED_DEV_DIRS` left out)."""
    kinds = {stat.S_IFBLK: "b", stat.S_IFCHR: "c", stat.S_IFIFO: "p"}
    found: list[dict[str, Any]] = []

    def walk(directory: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in _SKIPPED_DEV_DIRS:
                        walk(entry.path)
                    continue
                if entry.name == "console":  # the container gets its own
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # gone since it was listed
                    continue
                kind = kinds.get(stat.S_IFMT(st.st_mode))
                if kind is None or os.major(st.st_rdev) == 0:
                    continue
                found.append({"path": entry.path, "type": kind, "major": os.major(st.st_rdev),
                              "minor": os.minor(st.st_rdev),
                              "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                              "gid": st.st_gid})

    walk(root)
    return found


def with_privileged(capabilities: Sequence[str], devices: Sequence[Mapping[str, Any]]) -> SpecOpt:
    """A privileged container, as ``nerdctl run --privileged`` makes it: ``capabilities``
    (the caller's own, see :func:`current_capabilities`), no masked or read-only paths,
    writable ``/sys`` and cgroup mounts, no seccomp filter, every device allowed and the
    host's ``devices`` (see :func:`host_devices`) created, and new privileges allowed."""
    added = [dict(d) for d in devices]

    def change(spec: Spec) -> None:
        linux = _linux(spec)
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        linux.pop("seccomp", None)
        for mount in spec.get("mounts") or []:
            if mount.get("type") in ("sysfs", "cgroup"):
                mount["options"] = ["rw" if o == "ro" else o for o in mount.get("options") or []]
        resources = linux.setdefault("resources", {})
        resources["devices"] = [{"allow": True, "access": "rwm"}]
        linux["devices"] = [*(linux.get("devices") or []), *copy.deepcopy(added)]

    return compose(with_capabilities(capabilities), _edit(change), with_new_privileges(True))
