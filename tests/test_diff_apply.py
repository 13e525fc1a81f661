"""Applying layers: the tar reader, apply_tar in both whiteout modes, and WalkingDiff.apply over
real mounts (overlay fast path, bind mount, temporary mount), compressions and diff IDs."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard
from hostile_layers import LayerBuilder, describe_tree, raw_header
from isal import igzip
from mounts import mounted

from berth import errdefs
from berth.diff import WalkingDiff, apply_tar
from berth.diff.compression import DigestingReader, PrefetchReader, decompressed_reader
from berth.diff.tarformat import END, TarEntry, TarParser, encode_header
from berth.mount import Mount
from berth.oci import image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, devices)")

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # v2: cap_net_bind_service
BIG = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: crosses the reader's chunks


def base_layer() -> bytes:
    return (LayerBuilder()
            .dir("etc", mode=0o755, mtime=1_500_000_000)
            .file("etc/hostname", b"berth\n", mtime=1_500_000_001)
            .file("etc/empty", b"")
            .dir("usr", mode=0o755)
            .dir("usr/bin", mode=0o750, uid=7, gid=8, mtime=1_400_000_000)
            .file("usr/bin/tool", BIG, mode=0o755)
            .file("usr/bin/su", b"#!su", mode=0o4755, uid=0, gid=0)
            .file("usr/bin/sgid", b"#!sg", mode=0o2711, uid=5, gid=50)
            .file("usr/bin/ping", b"ELF", mode=0o755,
                  pax={"SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1"),
                       "SCHILY.xattr.user.comment": "hello"})
            .hardlink("usr/bin/tool-link", "usr/bin/tool")
            .symlink("usr/bin/rel", "tool")
            .symlink("usr/bin/abs", "/usr/bin/tool")
            .dir("tmp", mode=0o1777)
            .dir("dev", mode=0o755)
            .device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
            .device("dev/sda", tarfile.BLKTYPE, 8, 0, mode=0o660, gid=6)
            .fifo("dev/initctl", mode=0o600)
            .file("home/user/file", b"data", uid=1000, gid=1000, mode=0o600,
                  pax={"mtime": "1600000000.123456789", "atime": "1700000000.5"})
            .dir("gone", mode=0o755).file("gone/a", b"a").dir("gone/sub").file("gone/sub/b", b"b")
            .file("file-to-delete", b"x")
            .dir("opaque").file("opaque/old", b"old").dir("opaque/olddir")
            .file("opaque/olddir/deep", b"d")
            .dir("opaque2").file("opaque2/old", b"old")
            .build())


def second_layer() -> bytes:
    return (LayerBuilder()
            .whiteout(".wh.file-to-delete")
            .whiteout(".wh.gone")
            .whiteout("opaque/.wh..wh..opq")
            .file("opaque/new", b"new")
            .file("opaque2/new", b"new")  # marker after the new content
            .file("opaque2/implicit/child", b"kept")
            .whiteout("opaque2/.wh..wh..opq")
            .file("etc/hostname", b"replaced\n")
            .file("usr/bin/rel", b"a file replaces a symlink")
            .file("home/user/newfile", b"n")  # home/user/ exists below: not in this layer
            .build())


# -- the tar reader --------------------------------------------------------------------------


def _events(data: bytes, chunk: int) -> list[object]:
    parser = TarParser()
    out: list[object] = []
    for i in range(0, len(data), chunk):
        for event in parser.feed(data[i:i + chunk]):
            out.append(bytes(event) if isinstance(event, memoryview) else event)
    parser.close()
    merged: list[object] = []
    for event in out:  # content split differently by chunk size: join it
        if isinstance(event, bytes) and merged and isinstance(merged[-1], bytearray):
            merged[-1] += event
        else:
            merged.append(bytearray(event) if isinstance(event, bytes) else event)
    return [bytes(e) if isinstance(e, bytearray) else e for e in merged]


def test_parser_is_chunking_independent() -> None:
    layer = base_layer()
    whole = _events(layer, len(layer))
    assert whole == _events(layer, 511) == _events(layer, 4096) == _events(layer, 65536)
    entries = [e for e in whole if isinstance(e, TarEntry)]
    by_name = {e.name: e for e in entries}
    assert by_name["usr/bin/ping"].xattrs == {"security.capability": CAPABILITY,
                                              "user.comment": b"hello"}
    assert by_name["home/user/file"].mtime_ns == 1_600_000_000_123_456_789
    assert by_name["home/user/file"].atime_ns == 1_700_000_000_500_000_000
    assert by_name["usr/bin/tool-link"].size == 0
    assert whole[-1] is END
    gnu = LayerBuilder(tarfile.GNU_FORMAT).file("g/" + "n" * 200, b"gnu") \
        .hardlink("g/l", "g/" + "n" * 300).symlink("g/s", "t" * 150).build()
    events = _events(gnu, 1)
    assert events == _events(gnu, len(gnu))
    names = [(e.name, e.type, e.linkname) for e in events if isinstance(e, TarEntry)]
    assert names == [("g/" + "n" * 200, "0", ""), ("g/l", "1", "g/" + "n" * 300),
                     ("g/s", "2", "t" * 150)]
    assert b"gnu" in events


def test_parser_reads_old_and_gnu_forms() -> None:
    v7_dir = raw_header(b"olddir/", b"\0", magic=bytes(8))
    v7_file = raw_header(b"oldfile", b"\0", size=3, magic=bytes(8)) + b"abc".ljust(512, b"\0")
    big = bytearray(raw_header(b"big", b"0", chksum=False))
    big[108:116] = b"\x80" + (70000).to_bytes(7, "big")  # base-256 uid
    big[148:156] = b"%06o\0 " % sum(big)
    events = _events(v7_dir + v7_file + bytes(big) + bytes(1024), 512)
    entries = [e for e in events if isinstance(e, TarEntry)]
    assert [(e.name, e.type) for e in entries] == [("olddir/", "5"), ("oldfile", "0"),
                                                   ("big", "0")]
    assert entries[2].uid == 70000
    assert b"abc" in events


def test_header_encoder_round_trips_through_tarfile() -> None:
    entry = TarEntry(name="d/" + "x" * 150, type="0", mode=0o4755, uid=3_000_000, gid=5,
                     size=3, mtime_ns=1_234_567_890_999_999_999,
                     xattrs={"user.bin": b"\x00\xff\n=", "security.capability": CAPABILITY})
    data = encode_header(entry) + b"abc".ljust(512, b"\0") + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        [member] = tf.getmembers()
        assert member.name == entry.name and member.uid == 3_000_000 and member.mode == 0o4755
        assert member.mtime == 1_234_567_890
        assert tf.extractfile(member).read() == b"abc"  # type: ignore[union-attr]
    [parsed] = [e for e in _events(data, 100) if isinstance(e, TarEntry)]
    assert parsed.xattrs == entry.xattrs and parsed.uid == entry.uid


# -- apply_tar -------------------------------------------------------------------------------


def test_apply_keeps_every_kind_and_its_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    layer = base_layer()
    assert apply_tar(io.BytesIO(layer), str(root), overlay_whiteouts=False) == len(layer)

    def st(rel: str) -> os.stat_result:
        return os.lstat(root / rel)

    assert (root / "etc/hostname").read_bytes() == b"berth\n"
    assert (root / "usr/bin/tool").read_bytes() == BIG
    assert st("usr/bin/tool").st_ino == st("usr/bin/tool-link").st_ino
    assert st("usr/bin/tool").st_nlink == 2
    assert stat.S_IMODE(st("usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(st("usr/bin/sgid").st_mode) == 0o2711
    assert (st("usr/bin/sgid").st_uid, st("usr/bin/sgid").st_gid) == (5, 50)
    assert stat.S_IMODE(st("tmp").st_mode) == 0o1777
    assert stat.S_IMODE(st("usr/bin").st_mode) == 0o750
    assert (st("usr/bin").st_uid, st("usr/bin").st_gid) == (7, 8)
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == CAPABILITY
    assert os.getxattr(root / "usr/bin/ping", "user.comment") == b"hello"
    assert os.readlink(root / "usr/bin/rel") == "tool"
    assert os.readlink(root / "usr/bin/abs") == "/usr/bin/tool"
    assert stat.S_ISCHR(st("dev/null").st_mode) and st("dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st("dev/null").st_mode) == 0o666
    assert stat.S_ISBLK(st("dev/sda").st_mode) and st("dev/sda").st_rdev == os.makedev(8, 0)
    assert st("dev/sda").st_gid == 6
    assert stat.S_ISFIFO(st("dev/initctl").st_mode)
    home = st("home/user/file")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o600)
    assert home.st_mtime_ns == 1_600_000_000_123_456_789
    assert home.st_atime_ns == 1_700_000_000_500_000_000
    # Directory times are set last, after their content was written.
    assert st("etc").st_mtime_ns == 1_500_000_000 * 10**9
    assert st("usr/bin").st_mtime_ns == 1_400_000_000 * 10**9
    assert st("etc/hostname").st_mtime_ns == 1_500_000_001 * 10**9
    # A parent that the layer did not list is made 0755.
    assert stat.S_IMODE(st("home").st_mode) == 0o755


def test_apply_replaces_existing_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "was-dir").mkdir()
    (root / "was-dir" / "content").write_bytes(b"x")
    (root / "was-file").write_bytes(b"x")
    (root / "keep-dir").mkdir()
    (root / "keep-dir" / "old").write_bytes(b"old")
    os.symlink("elsewhere", root / "was-link")
    layer = (LayerBuilder().file("was-dir", b"now a file").dir("was-file", mode=0o700)
             .dir("keep-dir", mode=0o711).symlink("was-link", "new-target").build())
    apply_tar(io.BytesIO(layer), str(root), overlay_whiteouts=False)
    assert (root / "was-dir").read_bytes() == b"now a file"
    assert (root / "was-file").is_dir()
    assert (root / "keep-dir" / "old").read_bytes() == b"old"  # directories merge
    assert stat.S_IMODE((root / "keep-dir").stat().st_mode) == 0o711
    assert os.readlink(root / "was-link") == "new-target"


def _apply_plain(tmp_path: Path, layers: list[bytes]) -> Path:
    root = tmp_path / "plain"
    root.mkdir()
    for layer in layers:
        apply_tar(io.BytesIO(layer), str(root), overlay_whiteouts=False)
    return root


def test_whiteouts_and_opaque_directories_plain(tmp_path: Path) -> None:
    root = _apply_plain(tmp_path, [base_layer(), second_layer()])
    assert not (root / "file-to-delete").exists()
    assert not (root / "gone").exists()
    assert sorted(os.listdir(root / "opaque")) == ["new"]
    assert sorted(os.listdir(root / "opaque2")) == ["implicit", "new"]
    assert (root / "opaque2" / "implicit" / "child").read_bytes() == b"kept"
    assert (root / "etc" / "hostname").read_bytes() == b"replaced\n"
    assert (root / "usr" / "bin" / "rel").read_bytes() == b"a file replaces a symlink"
    assert (root / "home" / "user" / "file").exists()


def test_overlay_whiteouts_give_the_same_merged_view(tmp_path: Path) -> None:
    plain = _apply_plain(tmp_path, [base_layer(), second_layer()])
    lower, upper = tmp_path / "l1", tmp_path / "l2"
    lower.mkdir()
    upper.mkdir()
    apply_tar(io.BytesIO(base_layer()), str(lower), overlay_whiteouts=True)
    apply_tar(io.BytesIO(second_layer()), str(upper), overlay_whiteouts=True,
              parents=[str(lower)])
    gone = os.lstat(upper / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(upper / "opaque", "trusted.overlay.opaque") == b"y"
    # home/user was created in the upper as a parent: it copied the lower's metadata.
    assert os.stat(upper / "home" / "user").st_mode == os.stat(lower / "home" / "user").st_mode
    view = Mount("overlay", "overlay", (f"lowerdir={upper}:{lower}",))
    with mounted(view, tmp_path / "merged") as merged:
        assert describe_tree(str(merged), dir_times=False) == describe_tree(str(plain),
                                                                             dir_times=False)


# -- WalkingDiff.apply -----------------------------------------------------------------------


def _compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return igzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def _blob(data: bytes, opened: list[BinaryIO] | None = None) -> object:
    def open_blob(_desc: image.Descriptor) -> BinaryIO:
        stream = io.BytesIO(data)
        if opened is not None:
            opened.append(stream)
        return stream
    return open_blob


def _bind(path: Path) -> list[Mount]:
    return [Mount("bind", str(path), ("rbind", "rw"))]


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "inline"])
@pytest.mark.parametrize(("media_type", "kind"), [
    (image.MEDIA_TYPE_LAYER_GZIP, "gzip"),
    (image.MEDIA_TYPE_LAYER_ZSTD, "zstd"),
    (image.MEDIA_TYPE_LAYER, ""),
    (image.DOCKER_LAYER_GZIP, "gzip"),
    (image.MEDIA_TYPE_LAYER, "gzip"),  # declared plain, really gzip: the magic decides
    (image.MEDIA_TYPE_LAYER, "zstd"),
    (image.MEDIA_TYPE_LAYER_GZIP, ""),  # declared gzip, really plain
])
def test_walking_apply_reports_the_diff_id(tmp_path: Path, media_type: str, kind: str,
                                           prefetch: bool) -> None:
    layer = base_layer() + b"\0" * 4096 + b"trailing bytes are part of the digest"
    blob = _compress(layer, kind)
    desc = image.Descriptor(media_type, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
    root = tmp_path / "root"
    root.mkdir()
    opened: list[BinaryIO] = []
    applied = WalkingDiff(prefetch=prefetch).apply(desc, _bind(root), _blob(blob, opened))  # type: ignore[arg-type]
    assert applied == image.Descriptor(image.MEDIA_TYPE_LAYER,
                                       "sha256:" + hashlib.sha256(layer).hexdigest(), len(layer))
    assert (root / "usr" / "bin" / "tool").read_bytes() == BIG
    assert [s.closed for s in opened] == [True]


def test_multi_member_gzip(tmp_path: Path) -> None:
    layer = base_layer()
    blob = igzip.compress(layer[:10000]) + igzip.compress(layer[10000:])
    root = tmp_path / "root"
    root.mkdir()
    desc = image.Descriptor(image.MEDIA_TYPE_LAYER_GZIP, "sha256:x", len(blob))
    applied = WalkingDiff().apply(desc, _bind(root), _blob(blob))  # type: ignore[arg-type]
    assert applied.digest == "sha256:" + hashlib.sha256(layer).hexdigest()


def test_unsupported_media_type_is_not_implemented(tmp_path: Path) -> None:
    opened: list[BinaryIO] = []
    desc = image.Descriptor("application/vnd.oci.image.layer.v1.tar+encrypted", "sha256:x", 1)
    with pytest.raises(errdefs.NotImplementedByBerth):
        WalkingDiff().apply(desc, _bind(tmp_path), _blob(b"x", opened))  # type: ignore[arg-type]
    assert opened == []


def test_corrupt_blob_is_invalid_and_closed(tmp_path: Path) -> None:
    blob = igzip.compress(base_layer())
    blob = blob[:len(blob) // 2] + bytes(64) + blob[len(blob) // 2 + 64:]
    opened: list[BinaryIO] = []
    desc = image.Descriptor(image.MEDIA_TYPE_LAYER_GZIP, "sha256:x", len(blob))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(errdefs.InvalidArgument):
        WalkingDiff().apply(desc, _bind(root), _blob(blob, opened))  # type: ignore[arg-type]
    assert [s.closed for s in opened] == [True]


def test_walking_apply_overlay_fast_path(tmp_path: Path) -> None:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    apply_tar(io.BytesIO(base_layer()), str(lower), overlay_whiteouts=True)
    snapshot = Mount("overlay", "overlay",
                     (f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}"))
    second = second_layer()
    desc = image.Descriptor(image.MEDIA_TYPE_LAYER, "sha256:x", len(second))
    applied = WalkingDiff().apply(desc, [snapshot], _blob(second))  # type: ignore[arg-type]
    assert applied.size == len(second)
    assert stat.S_ISCHR(os.lstat(upper / "file-to-delete").st_mode)  # written in overlay form
    plain = _apply_plain(tmp_path, [base_layer(), second])
    with mounted(snapshot, tmp_path / "merged") as merged:
        assert describe_tree(str(merged), dir_times=False) == describe_tree(str(plain),
                                                                             dir_times=False)


def test_walking_apply_through_a_temporary_mount(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_tar(io.BytesIO(base_layer()), str(root), overlay_whiteouts=False)
    second = second_layer()
    desc = image.Descriptor(image.MEDIA_TYPE_LAYER, "sha256:x", len(second))
    # Two mounts: no fast path applies, so the applier mounts them on a temp dir.
    mounts = [Mount("bind", str(root), ("rbind", "rw")), Mount("bind", str(root), ("rbind",))]
    WalkingDiff(temp_dir=str(tmp_path)).apply(desc, mounts, _blob(second))  # type: ignore[arg-type]
    assert describe_tree(str(root), dir_times=False) == describe_tree(
        str(_apply_plain(tmp_path, [base_layer(), second])), dir_times=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "root"]  # mount point gone


def test_prefetch_reader_propagates_errors_and_stops() -> None:
    class Failing:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int = -1, /) -> bytes:
            self.reads += 1
            if self.reads > 3:
                raise OSError("disk on fire")
            return b"x" * 10

    with PrefetchReader(Failing(), chunk_size=10, depth=1) as reader:
        assert reader.read(25) == b"x" * 10
        assert reader.read(5) + reader.read(5) == b"x" * 10
        reader.read(100)
        with pytest.raises(OSError, match="disk on fire"):
            reader.read(100)
    endless = PrefetchReader(io.BytesIO(b"y" * 1_000_000), chunk_size=10, depth=2)
    assert endless.read(3) == b"yyy"
    endless.close()  # returns although the thread was blocked on a full queue


def test_digesting_reader_counts_every_byte() -> None:
    data = os.urandom(100_000)
    reader = DigestingReader(decompressed_reader(io.BytesIO(igzip.compress(data)), "gzip"))
    assert reader.read(10) + reader.read() == data
    assert reader.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert reader.size == len(data)


def test_a_failing_source_keeps_its_error(tmp_path: Path) -> None:
    layer = base_layer()

    class Broken:
        def __init__(self) -> None:
            self.data = io.BytesIO(layer)

        def read(self, size: int = -1, /) -> bytes:
            if self.data.tell() > len(layer) // 2:
                raise OSError(5, "Input/output error")
            return self.data.read(min(size, 65536))

    with pytest.raises(OSError, match="Input/output error") as caught:
        apply_tar(Broken(), str(tmp_path), overlay_whiteouts=False)
    assert not isinstance(caught.value, errdefs.BerthError)


def test_apply_onto_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink("real", tmp_path / "alias")
    apply_tar(io.BytesIO(LayerBuilder().file("f", b"x").build()), str(tmp_path / "alias"),
              overlay_whiteouts=False)
    assert (real / "f").read_bytes() == b"x"
    assert (tmp_path / "alias").is_symlink()
