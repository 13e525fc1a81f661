"""A corpus of hostile image layers, the tar builder that makes them, and a tree snapshot to
check that applying them changed nothing outside the root.

``hostile_layers(outside)`` returns ``(name, tar bytes, description)`` triples. The layers are
built for a root whose sibling directory is ``outside`` (an absolute path): relative escapes
climb with ``../outside`` and absolute ones name ``outside`` itself, so that a broken applier
damages the test's sandbox rather than the host. Other suites (pulling the same layers through
a registry, for instance) can reuse them as they are.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

MTIME = 1_600_000_000


class LayerBuilder:
    """Builds a tar layer member by member. Members are ``tarfile.TarInfo`` underneath, so any
    field (PAX headers, GNU long names...) can be set; ``raw`` appends bytes as they are."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.TarFile(fileobj=self._buf, mode="w", format=fmt)
        self._closed = False

    def _info(self, name: str, kind: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
              mtime: float = MTIME, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = mtime
        if pax:
            info.pax_headers = dict(pax)
        return info

    def file(self, name: str, data: bytes = b"", **meta: object) -> LayerBuilder:
        info = self._info(name, tarfile.REGTYPE, **meta)  # type: ignore[arg-type]
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def dir(self, name: str, **meta: object) -> LayerBuilder:
        meta.setdefault("mode", 0o755)
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, **meta))  # type: ignore[arg-type]
        return self

    def symlink(self, name: str, target: str, **meta: object) -> LayerBuilder:
        meta.setdefault("mode", 0o777)
        info = self._info(name, tarfile.SYMTYPE, **meta)  # type: ignore[arg-type]
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, name: str, target: str, **meta: object) -> LayerBuilder:
        info = self._info(name, tarfile.LNKTYPE, **meta)  # type: ignore[arg-type]
        info.linkname = target
        self._tar.addfile(info)
        return self

    def device(self, name: str, kind: bytes = tarfile.CHRTYPE, major: int = 1, minor: int = 3,
               **meta: object) -> LayerBuilder:
        info = self._info(name, kind, **meta)  # type: ignore[arg-type]
        info.devmajor, info.devminor = major, minor
        self._tar.addfile(info)
        return self

    def fifo(self, name: str, **meta: object) -> LayerBuilder:
        self._tar.addfile(self._info(name, tarfile.FIFOTYPE, **meta))  # type: ignore[arg-type]
        return self

    def whiteout(self, name: str) -> LayerBuilder:
        return self.file(name)

    def raw(self, data: bytes) -> LayerBuilder:
        self._tar.fileobj.write(data)  # type: ignore[union-attr]
        self._tar.offset += len(data)
        return self

    def build(self) -> bytes:
        if not self._closed:
            self._tar.close()
            self._closed = True
        return self._buf.getvalue()


def raw_header(name: bytes, kind: bytes = b"0", size: int = 0, linkname: bytes = b"",
               *, chksum: bool = True, magic: bytes = b"ustar\x0000") -> bytes:
    """One ustar header block with exactly these bytes (for names tarfile would rewrite)."""
    block = bytearray(512)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % MTIME
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:157 + len(linkname[:100])] = linkname[:100]
    block[257:265] = magic
    if chksum:
        block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def make_sentinel(base: Path) -> Path:
    """A directory ``base/outside`` for the layers to aim at: a file, a subdirectory and a
    symlink, whose state tests compare before and after."""
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"sentinel")
    os.chmod(outside / "secret", 0o640)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_bytes(b"inner")
    os.symlink("secret", outside / "link")
    return outside


def landing(mnt: Path, outside: Path, rel: str) -> Path:
    """Where a write aimed at ``outside/rel`` by absolute path must land inside the image."""
    return mnt / str(outside).lstrip("/") / rel


