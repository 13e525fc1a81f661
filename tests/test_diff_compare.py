"""Computing layers: write_diff between two directories (round trip through apply_tar), and
WalkingDiff.compare on real overlay mounts."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hostile_layers import LayerBuilder, describe_tree
from isal import igzip
from mounts import mounted

from berth import errdefs
from berth.diff import LABEL_UNCOMPRESSED, WalkingDiff, apply_tar, write_diff
from berth.diff.tarformat import TarEntry, TarParser
from berth.mount import Mount
from berth.oci import image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, devices)")

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")


def lower_layer() -> bytes:
    return (LayerBuilder()
            .dir("etc").file("etc/hostname", b"berth\n").file("etc/empty", b"")
            .dir("usr").dir("usr/bin", mode=0o750, uid=7, gid=8)
            .file("usr/bin/tool", b"tool" * 1000, mode=0o755)
            .hardlink("usr/bin/tool-link", "usr/bin/tool")
            .file("usr/bin/ping", b"ELF", pax={
                "SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1")})
            .file("usr/bin/chmod-me", b"x", mode=0o644)
            .file("usr/bin/chown-me", b"x")
            .file("usr/bin/xattr-me", b"x")
            .symlink("usr/bin/abs", "/usr/bin/tool")
            .dir("dev").device("dev/null", major=1, minor=3, mode=0o666).fifo("dev/initctl")
            .dir("gone").file("gone/a", b"a").dir("gone/sub").file("gone/sub/b", b"b")
            .dir("dir-to-file").file("dir-to-file/x", b"x")
            .file("file-to-dir", b"f")
            .dir("tmp", mode=0o1777)
            .dir("a").dir("a/b").dir("a/b/c").file("a/b/c/deep", b"deep")
            .file("a-b", b"sorts after a/")
            .build())


def _truncate_times(top: Path) -> None:
    """Whole-second mtimes everywhere: what a tar round trip keeps."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9),
                     follow_symlinks=False)


