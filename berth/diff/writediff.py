"""Computing a layer: the changes from one directory tree to another, written as an OCI tar.

This follows containerd's ``archive.WriteDiff`` over continuity's ``fs.Changes`` double walk:

* Both trees are walked together, each directory's entries in byte order of their names, a
  directory's content right after it (so ``a``, ``a/b``, ``a-b``): the output order depends only
  on the trees.
* A path only in ``lower`` is deleted: one ``.wh.NAME`` entry, nothing for what was under it.
* A path only in ``upper`` is added, with everything under it.
* A path in both is modified if its type, mode, owner, device number, xattrs or (for
  non-directories) size or mtime differ; or, if both mtimes are whole seconds (so one may have
  been truncated by a tar round trip), if the content or symlink target differs. A symlink's
  target is always compared. A directory replaced by a non-directory is written as that
  non-directory; the applier removes the old directory with its content.
* The parent directories of every written entry are written too (before it), with their
  metadata from ``upper``, as containerd does.
* Files with several links in ``upper`` are written once; the other names become hard links to
  it. An unchanged link to a file that changed is written as a link as well, so that the layer
  keeps them one inode.
* Sockets are skipped. Times are written in whole seconds, atime and ctime not at all, as in
  containerd. A whiteout's mtime is its directory's mtime in ``upper`` (containerd uses the
  current time; ours keeps the output reproducible).
* Unlike containerd, which keeps only ``security.capability``, every xattr is written except
  overlay's own (``trusted.overlay.*``, ``user.overlay.*``) and ``security.selinux`` (the build
  host's label policy does not belong in an image).
"""

from __future__ import annotations

import errno
import os
import stat

from berth import errdefs
from berth.diff.diff import LayerSink
from berth.diff.tarformat import (
    BLOCK,
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    END_OF_ARCHIVE,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
    encode_header,
)

__all__ = ["read_xattrs", "write_diff"]

_CHUNK = 1 << 20
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")
_TYPES = {stat.S_IFREG: REGULAR, stat.S_IFDIR: DIRECTORY, stat.S_IFLNK: SYMLINK,
          stat.S_IFCHR: CHAR, stat.S_IFBLK: BLOCKDEV, stat.S_IFIFO: FIFO}


def write_diff(lower: str, upper: str, out: LayerSink) -> None:
    """Write to ``out`` the OCI layer tar that turns directory ``lower`` into directory
    ``upper`` (``lower`` '' means an empty tree). Both are only read; symlinks in them are never
    followed."""
    writer = _DiffWriter(upper, out)
    writer.walk("", lower or None, upper)
    writer.close()


