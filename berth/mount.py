"""Mounts as the snapshotters describe them, and mounting them on this host.

A :class:`Mount` is what containerd's ``types.Mount`` carries: a type (``bind``, ``overlay``,
...), a source and options in mount(8) form. Flag-like options (``ro``, ``rbind``, ``nosuid``...)
become mount(2) flags; the rest (``lowerdir=...``) become the filesystem data string.

Temporary mounts (:func:`temp_mount`) show a snapshot's files, setuid binaries included, so
their mount points must not be reachable by other users: berthd keeps them in
``<root>/tmpmounts`` (0700, :func:`set_temp_location`) and, on start, takes off what a berthd
that died left there (:func:`cleanup_temp_mounts`), as containerd does. A process that set no
location (the ``berth`` CLI) mounts inside a private directory of its own instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from berth import errdefs, fsmode

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

# option -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "nosuid": (False, MS_NOSUID),
    "suid": (True, MS_NOSUID),
    "nodev": (False, MS_NODEV),
    "dev": (True, MS_NODEV),
    "noexec": (False, MS_NOEXEC),
    "exec": (True, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS),
    "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC),
    "noatime": (False, MS_NOATIME),
    "atime": (True, MS_NOATIME),
    "nodiratime": (False, MS_NODIRATIME),
    "diratime": (True, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME),
    "norelatime": (True, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME),
    "bind": (False, MS_BIND),
    "rbind": (False, MS_BIND | MS_REC),
    "remount": (False, MS_REMOUNT),
    "defaults": (False, 0),
}
_PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)
    target: str = ""

    def option(self, key: str) -> str | None:
        """The value of a ``key=value`` option, or None."""
        prefix = key + "="
        for opt in self.options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def parse_options(options: Sequence[str]) -> tuple[int, int, str]:
    """Split mount(8) options into (flags, propagation flags, data)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def _syscall_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise errdefs.Internal(
            f"mount {fstype} {source} on {target} failed: {os.strerror(err)} (errno {err})"
        )


# mount(2) copies at most one page of filesystem data; longer overlay options fail.
_PAGE = os.sysconf("SC_PAGE_SIZE")
_DIR_OPTIONS = ("lowerdir=", "upperdir=", "workdir=")


def _compact_overlay(data: str) -> tuple[str, str] | None:
    """For overlay data too long for one page (an image of many layers), the same options with
    the layer directories relative to their common parent, and that parent; None if that does
    not make them fit either."""
    parts = data.split(",")
    dirs = [d for p in parts if p.startswith(_DIR_OPTIONS)
            for d in p.split("=", 1)[1].split(":")]
    if not dirs:
        return None
    common = os.path.commonpath(dirs)
    if common in dirs:  # a layer that is the parent of another: keep its name relative
        common = os.path.dirname(common)
    out = []
    for p in parts:
        if p.startswith(_DIR_OPTIONS):
            key, value = p.split("=", 1)
            p = key + "=" + ":".join(os.path.relpath(d, common) for d in value.split(":"))
        out.append(p)
    compact = ",".join(out)
    return (compact, common) if len(compact) < _PAGE else None


def _mount_from(directory: str, source: str, target: str, fstype: str, flags: int,
                data: str) -> None:
    """mount(2) run with ``directory`` as the working directory, in a child process: the
    working directory is per process, and berthd's threads must not see it change."""
    target = os.path.abspath(target)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only chdir, mount, report and _exit
        os.close(read_end)
        code = 0
        try:
            os.chdir(directory)
            _syscall_mount(source, target, fstype, flags, data)
        except BaseException as err:  # reported to the parent through the pipe
            os.write(write_end, str(err).encode()[:4096])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise errdefs.Internal(f"mount {fstype} on {target} failed: {message or 'unknown error'}"
                               f" (layer paths relative to {directory})")


_BIND_REMOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
# What a temporary mount adds: nothing of a snapshot's setuid files or device nodes takes
# effect through it, whoever reaches it.
_TEMP_OPTIONS = ("nosuid", "nodev")


def mount(m: Mount, target: str) -> None:
    """Mount ``m`` on ``target`` (which must exist)."""
    flags, propagation, data = parse_options(m.options)
    fstype = m.type
    if flags & MS_BIND:
        fstype = "none"
    compact = _compact_overlay(data) if fstype == "overlay" and len(data) >= _PAGE else None
    if compact is not None:
        _mount_from(compact[1], m.source, target, fstype, flags, compact[0])
    else:
        _syscall_mount(m.source, target, fstype,
                       flags & ~MS_REMOUNT if flags & MS_BIND else flags, data)
    # A bind mount ignores per-mount flags (ro, nosuid, nodev, noexec): a remount applies them.
    if flags & MS_BIND and flags & _BIND_REMOUNT_FLAGS:
        _syscall_mount("", target, "", flags | MS_REMOUNT, "")
    if propagation:
        _syscall_mount("", target, "", propagation, "")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount each of ``mounts`` on ``target``, in order; if one fails, those already mounted
    are taken off again before the error is raised."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        if done:
            unmount(target)
        raise


