"""Denial of service through an image layer: its tar's metadata, its size, its member count.

A layer is untrusted input, and berthd parses it in its own heap. Three ways it could take that
heap or its time without bound, each now capped with an error naming the limit:

* **Extended headers** (PAX ``x``/``g``, GNU long name ``L`` and long link ``K``). One header's
  data is capped at 1 MiB (Go's ``maxSpecialFileSize``); at most
  :data:`~berth.diff.tarformat.MAX_EXTENDED_HEADERS` of them may stand in a row before a member,
  with :data:`~berth.diff.tarformat.MAX_PENDING_METADATA` bytes in all. Before, the records of
  consecutive ``x`` headers were merged, so a layer of nothing but PAX headers grew the parser's
  dict until memory ran out. Two ``x`` headers in a row now read as Go reads them (the last one
  counts), as do GNU long names over PAX paths and a ``g`` header between them.
* **Expanded size**: the uncompressed stream may be at most twice the size of the file system
  the layer is unpacked onto (a gzip of zeros expands a thousandfold; a file overwritten again
  and again, or bytes after the end marker, land nowhere on disk but cost the time).
* **Member count**: about four million by default, configurable (``LayerLimits``).

The parser is tested sans-IO (bytes in, events or an error out); the applier on real
directories; the whole path through the real ``ctr`` and ``berth pull`` against a real berthd
and registry, where a refused layer must leave no snapshot committed and no ingest behind.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import hostile_layers
import images
import pytest
from conftest import Ctr, sha256_of
from ctr_views import active_ingests, content_digests, snapshot_kinds
from daemon import Berthd, unmount_under
from registry import Registry, loopback_env

from berth import errdefs
from berth.diff.archive import EXPANSION_FACTOR, LayerLimits, apply_tar
from berth.diff.tarformat import (
    END,
    MAX_EXTENDED_HEADER,
    MAX_EXTENDED_HEADERS,
    MAX_PENDING_METADATA,
    TarEntry,
    TarParser,
)
from berth.diff.walking import WalkingDiff
from berth.mount import Mount
from berth.oci.image import MEDIA_TYPE_LAYER, Descriptor

REPO = Path(__file__).resolve().parents[2]
BERTH = REPO / ".venv" / "bin" / "berth"
MiB = 1 << 20


# -- building tars byte by byte ----------------------------------------------------------------


def record(key: str, value: bytes = b"") -> bytes:
    """One PAX record, ``"<len> <key>=<value>\\n"``."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def extended(kind: bytes, data: bytes, *, size: int | None = None) -> bytes:
    """An extended header (``x``, ``g``, ``L``, ``K``) with its data, padded to a block; ``size``
    overrides what the header claims."""
    header = hostile_layers.raw_header(b"././@Extended", kind, len(data) if size is None else size)
    return header + data + bytes(-len(data) % 512)


def records_of(total: int, prefix: str = "SCHILY.xattr.user.XXX.k") -> bytes:
    """PAX records with distinct keys, about ``total`` bytes of them (at most ``total``).
    :func:`renamed` gives another set of keys of the same length."""
    out = bytearray()
    n = 0
    while True:
        more = record(f"{prefix}{n}", b"v")
        if len(out) + len(more) > total:
            return bytes(out)
        out += more
        n += 1


def renamed(records: bytes, n: int) -> bytes:
    """``records`` (from :func:`records_of`) with keys of their own: merging such headers would
    keep every record of each."""
    return records.replace(b".XXX.", b".%03d." % n)


def member(name: str, data: bytes = b"") -> bytes:
    """A plain ustar regular file."""
    header = hostile_layers.raw_header(name.encode(), b"0", len(data))
    return header + data + bytes(-len(data) % 512)


END_MARKER = bytes(1024)


def parse(data: bytes, chunk: int = 64 * 1024) -> list[TarEntry]:
    """The members ``data`` holds, fed in chunks of ``chunk`` bytes."""
    parser = TarParser()
    found: list[TarEntry] = []
    for start in range(0, len(data), chunk):
        for event in parser.feed(data[start:start + chunk]):
            if isinstance(event, TarEntry):
                found.append(event)
            elif event is END:
                break
    parser.close()
    return found


# -- the parser: caps on extended headers ------------------------------------------------------