def read_xattrs(path: str) -> dict[str, bytes]:
    """The xattrs a layer records for ``path`` (not following a symlink)."""
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    found: dict[str, bytes] = {}
    for key in keys:
        if key.startswith(_SKIPPED_XATTRS):
            continue
        try:
            found[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since it was listed
                raise
    return found


def _sorted_names(path: str) -> list[str]:
    return sorted(os.listdir(path), key=os.fsencode)


def _same(lower: str, lst: os.stat_result, upper: str, ust: os.stat_result) -> bool:
    if lst.st_ino == ust.st_ino and lst.st_dev == ust.st_dev:
        return True
    if (lst.st_mode != ust.st_mode or lst.st_uid != ust.st_uid or lst.st_gid != ust.st_gid
            or lst.st_rdev != ust.st_rdev):
        return False
    if read_xattrs(lower) != read_xattrs(upper):
        return False
    if stat.S_ISDIR(ust.st_mode):
        return True
    if lst.st_size != ust.st_size or lst.st_mtime_ns // 10**9 != ust.st_mtime_ns // 10**9:
        return False
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(lower) == os.readlink(upper)
    truncated = lst.st_mtime_ns % 10**9 == 0 and ust.st_mtime_ns % 10**9 == 0
    if not truncated:
        return lst.st_mtime_ns == ust.st_mtime_ns
    if stat.S_ISREG(ust.st_mode) and ust.st_size:
        return _same_content(lower, upper)
    return True


def _same_content(a: str, b: str) -> bool:
    fa = os.open(a, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fb = os.open(b, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while True:
                da = os.read(fa, _CHUNK)
                db = os.read(fb, _CHUNK)
                if da != db:
                    return False
                if not da:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


class _DiffWriter:
    def __init__(self, upper: str, out: LayerSink) -> None:
        self.upper = upper
        self.out = out
        self._buffer = bytearray()
        self._written_dirs: set[str] = set()
        self._inode_names: dict[tuple[int, int], str] = {}
        self._unchanged_links: dict[tuple[int, int], list[str]] = {}

    def walk(self, rel: str, lower: str | None, upper: str) -> None:
        """Emit the changes under one directory present in ``upper`` (and in ``lower``, if
        given), recursing in name order."""
        unames = _sorted_names(upper)
        lnames = _sorted_names(lower) if lower is not None else []
        ukeys = [os.fsencode(n) for n in unames]
        lkeys = [os.fsencode(n) for n in lnames]
        i = j = 0
        while i < len(lnames) or j < len(unames):
            if j >= len(unames) or (i < len(lnames) and lkeys[i] < ukeys[j]):
                self._delete(_join(rel, lnames[i]))
                i += 1
                continue
            name = unames[j]
            child = _join(rel, name)
            upath = upper + "/" + name
            ust = os.lstat(upath)
            if i < len(lnames) and lkeys[i] == ukeys[j]:
                assert lower is not None
                lpath = lower + "/" + name
                lst = os.lstat(lpath)
                i += 1
                same = _same(lpath, lst, upath, ust)
                self._change(child, upath, ust, unmodified=same)
                if stat.S_ISDIR(ust.st_mode):
                    self.walk(child, lpath if stat.S_ISDIR(lst.st_mode) else None, upath)
            else:
                self._change(child, upath, ust, unmodified=False)
                if stat.S_ISDIR(ust.st_mode):
                    self.walk(child, None, upath)
            j += 1

    def close(self) -> None:
        self._write(END_OF_ARCHIVE)
        self._flush()

    def _delete(self, rel: str) -> None:
        parent, _, base = rel.rpartition("/")
        self._include_parents(rel)
        mtime = os.lstat(self.upper + "/" + parent if parent else self.upper).st_mtime_ns
        self._write(encode_header(TarEntry(name=_join(parent, ".wh." + base), type=REGULAR,
                                           mode=0o644, mtime_ns=mtime)))

    def _change(self, rel: str, path: str, st: os.stat_result, *, unmodified: bool) -> None:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return  # a socket (or a door): not representable in a layer
        name = rel + "/" if kind == DIRECTORY else rel
        entry = TarEntry(name=name, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                         gid=st.st_gid, mtime_ns=st.st_mtime_ns // 10**9 * 10**9)
        extra_links: list[str] = []
        if kind != DIRECTORY and st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            first = self._inode_names.get(inode)
            if first is not None:
                entry.type = HARDLINK
                entry.linkname = first
            elif unmodified:
                self._unchanged_links.setdefault(inode, []).append(name)
                return
            else:
                self._inode_names[inode] = name
                extra_links = self._unchanged_links.pop(inode, [])
        elif unmodified:
            return
        if entry.type == REGULAR:
            entry.size = st.st_size
        elif kind == SYMLINK:
            entry.linkname = os.readlink(path)
        elif kind in (CHAR, BLOCKDEV):
            entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        if entry.type != HARDLINK:
            entry.xattrs = read_xattrs(path)
        self._include_parents(rel)
        self._write(encode_header(entry))
        if entry.type == REGULAR and entry.size:
            self._copy_content(path, entry.size)
        if kind == DIRECTORY:
            self._written_dirs.add(rel)
        for link in extra_links:
            self._include_parents(link)
            self._write(encode_header(TarEntry(
                name=link, type=HARDLINK, mode=entry.mode, uid=entry.uid, gid=entry.gid,
                mtime_ns=entry.mtime_ns, linkname=name)))

    def _include_parents(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if not parent or parent in self._written_dirs:
            return
        self._include_parents(parent)
        path = self.upper + "/" + parent
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise errdefs.FailedPrecondition(f"{path} changed while computing the diff")
        self._change(parent, path, st, unmodified=False)

    def _copy_content(self, path: str, size: int) -> None:
        self._flush()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = size
            while left:
                data = os.read(fd, min(left, _CHUNK))
                if not data:
                    raise errdefs.FailedPrecondition(
                        f"{path} shrank while computing the diff (expected {size} bytes)")
                self.out.write(data)
                left -= len(data)
        finally:
            os.close(fd)
        pad = -size % BLOCK
        if pad:
            self._write(bytes(pad))

    def _write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.out.write(bytes(self._buffer))
            self._buffer.clear()


def _join(parent: str, name: str) -> str:
    return parent + "/" + name if parent else name