def unmount(target: str, *, detach: bool = False) -> None:
    """Unmount ``target``; retries while busy, and ignores a target that is not mounted."""
    flags = MNT_DETACH if detach else 0
    while True:
        rc = _libc.umount2(target.encode(), flags)
        if rc == 0:
            continue  # stacked mounts: take them all off
        err = ctypes.get_errno()
        if err == errno.EINVAL:  # not (or no longer) a mount point
            return
        if err == errno.ENOENT:
            return
        raise errdefs.Internal(f"unmount {target} failed: {os.strerror(err)} (errno {err})")


_temp_location: str | None = None


def set_temp_location(path: str) -> str:
    """Make ``path`` (created 0700, or restricted to it) where this process's temporary mounts
    go; returns its absolute path."""
    global _temp_location
    path = os.path.abspath(path)
    fsmode.private_dir(path)
    _temp_location = path
    return path


def temp_location() -> str | None:
    """Where temporary mounts go, if :func:`set_temp_location` was called."""
    return _temp_location


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_points_under(directory: str) -> list[str]:
    """The mount points strictly below ``directory`` (by its real path), deepest first."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape(line.split(" ", 5)[4])
            if target.startswith(prefix):
                found.add(target)
    return sorted(found, key=len, reverse=True)


def cleanup_temp_mounts(directory: str) -> list[str]:
    """Take off every mount below ``directory`` (a temporary mount location), then remove its
    empty entries; returns what could not be done, as warnings.

    Directories are only ever removed with rmdir(2), and only ``directory``'s own entries:
    one whose mount could not be taken off still shows a snapshot, and a recursive removal
    would delete the snapshot's files through it.
    """
    warnings = []
    for target in mount_points_under(directory):
        try:
            unmount(target)
        except errdefs.BerthError as err:
            warnings.append(str(err))
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return warnings
    for name in entries:
        path = os.path.join(directory, name)
        try:
            os.rmdir(path)
        except NotADirectoryError:
            warnings.append(f"{path} is not a directory; left in place")
        except FileNotFoundError:
            continue
        except OSError as err:  # still mounted (EBUSY), or not empty: left for an operator
            warnings.append(f"cannot remove {path}: {err.strerror}")
    return warnings


def readonly(m: Mount) -> Mount:
    """``m`` changed to mount read-only: an overlay loses its upper and work directories (the
    upper one becomes the top lower layer, as containerd's read-only temporary mounts do), so a
    snapshot a running container uses may be looked into meanwhile."""
    options = [o for o in m.options if o != "rw"]
    if m.type == "overlay":
        upper = next((o.partition("=")[2] for o in options if o.startswith("upperdir=")), "")
        options = [o for o in options if not o.startswith(("upperdir=", "workdir="))]
        if upper:
            lower = next((o.partition("=")[2] for o in options if o.startswith("lowerdir=")),
                         "")
            options = [o for o in options if not o.startswith("lowerdir=")]
            options.append(f"lowerdir={upper}:{lower}" if lower else f"lowerdir={upper}")
            # "volatile" only makes sense with an upper directory.
            options = [o for o in options if o != "volatile"]
    if "ro" not in options:
        options.append("ro")
    return Mount(m.type, m.source, tuple(options))


@contextlib.contextmanager
def temp_mount(mounts: Sequence[Mount], *, prefix: str = "berth-mount-",
               parent: str | None = None) -> Iterator[str]:
    """Mount ``mounts`` on a new temporary directory for the duration of the block, each
    ``nosuid,nodev``.

    The mount point is made in ``parent`` or else in the location :func:`set_temp_location`
    set, either of which must be reachable by root alone. Without either, it is made inside a
    new 0700 directory in the system's temporary directory: a mount point's mode is the mounted
    root's (0755, usually), so a mount point made straight in /tmp would be open to all.
    """
    location = parent or _temp_location
    private = None
    if not location:
        private = location = tempfile.mkdtemp(prefix=prefix)
    target = tempfile.mkdtemp(prefix=prefix, dir=location)
    try:
        mount_all([replace(m, options=(*m.options, *_TEMP_OPTIONS)) for m in mounts], target)
    except BaseException:
        _remove_temp(target, private)
        raise
    try:
        yield target
    finally:
        unmount(target)
        _remove_temp(target, private)


def _remove_temp(target: str, private: str | None) -> None:
    os.rmdir(target)
    if private is not None:
        os.rmdir(private)
