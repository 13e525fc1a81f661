"""Applying an OCI layer tar onto a directory, and the diff writer's entry point.

:func:`apply_tar` follows containerd's ``archive.Apply`` (the OCI "applying changesets" rules),
with these decisions, each tested against a hostile layer in ``tests/test_diff_hostile.py``:

Containment (nothing outside ``root`` is ever created, changed or linked)
    * Every member name is cleaned lexically. A leading ``/`` is dropped (contained). A ``..``
      that climbs above the root is **refused** (containerd clamps it; we are stricter because
      no honest tool writes one). ``./`` and the root itself are skipped, as in containerd.
    * The parent directory of each member is resolved like ``fs.RootPath``: symlinks already in
      the tree are followed, but an absolute target restarts at ``root`` and ``..`` stops at
      ``root``; more than 255 links (a loop) is **refused**. The last component is never
      followed: an existing non-directory there is unlinked first (a directory is removed
      recursively unless the member is a directory too, which merges), and files are created
      with ``O_CREAT|O_EXCL|O_NOFOLLOW`` so a planted symlink cannot redirect a write.
    * Ownership, modes, xattrs and times go through the new file's descriptor, or through
      ``l*`` calls that do not follow symlinks; a symlink's mode is never set (Linux has no
      lchmod). Deferred directory times are applied only if the path still names the same
      directory inode.
    * A hard link target is cleaned and resolved the same way (contained, or refused if it
      climbs out) and linked without following a final symlink: a link to a symlink makes
      another name for the symlink itself, as containerd does. A missing target or a directory
      target is refused. A hard link member adds a name only; the inode keeps its metadata (the
      header's copy of it is not re-applied, as GNU tar does).
    * A whiteout ``.wh.NAME`` is resolved like any member: it removes (or, for overlay,
      replaces with a 0/0 character device) ``NAME`` inside the resolved parent. ``.wh.``,
      ``.wh..`` and ``.wh...`` are refused, as in containerd. AUFS metadata (other
      ``.wh..wh.*`` names) is skipped.

Metadata
    Owners are numeric (lchown), applied before the mode so setuid/setgid bits survive, and
    before xattrs since a chown drops ``security.capability``. ``trusted.*`` (and
    ``user.overlay.*``) xattrs from a layer are skipped as containerd skips ``trusted.*``: they
    would let a layer forge overlay whiteouts, opaque or redirect markers. An xattr the file
    system does not support (or a ``user.*`` xattr on a symlink, which Linux forbids) is skipped
    with a warning. The access time is the later of atime and mtime; times outside the Unix
    range become the epoch (containerd's ``boundTime``).

Opaque directories
    With overlay whiteouts the directory gets ``trusted.overlay.opaque=y``. Without, every entry
    under it that this layer did not create is removed; unlike containerd, a directory that
    this layer created implicitly (as the parent of a member) counts as created, so its
    members survive.

Limits
    A layer is untrusted input, and a small blob can expand to a huge stream (gzip by a factor of
    up to 1032, zstd by far more) whose members cost nothing on disk (a file overwritten again
    and again, bytes after the end-of-archive marker). :class:`LayerLimits` caps the number of
    members and the bytes of uncompressed stream; past either the apply stops with
    ``errdefs.ResourceExhausted`` naming the limit. The tar parser bounds each member's metadata
    (see :mod:`berth.diff.tarformat`).

Errors are ``errdefs.InvalidArgument`` naming the member when the layer is at fault,
``errdefs.ResourceExhausted`` when it exceeds a limit, and ``errdefs.Internal`` for host
failures (full disk, I/O error).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from berth import errdefs
from berth.diff.diff import Readable
from berth.diff.tarformat import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    END,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
    TarParser,
)
from berth.diff.writediff import write_diff
from berth.rootpath import clean_name, resolve_in_root, shown

__all__ = ["OVERLAY_OPAQUE_XATTR", "LayerLimits", "apply_tar", "write_diff"]

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

READ_CHUNK = 1 << 20

_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_TIME_NS = 1 << 63
_SKIPPED_XATTRS = ("trusted.", "user.overlay.")
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
# errnos that mean "this member cannot exist here", as opposed to a failing host.
_LAYER_ERRNOS = frozenset((
    errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
    errno.EPERM, errno.EINVAL, errno.EMLINK, errno.EXDEV, errno.ENOTEMPTY, errno.ERANGE,
    errno.E2BIG,
))
_T = TypeVar("_T")
_DEVICE_TYPES = {CHAR: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}

DEFAULT_MAX_ENTRIES = 1 << 22
"""Members one layer may have by default (about four million). The largest real layers hold a
few hundred thousand (a full TeX Live, an Android SDK, a big ``node_modules``); the applier
remembers every directory (and, without overlay, every path) it made, so this also bounds its
memory."""

EXPANSION_FACTOR = 2
"""By default a layer's uncompressed stream may be this many times the size of the file system
it is unpacked onto. Everything an honest layer holds is written there, so it cannot be larger
than that file system (tar's headers take less room than the inodes and blocks they describe);
the factor leaves room for file systems that compress (btrfs, zfs). Only a stream whose bytes
land nowhere (a file overwritten again and again, a tail after the end marker: work for
nothing) can go past it."""

FALLBACK_MAX_EXPANDED = 1 << 40
"""The default cap (1 TiB) where the file system reports no size (some FUSE file systems)."""


@dataclass(frozen=True, slots=True)
class LayerLimits:
    """Caps on one layer: ``max_entries`` members, ``max_expanded_bytes`` bytes of uncompressed
    stream (None: :data:`EXPANSION_FACTOR` times the size of the file system the layer is
    unpacked onto)."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_expanded_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_entries < 1 or (self.max_expanded_bytes is not None
                                    and self.max_expanded_bytes < 1):
            raise errdefs.InvalidArgument(f"layer limits must be positive: {self}")

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> LayerLimits:
        """From a differ plugin's config table: ``max_layer_entries`` and
        ``max_layer_expanded_bytes`` (each optional, a positive integer)."""
        values: dict[str, int] = {}
        for key, attr in (("max_layer_entries", "max_entries"),
                          ("max_layer_expanded_bytes", "max_expanded_bytes")):
            value = config.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise errdefs.InvalidArgument(f"{key} must be an integer, not {value!r}")
            values[attr] = value
        return cls(**values)

    def expanded_limit(self, root: str) -> tuple[int, str]:
        """The cap on uncompressed bytes for a layer unpacked into ``root``, and where it comes
        from (for the error message)."""
        if self.max_expanded_bytes is not None:
            return self.max_expanded_bytes, "the configured limit"
        st = os.statvfs(root)
        size = st.f_blocks * st.f_frsize
        if not size:
            return FALLBACK_MAX_EXPANDED, "the limit for a file system of unknown size"
        return EXPANSION_FACTOR * size, (
            f"{EXPANSION_FACTOR} times the {size}-byte file system it is unpacked onto")