def _make_lower(path: Path) -> Path:
    path.mkdir()
    apply_tar(io.BytesIO(lower_layer()), str(path), overlay_whiteouts=False)
    _truncate_times(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
    return dst


def _change(upper: Path) -> None:
    """Every kind of change a container makes."""
    hostname = upper / "etc" / "hostname"
    mtime = hostname.lstat().st_mtime_ns
    hostname.write_bytes(b"BERTH\n")  # same size, same (whole second) mtime: content decides
    os.utime(hostname, ns=(mtime, mtime))
    (upper / "etc" / "empty").unlink()
    (upper / "new" / "dir").mkdir(parents=True)
    (upper / "new" / "dir" / "file").write_bytes(b"new")
    os.symlink("../etc/hostname", upper / "new" / "link")
    os.link(upper / "usr" / "bin" / "tool", upper / "usr" / "bin" / "tool-link2")
    os.chmod(upper / "usr" / "bin" / "chmod-me", 0o4711)
    os.chown(upper / "usr" / "bin" / "chown-me", 1234, 5678)
    os.setxattr(upper / "usr" / "bin" / "xattr-me", "user.added", b"value")
    os.setxattr(upper / "usr" / "bin" / "ping", "security.capability",
                bytes.fromhex("0100000200100000000000000000000000000000"))
    (upper / "usr" / "bin" / "abs").unlink()
    os.symlink("/usr/bin/ping", upper / "usr" / "bin" / "abs")
    (upper / "dev" / "null").unlink()
    os.mknod(upper / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (upper / "dev" / "initctl").unlink()
    shutil.rmtree(upper / "gone")
    shutil.rmtree(upper / "dir-to-file")
    (upper / "dir-to-file").write_bytes(b"now a file")
    (upper / "file-to-dir").unlink()
    (upper / "file-to-dir").mkdir()
    (upper / "file-to-dir" / "inside").write_bytes(b"in")
    os.chmod(upper / "tmp", 0o700)
    (upper / "a" / "b" / "c" / "deep").write_bytes(b"changed deep")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(upper / "tmp" / "sock"))


def _entries(layer: bytes) -> list[TarEntry]:
    parser = TarParser()
    entries = [e for e in parser.feed(layer) if isinstance(e, TarEntry)]
    parser.close()
    assert parser.finished
    return entries


def test_write_diff_round_trip(tmp_path: Path) -> None:
    lower = _make_lower(tmp_path / "lower")
    upper = _copy(lower, tmp_path / "upper")
    _change(upper)
    _truncate_times(upper)
    out = io.BytesIO()
    write_diff(str(lower), str(upper), out)
    layer = out.getvalue()

    again = io.BytesIO()
    write_diff(str(lower), str(upper), again)
    assert again.getvalue() == layer, "the same trees must give the same bytes"

    names = [e.name for e in _entries(layer)]
    assert ".wh.gone" in names and not any(n.startswith("gone/") for n in names)
    assert "etc/.wh.empty" in names and "dev/.wh.initctl" in names
    assert "etc/hostname" in names
    assert "usr/bin/tool" not in names or names.index("usr/bin/tool") > names.index(
        "usr/bin/tool-link2")
    assert names.index("a/") < names.index("a/b/") < names.index("a/b/c/") < names.index(
        "a/b/c/deep")  # parents of a change are included, in order
    assert "a-b" not in names and "tmp/sock" not in names
    assert names.index("a/b/c/deep") < names.index("dev/")  # a/... sorts before a-b, dev

    applied = _copy(lower, tmp_path / "applied")
    apply_tar(io.BytesIO(layer), str(applied), overlay_whiteouts=False)
    os.unlink(upper / "tmp" / "sock")  # sockets are not carried by layers
    assert describe_tree(str(applied), dir_times=False) == describe_tree(str(upper),
                                                                         dir_times=False)
    tool = os.lstat(applied / "usr" / "bin" / "tool")
    assert tool.st_nlink == 3  # tool, tool-link and tool-link2 are still one inode


def test_write_diff_from_nothing(tmp_path: Path) -> None:
    upper = _make_lower(tmp_path / "upper")
    out = io.BytesIO()
    write_diff("", str(upper), out)
    applied = tmp_path / "applied"
    applied.mkdir()
    apply_tar(io.BytesIO(out.getvalue()), str(applied), overlay_whiteouts=False)
    assert describe_tree(str(applied)) == describe_tree(str(upper))


def test_unchanged_trees_give_an_empty_layer(tmp_path: Path) -> None:
    lower = _make_lower(tmp_path / "lower")
    upper = _copy(lower, tmp_path / "upper")
    out = io.BytesIO()
    write_diff(str(lower), str(upper), out)
    assert _entries(out.getvalue()) == []


class Sink:
    """Stands in for a content-store writer: only ``write`` is called."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


@contextlib.contextmanager
def container(tmp_path: Path) -> Iterator[tuple[Path, Mount, Path]]:
    """A one-layer image (overlay form) and a container snapshot over it, mounted, with
    changes made through the mount."""
    layer_dir = tmp_path / "layer"
    layer_dir.mkdir()
    apply_tar(io.BytesIO(lower_layer()), str(layer_dir), overlay_whiteouts=True)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    snapshot = Mount("overlay", "overlay",
                     (f"workdir={work}", f"upperdir={upper}", f"lowerdir={layer_dir}"))
    with mounted(snapshot, tmp_path / "rootfs") as rootfs:
        _change(rootfs)
        os.unlink(rootfs / "tmp" / "sock")
        # A lower directory cannot be renamed in place (EXDEV): moved as mv does it.
        shutil.move(rootfs / "a" / "b", rootfs / "a" / "renamed")
        yield layer_dir, snapshot, rootfs


@pytest.mark.parametrize(("media_type", "decompress"), [
    (image.MEDIA_TYPE_LAYER_GZIP, igzip.decompress),
    (image.MEDIA_TYPE_LAYER_ZSTD,
     lambda b: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b)).read()),
    (image.MEDIA_TYPE_LAYER, lambda b: b),
])
def test_walking_compare_on_overlay_mounts(tmp_path: Path, media_type: str,
                                           decompress: object) -> None:
    with container(tmp_path) as (layer_dir, snapshot, rootfs):
        assert stat.S_ISCHR(os.lstat(tmp_path / "upper" / "gone").st_mode)  # a real whiteout
        sink = Sink()
        lower = [Mount("bind", str(layer_dir), ("rbind", "ro"))]
        result = WalkingDiff(temp_dir=str(tmp_path)).compare(lower, [snapshot], sink,
                                                             media_type=media_type)
        blob = bytes(sink.data)
        assert result.descriptor == image.Descriptor(
            media_type, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
        tar = decompress(blob)  # type: ignore[operator]
        assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert result.labels == {LABEL_UNCOMPRESSED: result.diff_id}
        names = [e.name for e in _entries(tar)]
        assert ".wh.gone" in names and "a/.wh.b" in names

        applied = tmp_path / "applied"
        applied.mkdir()
        apply_tar(io.BytesIO(lower_layer()), str(applied), overlay_whiteouts=False)
        apply_tar(io.BytesIO(tar), str(applied), overlay_whiteouts=False)
        _truncate_times(rootfs)
        assert describe_tree(str(applied), dir_times=False) == describe_tree(
            str(rootfs), dir_times=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "applied", "layer", "rootfs", "upper", "work"]  # temporary mount points are gone


def test_walking_compare_with_no_lower(tmp_path: Path) -> None:
    layer_dir = _make_lower(tmp_path / "layer")
    sink = Sink()
    result = WalkingDiff().compare([], [Mount("bind", str(layer_dir), ("rbind", "ro"))], sink)
    applied = tmp_path / "applied"
    applied.mkdir()
    apply_tar(io.BytesIO(igzip.decompress(bytes(sink.data))), str(applied),
              overlay_whiteouts=False)
    assert describe_tree(str(applied)) == describe_tree(str(layer_dir))
    assert result.descriptor.media_type == image.MEDIA_TYPE_LAYER_GZIP


def test_walking_compare_rejects_unknown_media_types(tmp_path: Path) -> None:
    sink = Sink()
    with pytest.raises(errdefs.NotImplementedByBerth):
        WalkingDiff().compare([], [Mount("bind", str(tmp_path), ("rbind", "ro"))], sink,
                              media_type="application/vnd.oci.image.layer.v1.tar+lz4")
    assert sink.data == b""