def test_extended_headers_in_a_row_are_capped() -> None:
    """A layer of PAX headers only: refused at the first header past the cap, before its data
    is read (the old parser merged them all into one growing dict)."""
    small = extended(b"x", record("SCHILY.xattr.user.a", b"1"))
    ok = small * MAX_EXTENDED_HEADERS + member("f", b"x") + END_MARKER
    assert [e.name for e in parse(ok)] == ["f"]

    flood = small * (MAX_EXTENDED_HEADERS + 1)
    parser = TarParser()
    with pytest.raises(errdefs.InvalidArgument,
                       match=rf"more than {MAX_EXTENDED_HEADERS} extended headers in a row"):
        list(parser.feed(flood + bytes(10 * MiB)))


@pytest.mark.parametrize("kind", [b"x", b"g", b"L", b"K"])
def test_every_kind_of_extended_header_counts(kind: bytes) -> None:
    flood = b"".join(extended(kind, record("comment", str(i).encode()) if kind in b"xg"
                              else f"name{i}".encode()) for i in range(MAX_EXTENDED_HEADERS + 1))
    with pytest.raises(errdefs.InvalidArgument, match="extended headers in a row"):
        parse(flood + member("f") + END_MARKER)


def test_pax_flood_keeps_the_heap_bounded() -> None:
    """64 MiB of distinct xattr records in 1 MiB PAX headers: refused once the headers before
    one member pass MAX_PENDING_METADATA, and the parser never holds more than a few MiB."""
    records = records_of(MAX_EXTENDED_HEADER - 4096)
    parser = TarParser()
    fed = 0
    tracemalloc.start()
    try:
        with pytest.raises(errdefs.InvalidArgument, match=r"extended headers of \d+ bytes in all"):
            for i in range(64):
                data = extended(b"x", renamed(records, i))
                list(parser.feed(data))
                fed += len(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fed <= MAX_PENDING_METADATA + MAX_EXTENDED_HEADER
    assert peak < 16 * MiB, f"the parser's heap reached {peak >> 20} MiB"


def test_one_header_over_a_mebibyte_is_refused_before_its_data() -> None:
    for kind in (b"x", b"g", b"L", b"K"):
        header = hostile_layers.raw_header(b"././@Extended", kind, MAX_EXTENDED_HEADER + 1)
        with pytest.raises(errdefs.InvalidArgument,
                           match=rf"of {MAX_EXTENDED_HEADER + 1} bytes is over the limit of "
                                 rf"{MAX_EXTENDED_HEADER} bytes"):
            list(TarParser().feed(header))  # the header alone: nothing of its data is awaited


def test_pending_metadata_total_is_capped() -> None:
    """A 1 MiB PAX header, a 1 MiB long name and a long link: each under the per-header cap,
    together over MAX_PENDING_METADATA."""
    layer = (extended(b"x", records_of(MAX_EXTENDED_HEADER))
             + extended(b"L", b"n" * (MAX_EXTENDED_HEADER - 1))
             + extended(b"K", b"t" * 4096) + member("f") + END_MARKER)
    with pytest.raises(errdefs.InvalidArgument,
                       match=rf"over the limit of {MAX_PENDING_METADATA} bytes"):
        parse(layer)


def test_the_caps_reset_at_each_member() -> None:
    """The caps are per member: a layer where every member has its full share parses."""
    one = (extended(b"x", record("SCHILY.xattr.user.big", b"v" * (MAX_EXTENDED_HEADER - 64)))
           + extended(b"L", b"n" * 1000) + extended(b"K", b"t" * 700))
    entries = parse(one + member("a") + one + member("b") + END_MARKER)
    assert [(e.name, e.linkname) for e in entries] == [("n" * 1000, "t" * 700)] * 2
    assert all(len(e.xattrs["user.big"]) == MAX_EXTENDED_HEADER - 64 for e in entries)


def test_honest_extended_headers_still_parse() -> None:
    """What tools write: git archive's leading global header, GNU long names, PAX headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("d/" + "n" * 150)
        info.linkname = "t" * 150
        info.type = tarfile.SYMTYPE
        tar.addfile(info)
    gnu = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "0123abcd"}) as tar:
        info = tarfile.TarInfo("p/" + "q" * 150)
        info.pax_headers = {"SCHILY.xattr.user.a": "1", "mtime": "1600000000.5"}
        tar.addfile(info, io.BytesIO(b""))
    pax = buf.getvalue()
    (link,) = parse(gnu)
    assert (link.name, link.linkname) == ("d/" + "n" * 150, "t" * 150)
    (entry,) = parse(pax)
    assert entry.name == "p/" + "q" * 150
    assert entry.xattrs == {"user.a": b"1"}
    assert entry.mtime_ns == 1_600_000_000_500_000_000


# -- the parser: extended headers combine as in Go ---------------------------------------------


def test_of_two_pax_headers_only_the_last_counts() -> None:
    """As Go's archive/tar (and GNU tar): the second x header replaces the first, so a layer
    cannot show Go-based tools (scanners, containerd) one file and have berthd write another."""
    layer = (extended(b"x", record("path", b"evil") + record("SCHILY.xattr.user.a", b"1"))
             + extended(b"x", record("mtime", b"1600000000")) + member("good", b"x") + END_MARKER)
    (entry,) = parse(layer)
    assert entry.name == "good"
    assert entry.xattrs == {}
    assert entry.mtime_ns == 1_600_000_000 * 10**9


def test_a_gnu_long_name_wins_over_a_pax_path() -> None:
    layer = (extended(b"x", record("path", b"from-pax") + record("linkpath", b"pax-target"))
             + extended(b"L", b"from-gnu\0") + extended(b"K", b"")
             + hostile_layers.raw_header(b"short", b"2", linkname=b"t") + END_MARKER)
    (entry,) = parse(layer)
    # the long name wins; an empty long link changes nothing, so the PAX linkpath stands
    assert (entry.name, entry.linkname) == ("from-gnu", "pax-target")


def test_a_global_header_ends_the_extended_headers_before_it() -> None:
    """Go returns a g header as a member of its own (containerd skips it), so what preceded it
    describes nothing."""
    layer = (extended(b"x", record("path", b"evil")) + extended(b"L", b"evil-too")
             + extended(b"g", record("comment", b"c")) + member("good") + END_MARKER)
    (entry,) = parse(layer)
    assert entry.name == "good"


# -- the applier: layer caps -------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mounts)")


def many_members(count: int) -> bytes:
    return b"".join(member(f"f{i}") for i in range(count)) + END_MARKER


@needs_root
def test_member_count_is_capped(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    apply_tar(io.BytesIO(many_members(100)), str(tmp_path / "ok"), overlay_whiteouts=False,
              limits=LayerLimits(max_entries=100))
    assert len(os.listdir(tmp_path / "ok")) == 100

    (tmp_path / "over").mkdir()
    with pytest.raises(errdefs.ResourceExhausted,
                       match=r"layer has more than 100 entries, the limit for one layer"):
        apply_tar(io.BytesIO(many_members(101)), str(tmp_path / "over"),
                  overlay_whiteouts=False, limits=LayerLimits(max_entries=100))
    assert len(os.listdir(tmp_path / "over")) == 100  # member 101 never touched the disk


@needs_root
def test_entries_that_make_nothing_count_too(tmp_path: Path) -> None:
    """Members that name the root or AUFS metadata write nothing but still cost parsing."""
    nothing = b"".join(hostile_layers.raw_header(name, b"5") for name in (b"./", b".wh..wh.x"))
    with pytest.raises(errdefs.ResourceExhausted, match="more than 10 entries"):
        apply_tar(io.BytesIO(nothing * 6 + END_MARKER), str(tmp_path), overlay_whiteouts=True,
                  limits=LayerLimits(max_entries=10))


def overwritten(size: int, times: int) -> bytes:
    """One file of ``size`` zero bytes written ``times`` times: little on disk, much to read."""
    return member("big", bytes(size)) * times + END_MARKER


@needs_root
def test_expanded_bytes_are_capped(tmp_path: Path) -> None:
    layer = overwritten(MiB, 8)
    apply_tar(io.BytesIO(layer), str(tmp_path), overlay_whiteouts=False,
              limits=LayerLimits(max_expanded_bytes=len(layer)))
    with pytest.raises(errdefs.ResourceExhausted,
                       match=rf"layer expands to more than {4 * MiB} bytes, the configured limit"):
        apply_tar(io.BytesIO(layer), str(tmp_path), overlay_whiteouts=False,
                  limits=LayerLimits(max_expanded_bytes=4 * MiB))


@needs_root
def test_bytes_after_the_end_marker_count(tmp_path: Path) -> None:
    layer = member("f", b"x") + END_MARKER + bytes(8 * MiB)
    with pytest.raises(errdefs.ResourceExhausted, match="expands to more than"):
        apply_tar(io.BytesIO(layer), str(tmp_path), overlay_whiteouts=False,
                  limits=LayerLimits(max_expanded_bytes=4 * MiB))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    target = tmp_path / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(target)],
                   check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_default_cap_is_relative_to_the_file_system(small_fs: Path) -> None:
    """By default the stream may be EXPANSION_FACTOR times the file system's size: 32 MiB here.
    A 4 MiB file written 12 times (48 MiB of stream) fits on the disk but is refused."""
    (small_fs / "ok").mkdir()
    apply_tar(io.BytesIO(overwritten(4 * MiB, 6)), str(small_fs / "ok"), overlay_whiteouts=False)
    (small_fs / "over").mkdir()
    limit = EXPANSION_FACTOR * 16 * MiB
    with pytest.raises(errdefs.ResourceExhausted,
                       match=rf"more than {limit} bytes, {EXPANSION_FACTOR} times the "
                             rf"{16 * MiB}-byte file system it is unpacked onto"):
        apply_tar(io.BytesIO(overwritten(4 * MiB, 12)), str(small_fs / "over"),
                  overlay_whiteouts=False)


def test_limits_from_config() -> None:
    assert LayerLimits.from_config({}) == LayerLimits()
    assert LayerLimits.from_config({"max_layer_entries": 5, "max_layer_expanded_bytes": 7}) == \
        LayerLimits(max_entries=5, max_expanded_bytes=7)
    for bad in ({"max_layer_entries": "5"}, {"max_layer_entries": True},
                {"max_layer_expanded_bytes": 0}, {"max_layer_entries": -1}):
        with pytest.raises(errdefs.InvalidArgument):
            LayerLimits.from_config(bad)


@needs_root
def test_walking_differ_applies_its_limits(tmp_path: Path) -> None:
    layer = many_members(20)
    desc = Descriptor(MEDIA_TYPE_LAYER, sha256_of(layer), len(layer))
    target = tmp_path / "target"
    target.mkdir()
    differ = WalkingDiff(limits=LayerLimits(max_entries=10))
    with pytest.raises(errdefs.ResourceExhausted, match="more than 10 entries"):
        differ.apply(desc, [Mount(type="bind", source=str(target), options=("rbind", "rw"))],
                     lambda _: io.BytesIO(layer))


@needs_root
@pytest.mark.parametrize("content", [b"", b"data"], ids=["empty", "with-content"])
def test_a_failing_member_keeps_its_error(tmp_path: Path, content: bytes) -> None:
    """A member whose metadata cannot be set (an xattr name with a NUL) is refused as such. The
    applier used to close the file's descriptor a second time on the way out, so the error
    became EBADF (found by the PAX flood below; in berthd a second close can hit a descriptor
    another thread has just opened)."""
    layer = (extended(b"x", record("SCHILY.xattr.user.a\0b", b"1"))
             + member("f", content) + END_MARKER)
    with pytest.raises(errdefs.InvalidArgument, match="layer entry 'f': embedded null byte"):
        apply_tar(io.BytesIO(layer), str(tmp_path), overlay_whiteouts=False)


# -- through the real clients against a real berthd -------------------------------------------

SNAPSHOTS_FS = 32 * MiB


@pytest.fixture
def small_berthd(tmp_path: Path) -> Iterator[Berthd]:
    """A berthd whose overlay snapshots live on a 32 MiB tmpfs (its content store does not):
    a layer may expand to 64 MiB there."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = tmp_path / "berthd"
    snapshots = base / "snapshots"
    snapshots.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SNAPSHOTS_FS},mode=0700", "tmpfs",
                    str(snapshots)], check=True)
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.snapshotter.v1.overlayfs"]\n'
                      f'  root_path = "{snapshots}"\n')
    try:
        with Berthd(base, config=str(config)) as daemon:
            yield daemon
    finally:
        unmount_under(str(snapshots))  # also when berthd did not start