def hostile_layers(outside: str) -> list[tuple[str, bytes, str]]:
    """The corpus; see the module docstring for what ``outside`` must be."""
    o = outside.rstrip("/")
    cases: list[tuple[str, bytes, str]] = []

    def add(name: str, layer: LayerBuilder | bytes, description: str) -> None:
        cases.append((name, layer if isinstance(layer, bytes) else layer.build(), description))

    L = LayerBuilder

    add("dotdot-file", L().file("../outside/pwned", b"x"),
        "a member named ../outside/pwned")
    add("dotdot-nested", L().file("a/../../outside/pwned", b"x"),
        "a/../../ climbs out after a legitimate component")
    add("dotdot-deep-overwrite", L().dir("a").dir("a/b").file("a/b/../../../outside/secret", b"x"),
        "overwrite a sentinel file through several ..")
    add("absolute-name", L().file(o + "/pwned", b"x"),
        "an absolute member name pointing at the sentinel directory")
    add("absolute-dir-name", L().dir(o + "/newdir", mode=0o777),
        "an absolute directory member")
    add("abs-symlink-write", L().symlink("l", o).file("l/secret", b"pwned"),
        "an absolute symlink to the sentinel dir, then a file written through it")
    add("rel-symlink-write", L().symlink("l", "../outside").file("l/secret", b"pwned"),
        "a relative symlink ../outside, then a file written through it")
    add("rel-symlink-deep-write",
        L().dir("a").dir("a/b").symlink("a/b/l", "../../../../../../../../../.." + o)
        .file("a/b/l/secret", b"pwned"),
        "a symlink climbing far above / and back down to the sentinel dir")
    add("symlink-chain",
        L().dir("c").symlink("a", "b").symlink("b", "c/../../outside").file("a/secret", b"pwned"),
        "a -> b -> c/../../outside, then a write through a")
    add("symlink-to-root-then-dotdot", L().symlink("r", "/").file("r/../outside/pwned", b"x"),
        "r -> /, then a name that climbs out lexically after it")
    add("symlink-abs-with-dotdots", L().symlink("l", "/../../.." + o).file("l/pwned", b"x"),
        "an absolute target with .. above /, then a write through it")
    add("symlink-dir-hardlink", L().symlink("l", o).hardlink("h", "l/secret"),
        "a symlink to the sentinel dir, then a hard link to a file through it")
    add("hardlink-dotdot", L().hardlink("h", "../outside/secret"),
        "a hard link to ../outside/secret")
    add("hardlink-absolute", L().hardlink("h", o + "/secret"),
        "a hard link to the sentinel file by absolute path")
    add("hardlink-etc-passwd", L().hardlink("passwd", "/etc/passwd"),
        "a hard link to the host's /etc/passwd")
    add("hardlink-to-outside-symlink",
        L().symlink("s", o + "/secret").hardlink("h", "s"),
        "a hard link to a symlink that points outside (must link the symlink, not its target)")
    add("hardlink-then-chmod",
        L().symlink("s", o + "/secret").hardlink("h", "s", mode=0o4777, uid=123),
        "a hard link to an outside-pointing symlink whose header asks for setuid and a chown")
    add("hardlink-then-overwrite", L().file("f", b"original").hardlink("h", "f")
        .file("h", b"replaced"),
        "a file, a hard link to it, then a new file under the link's name")
    add("hardlink-to-dir", L().dir("d").hardlink("h", "d"), "a hard link to a directory")
    add("hardlink-to-root", L().hardlink("h", "./"), "a hard link to the root itself")
    add("whiteout-dotdot", L().whiteout("../.wh.outside"),
        "a whiteout aimed at the sentinel directory from above the root")
    add("whiteout-nested-dotdot", L().dir("a").whiteout("a/../../outside/.wh.secret"),
        "a whiteout climbing out after a legitimate component")
    add("whiteout-through-symlink", L().symlink("l", o).whiteout("l/.wh.secret"),
        "a whiteout through an absolute symlink to the sentinel dir")
    add("whiteout-through-rel-symlink", L().symlink("l", "../outside").whiteout("l/.wh.secret"),
        "a whiteout through a relative symlink to the sentinel dir")
    add("whiteout-empty-name", L().whiteout(".wh."), "a whiteout of the empty name (its dir)")
    add("whiteout-dotdot-name", L().dir("a").whiteout("a/.wh.."), "a whiteout of ..")
    add("opaque-through-symlink", L().symlink("l", o).whiteout("l/.wh..wh..opq"),
        "an opaque marker inside a symlink to the sentinel dir")
    add("opaque-through-rel-symlink", L().symlink("l", "..").whiteout("l/.wh..wh..opq"),
        "an opaque marker inside l -> .. (the root's parent)")
    add("dir-replaces-symlink",
        L().symlink("d", o).dir("d", mode=0o777).file("d/f", b"x"),
        "a directory member over a symlink to the sentinel dir, then a file in it")
    add("dir-mode-through-symlink", L().symlink("d", o).dir("d/", mode=0o777, uid=99),
        "a directory member (trailing slash) named like a symlink: chmod/chown must not follow")
    add("file-mode-on-symlink-name", L().symlink("s", o + "/secret").file("s", b"", mode=0o4777),
        "a setuid file member with the name of a symlink to the sentinel file")
    add("device-through-symlink", L().symlink("l", o).device("l/null"),
        "a character device named through a symlink to the sentinel dir")
    add("block-device-through-symlink",
        L().symlink("l", "../outside").device("l/sda", tarfile.BLKTYPE, 8, 0),
        "a block device named through a relative escaping symlink")
    add("fifo-through-symlink", L().symlink("l", o).fifo("l/fifo"),
        "a fifo named through a symlink")
    add("symlink-loop", L().symlink("a", "b").symlink("b", "a").file("a/x", b"x"),
        "a -> b -> a, then a write through it")
    add("symlink-self-loop", L().symlink("a", "a").file("a/x", b"x"),
        "a -> a, then a write through it")
    add("long-component", L().file("x" * 300, b"x"), "a 300-byte name component")
    add("long-path", L().file("/".join(["d" * 200] * 25) + "/f", b"x"),
        "a 5000-byte path made of legal components")
    add("odd-bytes-name", L().file("odd\\name\nwith\tcontrol\x7f\u00e9\udcff", b"x"),
        "a name with a backslash, control characters and invalid UTF-8")
    add("nul-in-pax-path", L().file("innocent", b"x", pax={"path": "a\x00/../../outside/x"}),
        "a PAX path with a NUL byte in it")
    add("file-symlink-file",
        L().file("f", b"one").symlink("f", o + "/secret").file("f", b"pwned"),
        "a file, then a symlink with the same name to the sentinel, then a file again")
    add("xattr-on-symlink",
        L().symlink("s", o + "/secret", pax={"SCHILY.xattr.user.pwned": "1"}),
        "a user xattr on a symlink to the sentinel file (must not reach the target)")
    add("capability-on-symlink",
        L().symlink("s", o + "/secret", pax={"SCHILY.xattr.security.capability": "x"}),
        "a file capability on a symlink to the sentinel file (must not reach the target)")
    add("trusted-overlay-xattr",
        L().dir("d", pax={"SCHILY.xattr.trusted.overlay.redirect": o,
                          "SCHILY.xattr.trusted.overlay.opaque": "y"}),
        "overlay's own xattrs smuggled in a layer (redirect to the sentinel dir)")
    add("setuid-through-symlink", L().symlink("l", o).file("l/suid", b"#!", mode=0o4755),
        "a setuid file written through a symlink to the sentinel dir")
    add("pax-path-dotdot", L().file("innocent", b"x", pax={"path": "../outside/pax"}),
        "a PAX path override with ../")
    add("pax-linkpath-dotdot",
        L().hardlink("h", "innocent", pax={"linkpath": "../outside/secret"}),
        "a PAX linkpath override of a hard link with ../")
    long_prefix = "a/" * 60
    add("gnu-longname-dotdot",
        L(tarfile.GNU_FORMAT).file(long_prefix + "../" * 61 + "outside/gnu", b"x"),
        "a GNU long name that climbs out at its end")
    add("gnu-longlink-dotdot",
        L(tarfile.GNU_FORMAT).hardlink("h", long_prefix + "../" * 61 + "outside/secret"),
        "a GNU long link name (hard link) that climbs out")
    add("dir-swapped-for-symlink",
        L().dir("d").file("d/a", b"x").symlink("d", o).file("d/b", b"pwned"),
        "a directory used, then replaced by a symlink to the sentinel dir, then written through")
    add("dir-times-after-swap", L().dir("t", mtime=1).symlink("t", o),
        "a directory whose deferred times must not land on the symlink that replaced it")
    add("root-entry", L().dir("./", mode=0o777, uid=4242), "a member for the root itself")
    add("aufs-metadata", L().dir(".wh..wh.plnk").file(".wh..wh.plnk/123", b"x"),
        "AUFS hard link metadata")
    add("huge-pax-header", _pad(raw_header(b"PaxHeaders/x", b"x", 2 << 20)) + bytes(2 << 20),
        "a PAX header claiming 2 MiB (a memory bomb)")
    add("sparse-member", raw_header(b"sparse", b"S") + bytes(1024), "a GNU sparse member")
    add("bad-checksum", raw_header(b"f", chksum=False) + bytes(1024),
        "a header with a wrong checksum")
    add("truncated", raw_header(b"f", size=4096) + b"short", "a member cut short")
    add("absolute-symlink-to-sentinel-file", L().symlink("passwd", o + "/secret"),
        "just a symlink to an outside file (legal: it is only data)")
    add("deep-nesting", L().file("/".join(["n"] * 3000) + "/f", b"x"),
        "a file 3000 directories deep")
    assert len({name for name, _, _ in cases}) == len(cases)
    return cases