DEFAULT_LIMITS = LayerLimits()


def apply_tar(stream: Readable, root: str, *, overlay_whiteouts: bool,
              parents: Sequence[str] = (), opaque_xattr: str = OVERLAY_OPAQUE_XATTR,
              skip_devices: bool = False, made_parents: list[str] | None = None,
              limits: LayerLimits = DEFAULT_LIMITS) -> int:
    """Apply the uncompressed layer tar read from ``stream`` onto the directory ``root``.

    ``overlay_whiteouts`` selects the overlay form: whiteouts become 0/0 character devices and
    opaque markers the ``opaque_xattr`` xattr (``root`` is then an overlay upperdir). ``parents``
    are the directories beneath it, top first (the overlay's lowerdirs): a parent directory that
    must be created takes its owner, mode, times and xattrs from the first of them that has it.
    ``skip_devices`` drops character and block devices (for user namespaces, where mknod fails).
    ``made_parents``, when given, receives the root-relative paths of the directories the layer
    did not contain but had to be created as parents of its members, in creation order (see
    :func:`adopt_parents`). ``limits`` caps the layer's members and uncompressed bytes
    (``errdefs.ResourceExhausted`` past either).

    The stream is read to its end: bytes after the end-of-archive marker are read and ignored,
    so that a digest computed over ``stream`` covers every byte. Returns the number of bytes read.
    On error the directory holds whatever was applied so far.
    """
    root = os.path.realpath(root)
    if root == "/":
        raise errdefs.InvalidArgument("refusing to apply a layer onto /")
    if not os.path.isdir(root):
        raise errdefs.InvalidArgument(f"cannot apply a layer onto {root}: not a directory")
    max_entries = limits.max_entries
    max_expanded, expanded_why = limits.expanded_limit(root)
    applier = _Applier(root, overlay_whiteouts, tuple(parents), opaque_xattr, skip_devices)
    applier.made_parents = made_parents
    parser = TarParser()
    feed = parser.feed
    write = os.write
    read = stream.read
    fd = -1
    left = 0
    entries = 0
    expanded = 0
    entry: TarEntry | None = None
    try:
        # Reading stays outside the error mapping below: a failing source is not the layer's
        # fault and keeps its own exception.
        while chunk := read(READ_CHUNK):
            # Checked before the chunk is parsed, so no byte past the cap is acted on.
            expanded += len(chunk)
            if expanded > max_expanded:
                raise errdefs.ResourceExhausted(
                    f"layer expands to more than {max_expanded} bytes, {expanded_why}")
            try:
                for event in feed(chunk):
                    if event.__class__ is memoryview:
                        data = event
                        left -= len(data)
                        if fd >= 0:
                            while data:
                                data = data[write(fd, data):]
                            if not left:
                                # finish_file closes it even when it fails: forget it first, so
                                # that the finally below cannot close it (or a descriptor
                                # another thread got with its number) a second time.
                                done, fd = fd, -1
                                applier.finish_file(done, cast(TarEntry, entry))
                    elif event is not END:
                        entries += 1
                        if entries > max_entries:
                            raise errdefs.ResourceExhausted(
                                f"layer has more than {max_entries} entries, the limit for "
                                "one layer")
                        entry = cast(TarEntry, event)
                        fd = applier.entry(entry)
                        left = entry.size
                        if fd >= 0 and not left:
                            done, fd = fd, -1
                            applier.finish_file(done, entry)
            except OSError as exc:
                raise _entry_error(entry, exc) from exc
            except (ValueError, OverflowError) as exc:  # NUL in an xattr name, uid >= 2^32...
                raise errdefs.InvalidArgument(f"{_what(entry)}: {exc}") from exc
        parser.close()
        try:
            applier.finish()
        except OSError as exc:
            raise errdefs.Internal(f"setting directory times: {exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    return parser.offset + parser.trailing


def _what(entry: TarEntry | None) -> str:
    return f"layer entry {shown(entry.name)}" if entry is not None else "layer tar"


def _entry_error(entry: TarEntry | None, exc: OSError) -> errdefs.BerthError:
    reason = exc.strerror or str(exc)
    if exc.errno in _LAYER_ERRNOS:
        return errdefs.InvalidArgument(f"{_what(entry)}: {reason}")
    return errdefs.Internal(f"applying {_what(entry)}: {reason} (errno {exc.errno})")


def _times(entry: TarEntry) -> tuple[int, int]:
    mtime = entry.mtime_ns
    atime = entry.atime_ns if entry.atime_ns is not None and entry.atime_ns > mtime else mtime
    if not 0 <= mtime < _MAX_TIME_NS:
        mtime = 0
    if not 0 <= atime < _MAX_TIME_NS:
        atime = 0
    return atime, mtime


class _Applier:
    """The state of one apply: what exists, what this layer unpacked, deferred dir times.

    Invariant: ``_dirs`` and ``_parents`` only hold paths whose every component is a real
    directory inside the root. Anything that removes a directory or a symlink clears both.
    """

    def __init__(self, root: str, overlay: bool, lowers: tuple[str, ...], opaque_xattr: str,
                 skip_devices: bool) -> None:
        self.root = root
        self.overlay = overlay
        self.lowers = lowers
        self.opaque_xattr = opaque_xattr
        self.skip_devices = skip_devices
        self._dirs: set[str] = {root}
        self._parents: dict[str, str] = {"": root}
        # For opaque markers without overlay: what this layer put there, and their ancestors.
        self._unpacked: set[str] = set()
        self._kept: set[str] = set()
        self._dir_times: list[tuple[str, int, int, int, int]] = []
        self.made_parents: list[str] | None = None

    # -- entries -------------------------------------------------------------------------------

    def entry(self, entry: TarEntry) -> int:
        """Apply one member; returns an open descriptor when its content follows, else -1."""
        rel = clean_name(entry.name)
        if not rel:
            log.debug("layer entry %r ignored: it names the root", entry.name)
            return -1
        parent_rel, _, base = rel.rpartition("/")
        if rel.startswith(WHITEOUT_META_PREFIX) and rel != WHITEOUT_OPAQUE:
            log.debug("layer entry %r ignored: AUFS metadata", entry.name)
            return -1
        parent = self._parent(parent_rel, entry.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(entry, parent, base)
            return -1
        path = parent + "/" + base
        kind = entry.type
        fd = -1
        if kind == REGULAR:
            fd = self._create(path, lambda: os.open(path, _O_CREATE, 0o600))
        elif kind == DIRECTORY:
            self._directory(entry, path)
        elif kind == SYMLINK:
            self._symlink(entry, path)
        elif kind == HARDLINK:
            target = self._link_target(entry)
            self._create(path, lambda: os.link(target, path, follow_symlinks=False))
        elif kind in _DEVICE_TYPES:
            if self.skip_devices and kind != FIFO:
                log.warning("layer entry %r ignored: devices cannot be created here", entry.name)
                return -1
            self._device(entry, path)
        else:  # the parser only lets known kinds through
            raise errdefs.InvalidArgument(
                f"layer entry {shown(entry.name)}: unhandled type {kind!r}")
        if not self.overlay:
            self._mark_unpacked(path)
        return fd

    def finish_file(self, fd: int, entry: TarEntry) -> None:
        """Set a regular file's metadata through its descriptor, then close it."""
        try:
            os.fchown(fd, entry.uid, entry.gid)
            if entry.xattrs:
                self._set_xattrs(fd, entry, is_symlink=False)
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=_times(entry))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Directory times, last, so that creating their content did not change them."""
        for path, dev, ino, atime, mtime in self._dir_times:
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed by a later whiteout or replaced: nothing to time
            if st.st_ino == ino and st.st_dev == dev and stat.S_ISDIR(st.st_mode):
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)

    def _directory(self, entry: TarEntry, path: str) -> None:
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            if st is not None:
                self._remove(path, st)
            os.mkdir(path, 0o700)
        fd = os.open(path, _O_DIR)
        try:
            os.fchown(fd, entry.uid, entry.gid)
            if entry.xattrs:
                self._set_xattrs(fd, entry, is_symlink=False)
            os.fchmod(fd, entry.mode)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._dirs.add(path)
        self._dir_times.append((path, st.st_dev, st.st_ino, *_times(entry)))

    def _symlink(self, entry: TarEntry, path: str) -> None:
        target = entry.linkname
        if "\0" in target:
            raise errdefs.InvalidArgument(
                f"layer entry {shown(entry.name)}: symlink target has a NUL byte")
        self._create(path, lambda: os.symlink(target, path))
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        if entry.xattrs:
            self._set_xattrs(path, entry, is_symlink=True)
        os.utime(path, ns=_times(entry), follow_symlinks=False)

    def _device(self, entry: TarEntry, path: str) -> None:
        device = os.makedev(entry.devmajor, entry.devminor) if entry.type != FIFO else 0
        self._create(path, lambda: os.mknod(path, _DEVICE_TYPES[entry.type] | 0o600, device))
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        if entry.xattrs:
            self._set_xattrs(path, entry, is_symlink=False)
        # glibc implements the no-follow chmod for non-symlinks; the node was just made.
        os.chmod(path, entry.mode, follow_symlinks=False)
        os.utime(path, ns=_times(entry), follow_symlinks=False)

    def _link_target(self, entry: TarEntry) -> str:
        what = f"layer entry {shown(entry.name)}: hard link target"
        rel = clean_name(entry.linkname, what=what)
        if not rel:
            raise errdefs.InvalidArgument(
                f"layer entry {shown(entry.name)}: hard link to the root directory")
        link_parent, _, link_base = rel.rpartition("/")
        parent = self._parents.get(link_parent)
        if parent is None:
            parent = resolve_in_root(self.root, link_parent, name=entry.name)
        target = parent + "/" + link_base
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise errdefs.InvalidArgument(
                f"{what} {shown(entry.linkname)} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            raise errdefs.InvalidArgument(f"{what} {shown(entry.linkname)} is a directory")
        return target

    def _create(self, path: str, make: Callable[[], _T]) -> _T:
        """Create with ``make``; if something is in the way, remove it and try once more."""
        try:
            return make()
        except FileExistsError:
            self._remove(path, os.lstat(path))
            return make()

    # -- whiteouts -----------------------------------------------------------------------------

    def _whiteout(self, entry: TarEntry, parent: str, base: str) -> None:
        if base == WHITEOUT_OPAQUE:
            if self.overlay:
                os.setxattr(parent, self.opaque_xattr, b"y", follow_symlinks=False)
            else:
                self._remove_unpacked_except(parent)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            log.debug("layer entry %r ignored: AUFS metadata", entry.name)
            return
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise errdefs.InvalidArgument(f"layer entry {shown(entry.name)}: invalid whiteout name")
        victim = parent + "/" + name
        # Nothing there is fine: the lower layers may still have it.
        with contextlib.suppress(FileNotFoundError):
            self._remove(victim, os.lstat(victim))
        if self.overlay:
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0))
            os.chown(victim, entry.uid, entry.gid, follow_symlinks=False)

    def _remove_unpacked_except(self, directory: str) -> None:
        with os.scandir(directory) as it:
            children = list(it)
        for child in children:
            if child.path in self._unpacked or child.path in self._kept:
                if child.is_dir(follow_symlinks=False):
                    self._remove_unpacked_except(child.path)
            else:
                self._remove(child.path, child.stat(follow_symlinks=False))

    def _mark_unpacked(self, path: str) -> None:
        self._unpacked.add(path)
        parent = path.rpartition("/")[0]
        while parent != self.root and parent not in self._kept:
            self._kept.add(parent)
            parent = parent.rpartition("/")[0]

    def _remove(self, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # works on descriptors, never follows a symlink
        else:
            os.unlink(path)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._dirs = {self.root}
            self._parents = {"": self.root}

    # -- parents -------------------------------------------------------------------------------

    def _parent(self, parent_rel: str, name: str) -> str:
        """The real directory a member goes in, created (with its ancestors) if missing."""
        parent = self._parents.get(parent_rel)
        if parent is not None:
            return parent
        parent = resolve_in_root(self.root, parent_rel, name=name)
        if parent != self.root and parent not in self._dirs:
            current = self.root
            for part in parent[len(self.root) + 1:].split("/"):
                current = current + "/" + part
                if current in self._dirs:
                    continue
                try:
                    st = os.lstat(current)
                except FileNotFoundError:
                    self._make_parent(current)
                else:
                    if not stat.S_ISDIR(st.st_mode):
                        raise errdefs.InvalidArgument(
                            f"layer entry {shown(name)}: {shown(current[len(self.root):])} in "
                            "the root is not a directory")
                self._dirs.add(current)
        self._parents[parent_rel] = parent
        return parent

    def _make_parent(self, path: str) -> None:
        os.mkdir(path, 0o755)
        fd = os.open(path, _O_DIR)
        try:
            os.fchmod(fd, 0o755)
            rel = path[len(self.root) + 1:]
            _adopt(fd, rel, self.lowers)
            if self.made_parents is not None:
                self.made_parents.append(rel)
        finally:
            os.close(fd)
        if not self.overlay:
            self._mark_unpacked(path)

    # -- xattrs --------------------------------------------------------------------------------

    def _set_xattrs(self, target: int | str, entry: TarEntry, *, is_symlink: bool) -> None:
        for key, value in entry.xattrs.items():
            if key.startswith(_SKIPPED_XATTRS):
                log.warning("layer entry %r: xattr %s ignored (not accepted from layers)",
                            entry.name, key)
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _UNSUPPORTED or (
                        is_symlink and exc.errno == errno.EPERM and key.startswith("user.")):
                    log.warning("layer entry %r: xattr %s ignored: %s", entry.name, key,
                                exc.strerror)
                    continue
                if exc.errno in _LAYER_ERRNOS:
                    raise errdefs.InvalidArgument(
                        f"layer entry {shown(entry.name)}: xattr {key}: {exc.strerror}") from exc
                raise


def _adopt(fd: int, rel: str, lowers: Sequence[str]) -> None:
    """Give the made directory ``fd`` (at ``rel``) the metadata of the topmost lower that has
    ``rel``; the first layer that has the path decides, even if it is not a directory there."""
    for lower in lowers:
        source = resolve_in_root(lower, rel)
        try:
            st = os.lstat(source)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            _copy_dir_info(source, st, fd)
        return


def adopt_parents(root: str, made_parents: Sequence[str], lowers: Sequence[str]) -> None:
    """Finish a layer applied before its parents were known: the directories it had to make
    (``made_parents`` from :func:`apply_tar`) take the metadata of their copies in ``lowers``
    (top first), exactly as if the layer had been applied with those parents."""
    for rel in made_parents:
        path = resolve_in_root(root, rel)
        try:
            fd = os.open(path, _O_DIR)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed again later in the same layer
        try:
            _adopt(fd, rel, lowers)
        finally:
            os.close(fd)


def _copy_dir_info(source: str, st: os.stat_result, fd: int) -> None:
    """Give a directory made in an upperdir the metadata of its lower copy (overlay copy-up)."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    try:
        keys = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        keys = []
    for key in keys:
        if key.startswith("trusted."):
            continue  # overlay's own markers stay in their layer
        try:
            os.setxattr(fd, key, os.getxattr(source, key, follow_symlinks=False),
                        os.XATTR_CREATE)
        except OSError as exc:
            if exc.errno not in (*_UNSUPPORTED, errno.EEXIST, errno.ENODATA):
                raise
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