def berth_pull(address: str, ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BERTH), "--address", address, "pull", "--plain-http", ref],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=loopback_env({"DOCKER_CONFIG": "/nonexistent"}),
                          stdin=subprocess.DEVNULL)


def chain_ids(diff_ids: list[str]) -> list[str]:
    import hashlib

    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


BASE_LAYER = images.make_tar({"/etc/base.txt": b"the layer below\n"})


def assert_refused_cleanly(c: Ctr, result: subprocess.CompletedProcess[str], message: str,
                           layers: list[bytes], content_before: set[str]) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert re.search(message, result.stderr), result.stderr
    chain = chain_ids([sha256_of(layer) for layer in layers])
    kinds = snapshot_kinds(c)
    assert chain[-1] not in kinds, "the refused layer's snapshot exists"
    assert [k for k, kind in kinds.items() if kind != "Committed"] == [], \
        f"an extraction snapshot was left behind: {kinds}"
    assert active_ingests(c) == {}
    # The content store lost nothing and gained at most the image's own blobs (fetched before
    # the unpack: its layers, manifest and config): the failed apply wrote nothing there.
    blobs = {sha256_of(images.compress(layer, "gzip")) for layer in layers}
    after = content_digests(c)
    assert content_before <= after
    assert len(after - content_before - blobs) <= 2, after - content_before