def snapshot_tree(top: str, exclude: Iterable[str] = ()) -> dict[str, tuple[object, ...]]:
    """Everything under ``top`` (itself included) except ``exclude`` subtrees, path to
    (type+mode, uid, gid, size, mtime_ns, nlink, inode, content digest or link target, xattrs).
    Never follows symlinks."""
    skip = {os.path.abspath(p) for p in exclude}
    result: dict[str, tuple[object, ...]] = {}

    def visit(path: str) -> None:
        if path in skip:
            return
        st = os.lstat(path)
        extra: object = None
        if stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                              for k in os.listxattr(path, follow_symlinks=False)))
        result[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                        st.st_nlink, st.st_ino, st.st_rdev, extra, xattrs)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name))

    visit(os.path.abspath(top))
    return result


def describe_tree(top: str, *, dir_times: bool = True,
                  xattr_prefixes: tuple[str, ...] = ("user.", "security.capability"),
                  ) -> dict[str, tuple[object, ...]]:
    """What a layer is supposed to reproduce under ``top``, by path relative to it: type and
    mode, owner, device, size, mtime (directories' only if ``dir_times``), content or link
    target, the xattrs with the given prefixes, and which paths share an inode."""
    result: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            xattrs = tuple(sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False) if k.startswith(xattr_prefixes)))
            mtime = st.st_mtime_ns if dir_times or not stat.S_ISDIR(st.st_mode) else None
            result[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_rdev,
                           st.st_size if not stat.S_ISDIR(st.st_mode) else None, mtime, content,
                           xattrs)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for names in inodes.values():
        for rel in names:
            result[rel] = (*result[rel], tuple(sorted(names)))
    return result


def metadata_through_symlink_cases(outside: str) -> list[tuple[str, list[bytes], str, str]]:
    """The CVE-2021-32760 family: an entry whose metadata (mode, owner, times, xattrs) an
    applier sets after creating it, where the path it sets them on is, or becomes, a symlink
    to a file outside the root. containerd before 1.4.8/1.5.4 chmodded a hard link to such a
    symlink with ``os.Chmod``, which follows it: the host file became setuid and world
    writable. Some cases put the symlink in a lower layer, so the applier meets it in a
    parent snapshot (an overlayfs lowerdir, or a copy for the native snapshotter).

    ``outside`` is as for :func:`hostile_layers`. Returns (name, layers bottom first,
    description, the image path whose metadata the last layer sets).
    """
    o = outside.rstrip("/")
    L = LayerBuilder
    climb = "../" * 12  # far above the root from any directory of the layer
    return [
        ("hardlink-to-symlink-setuid",
         [L().symlink("s", o + "/secret").hardlink("h", "s", mode=0o4777, uid=123, gid=123)
          .build()],
         "a hard link to a symlink to the sentinel file, its header asking for 04777 and a "
         "chown (CVE-2021-32760 itself)", "h"),
        ("hardlink-to-relative-symlink",
         [L().dir("a").symlink("a/s", climb + o.lstrip("/") + "/secret")
          .hardlink("h", "a/s", mode=0o777).build()],
         "the same through a relative symlink climbing above the root", "h"),
        ("hardlink-to-dir-symlink",
         [L().symlink("s", o + "/dir").hardlink("h", "s", mode=0o777, uid=99).build()],
         "a hard link to a symlink to the sentinel directory, asking for 0777 and a chown",
         "h"),
        ("hardlink-to-symlink-times",
         [L().symlink("s", o + "/secret").hardlink("h", "s", mtime=1).build()],
         "a hard link to a symlink to the sentinel file with its own mtime (utimes must not "
         "follow)", "h"),
        ("hardlink-to-symlink-xattr",
         [L().symlink("s", o + "/secret")
          .hardlink("h", "s", pax={"SCHILY.xattr.user.pwned": "1"}).build()],
         "a hard link to a symlink to the sentinel file with a user xattr (must not land on "
         "the target)", "h"),
        ("hardlink-to-lower-symlink",
         [L().symlink("s", o + "/secret").build(),
          L().hardlink("h", "s", mode=0o4777, uid=123).build()],
         "the symlink in one layer, the hard link asking for 04777 in the next", "h"),
        ("file-over-lower-symlink",
         [L().symlink("f", o + "/secret").build(),
          L().file("f", b"replaced", mode=0o4777, uid=123).build()],
         "a symlink to the sentinel file in one layer, a setuid file of that name in the next "
         "(it must replace the symlink, not write or chmod through it)", "f"),
        ("dir-over-lower-symlink",
         [L().symlink("d", o + "/dir").build(), L().dir("d", mode=0o777, uid=99).build()],
         "a symlink to the sentinel directory in one layer, a 0777 directory of that name in "
         "the next", "d"),
    ]