@pytest.mark.parametrize("client", ["ctr", "berth"])
def test_pull_of_a_layer_expanding_past_its_file_system_fails_cleanly(
        small_berthd: Berthd, registry: Registry, client: str) -> None:
    """96 MiB of stream (a 24 MiB file written four times) from a 100 KB blob, onto a 32 MiB
    file system: refused past 64 MiB, through ctr's Diff.Apply and berthd's own pull."""
    layers = [BASE_LAYER, overwritten(24 * MiB, 4)]
    ref = images.push_layers(registry, f"dos/expand-{client}:{uuid.uuid4().hex[:8]}", layers)
    c = Ctr(small_berthd.address)
    before = content_digests(c)
    if client == "ctr":
        result = c("images", "pull", "--plain-http", ref, check=False)
    else:
        result = berth_pull(small_berthd.address, ref)
    limit = EXPANSION_FACTOR * SNAPSHOTS_FS
    assert_refused_cleanly(c, result, rf"layer expands to more than {limit} bytes, "
                                      rf"{EXPANSION_FACTOR} times the {SNAPSHOTS_FS}-byte file "
                                      "system it is unpacked onto", layers, before)


def vm_hwm(pid: int) -> int:
    """The process's peak resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_pax_flood_layer_is_refused_without_growing_berthd(berthd: Berthd,
                                                            registry: Registry) -> None:
    """A layer of 48 PAX headers of 1 MiB each, every record a distinct xattr, then a file.
    The old parser merged them all for that file: some 170 MiB of heap in berthd. Now it is
    refused at the third header, and berthd's peak memory does not move much."""
    records = records_of(MAX_EXTENDED_HEADER - 4096)
    flood = b"".join(extended(b"x", renamed(records, i))
                     for i in range(48)) + member("victim", b"x") + END_MARKER
    layers = [BASE_LAYER, flood]
    ref = images.push_layers(registry, f"dos/pax-flood:{uuid.uuid4().hex[:8]}", layers)
    # A warm-up pull of an image with a blob as large, so that the ingest's own buffers are
    # already in the peak before it is measured.
    warm = images.push_layers(registry, f"dos/warm:{uuid.uuid4().hex[:8]}",
                              [images.make_tar({"/noise": os.urandom(len(images.compress(
                                  flood, "gzip")))})])
    c = Ctr(berthd.address)
    c("images", "pull", "--plain-http", warm)
    assert berthd.proc is not None
    before_peak = vm_hwm(berthd.proc.pid)
    content_before = content_digests(c)

    result = c("images", "pull", "--plain-http", ref, check=False)

    grown = vm_hwm(berthd.proc.pid) - before_peak
    assert_refused_cleanly(c, result, "extended headers of .* bytes in all before one member, "
                                      f"over the limit of {MAX_PENDING_METADATA} bytes",
                           layers, content_before)
    assert grown < 48 * MiB, f"berthd's peak memory grew by {grown >> 20} MiB"
