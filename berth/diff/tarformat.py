"""The tar format, without I/O: a push parser for reading layers and a header encoder for writing.

:class:`TarParser` takes the archive's bytes in chunks of any size and yields events: a
:class:`TarEntry` for each member, then ``memoryview`` slices of that member's content, and
:data:`END` once the end-of-archive marker has been read. It reads what Go's ``archive/tar`` (and
so containerd) reads:

* ustar, GNU and star headers, base-256 numbers, signed and unsigned header checksums;
* GNU long names and long link names (``L``/``K``);
* PAX extended headers (``x``): ``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime``,
  ``atime`` and ``SCHILY.xattr.*``; global headers (``g``) are read and ignored, as containerd
  ignores them.

Extended headers combine as in Go: of two ``x`` headers before a member only the last counts
(GNU tar reads them so too), a GNU long name or link name wins over a PAX ``path`` or
``linkpath`` (an empty one changes nothing), and a ``g`` header ends whatever extended headers
came before it (Go hands it to the caller as a member of its own, which containerd skips).

The input is untrusted (a registry serves it), so what one member's metadata may cost is
bounded: an extended header's data at :data:`MAX_EXTENDED_HEADER` (Go's limit), the extended
headers in a row before a member at :data:`MAX_EXTENDED_HEADERS`, and their bytes together at
:data:`MAX_PENDING_METADATA`. Each is an ``InvalidArgument`` naming the limit.

Like Go, links, symlinks, devices, fifos and directories carry no content whatever their size
field says. GNU sparse files, multi-volume and other exotic members are refused with
``InvalidArgument``: no image tool produces them. Names are decoded as UTF-8 with
``surrogateescape``, so any byte string round-trips to the file system unchanged.

:func:`encode_header` writes the inverse: a ustar header, preceded by a PAX header when a field
does not fit ustar or when there are extended attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from berth import errdefs
from berth.rootpath import shown

BLOCK = 512

REGULAR = "0"
HARDLINK = "1"
SYMLINK = "2"
CHAR = "3"
BLOCKDEV = "4"
DIRECTORY = "5"
FIFO = "6"

_CONTIGUOUS = "7"
_PAX = "x"
_PAX_GLOBAL = "g"
_GNU_LONGNAME = "L"
_GNU_LONGLINK = "K"

# Only these members have content in the archive (Go's archive/tar treats every other kind as
# header-only, whatever its size field says).
_HAS_CONTENT = frozenset((REGULAR, _CONTIGUOUS))
_KNOWN = frozenset((REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO))

# Go refuses extended headers larger than this (maxSpecialFileSize); so do we, so that a layer
# cannot make us buffer gigabytes of "file name".
MAX_EXTENDED_HEADER = 1 << 20
# Extended headers (x, g, L, K) in a row before one member. An honest writer puts at most one of
# each kind there (git archive's leading g, then x, L, K); the cap makes a layer of nothing but
# extended headers fail at once instead of being parsed, megabyte by megabyte, to its end.
MAX_EXTENDED_HEADERS = 8
# Bytes of extended-header data read for one member, every kind together. This bounds what the
# parser holds for the member to come (PAX records, long name, long link) and the work spent on
# one member's metadata: two of the largest headers Go accepts. Real metadata is far smaller
# (PATH_MAX is 4 KiB; Linux caps an xattr value at 64 KiB).
MAX_PENDING_METADATA = 2 * MAX_EXTENDED_HEADER

PAX_XATTR = "SCHILY.xattr."

_ZERO_BLOCK = bytes(BLOCK)
_EXTENDED_NAMES = {_PAX: "PAX header", _PAX_GLOBAL: "PAX global header",
                   _GNU_LONGNAME: "GNU long name header", _GNU_LONGLINK: "GNU long link header"}
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_PAX_KEYS = frozenset(("path", "linkpath", "size", "uid", "gid", "mtime", "atime"))
_PAX_SPARSE = "GNU.sparse."


@dataclass(slots=True)
class TarEntry:
    """One member, with its extended headers already merged in.

    ``name`` and ``linkname`` are as stored (not cleaned). ``mode`` holds the permission bits
    including setuid, setgid and sticky. Times are nanoseconds since the epoch; ``atime_ns`` is
    None when the archive has none. ``size`` is the number of content bytes that follow (0 for
    every kind but regular files).
    """

    name: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()
"""Yielded once, after the end-of-archive marker (or a clean end of input at a header)."""

Event = TarEntry | memoryview | _End


def _invalid(message: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"invalid layer tar: {message}")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes, what: str) -> int:
    """An octal or base-256 numeric header field."""
    if raw and raw[0] & 0x80:
        # base-256 (GNU): big-endian two's complement with the top bit of byte 0 as a marker.
        value = int.from_bytes(raw, "big") & ~(1 << (8 * len(raw) - 1))
        if raw[0] & 0x40:
            value -= 1 << (8 * len(raw) - 1)
        return value
    text = _cstring(raw).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _invalid(f"bad numeric field {what}: {raw!r}") from None


def _pax_time(raw: bytes) -> int:
    text = raw.decode("ascii", "replace")
    sign = 1
    if text.startswith("-"):
        sign, text = -1, text[1:]
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise _invalid(f"bad PAX time {raw!r}")
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def _pax_records(data: bytes, *, keep: bool = True) -> dict[str, bytes]:
    """Parse ``"<len> <key>=<value>\\n"`` records; values stay raw bytes (xattrs are binary).

    Only the records a member uses are kept (:data:`_PAX_KEYS` and xattrs): a header of a
    hundred thousand tiny records of other keys costs no memory beyond its own bytes. With
    ``keep=False`` (a global header, which describes no member) the records are only checked
    for form; otherwise a GNU sparse record is refused, as sparse members are."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the record block with NULs
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise _invalid("malformed PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _invalid("malformed PAX record length") from None
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise _invalid("malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise _invalid("PAX record without '='")
        if keep:
            name = key.decode("utf-8", "surrogateescape")
            if name in _PAX_KEYS or name.startswith(PAX_XATTR):
                records[name] = value
            elif name.startswith(_PAX_SPARSE):
                raise errdefs.InvalidArgument(
                    "layer tar: unsupported tar member (PAX sparse file)")
        pos = end
    return records


class TarParser:
    """Push parser: :meth:`feed` chunks, act on the events, :meth:`close` at end of input.

    Content slices are views of the chunk just fed: use them before the next call to ``feed``.
    ``offset`` is the number of archive bytes consumed so far (bytes after the end marker are
    counted in ``trailing``, not interpreted).
    """

    def __init__(self) -> None:
        self.offset = 0
        self.trailing = 0
        self.finished = False
        self._pending = bytearray()  # a header block or extended header split across chunks
        self._want = BLOCK  # bytes needed in _pending to go on
        self._data_left = 0  # content bytes of the current member still to yield
        self._skip = 0  # padding bytes still to skip
        self._ext_type = ""  # the extended header whose data is being collected
        self._ext_size = 0
        self._zero_seen = False
        # What the extended headers since the last member said, for the member to come: the
        # last x header's records, the last L and K (empty: none).
        self._pax: dict[str, bytes] = {}
        self._longname = b""
        self._longlink = b""
        # Extended headers since the last member, and their data's bytes (the caps above). A
        # member's header resets them only when they are not zero: one test on the hot path.
        self._ext_count = 0
        self._ext_bytes = 0

    def feed(self, chunk: bytes | memoryview) -> Iterator[Event]:
        view = memoryview(chunk)
        n = len(view)
        pos = 0
        if self.finished:
            self.trailing += n
            return
        while pos < n:
            if self._data_left:
                take = min(self._data_left, n - pos)
                self._data_left -= take
                yield view[pos:pos + take]
                pos += take
                continue
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            # A header block, or the data of an extended header.
            want = self._want
            if not self._pending and n - pos >= want:
                block = view[pos:pos + want]
                pos += want
            else:
                take = min(want - len(self._pending), n - pos)
                self._pending += view[pos:pos + take]
                pos += take
                if len(self._pending) < want:
                    break
                block = memoryview(bytes(self._pending))
                self._pending.clear()
            if self._ext_type:
                self._extended(block.tobytes())
                continue
            event = self._header(block)
            if event is not None:
                yield event
            if self.finished:
                self.offset += pos
                self.trailing += n - pos
                return
        self.offset += n

    def close(self) -> None:
        """Declare the end of input; InvalidArgument if it cut a member short."""
        if self.finished:
            return
        if self._pending or self._data_left or self._skip or self._ext_type:
            raise _invalid("truncated archive (the stream ended inside a member)")
        if self._pax or self._longname or self._longlink:
            raise _invalid("truncated archive (an extended header has no member)")
        # Go accepts input that simply stops at a header boundary (no end marker): so do we.
        self.finished = True

    def _header(self, block: memoryview) -> Event | None:
        if block == _ZERO_BLOCK:
            if self._zero_seen:
                self.finished = True
                return END
            self._zero_seen = True
            return None
        if self._zero_seen:
            raise _invalid("a single zero block inside the archive")
        raw = block.tobytes()
        (name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, version, _uname,
         _gname, devmajor, devminor, prefix) = _HEADER.unpack(raw)
        stored = _number(chksum, "chksum")
        unsigned = sum(raw) - sum(raw[148:156]) + 8 * 0x20
        if stored != unsigned:
            signed = unsigned - 2 * sum(b for b in raw if b & 0x80)
            signed += 2 * sum(b for b in raw[148:156] if b & 0x80)
            if stored != signed:
                raise _invalid(f"header checksum mismatch at offset {self.offset}")
        kind = typeflag.decode("latin-1")
        length = _number(size, "size")
        if length < 0:
            raise _invalid("negative size")

        if kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            # Every cap is checked before the header's data is buffered.
            what = _EXTENDED_NAMES[kind]
            if length > MAX_EXTENDED_HEADER:
                raise _invalid(f"a {what} of {length} bytes is over the limit of "
                               f"{MAX_EXTENDED_HEADER} bytes for one extended header")
            count = self._ext_count + 1
            if count > MAX_EXTENDED_HEADERS:
                raise _invalid(f"more than {MAX_EXTENDED_HEADERS} extended headers in a row "
                               f"before a member (the limit), the last a {what}")
            total = self._ext_bytes + length
            if total > MAX_PENDING_METADATA:
                raise _invalid(f"extended headers of {total} bytes in all before one member, "
                               f"over the limit of {MAX_PENDING_METADATA} bytes (the last a "
                               f"{what} of {length} bytes)")
            self._ext_count = count
            self._ext_bytes = total
            self._ext_type = kind
            self._ext_size = length
            self._want = (length + BLOCK - 1) // BLOCK * BLOCK
            if self._want == 0:
                self._extended(b"")
            return None

        full_name = _cstring(name)
        if magic == b"ustar\0":
            # POSIX ustar; star puts times in the tail of the prefix field and marks it "tar\0".
            pfx = _cstring(prefix[:131] if raw[508:512] == b"tar\0" else prefix)
            if pfx:
                full_name = pfx + b"/" + full_name
        entry = TarEntry(
            name=_decode(full_name),
            type=kind,
            mode=_number(mode, "mode") & 0o7777,
            uid=_number(uid, "uid"),
            gid=_number(gid, "gid"),
            size=length,
            mtime_ns=_number(mtime, "mtime") * 1_000_000_000,
            linkname=_decode(_cstring(linkname)),
            devmajor=_number(devmajor, "devmajor"),
            devminor=_number(devminor, "devminor"),
        )
        if magic == b"ustar " and version == b" \0":
            atime = _number(raw[345:357], "atime")  # GNU keeps atime where ustar has a prefix
            if atime:
                entry.atime_ns = atime * 1_000_000_000
        if self._ext_count:
            self._merge_extended(entry)

        if kind in ("\0", _CONTIGUOUS):
            # Pre-POSIX archives mark directories only with a trailing slash.
            kind = DIRECTORY if kind == "\0" and entry.name.endswith("/") else REGULAR
            entry.type = kind
        elif kind not in _KNOWN:
            what = {"S": "GNU sparse file", "D": "GNU dump directory", "V": "volume label",
                    "M": "multi-volume continuation"}.get(kind, f"type {kind!r}")
            raise errdefs.InvalidArgument(
                f"layer entry {shown(entry.name)}: unsupported tar member ({what})")
        if kind not in _HAS_CONTENT:
            entry.size = 0
        self._data_left = entry.size
        self._skip = -entry.size % BLOCK
        return entry

    def _extended(self, data: bytes) -> None:
        kind, size = self._ext_type, self._ext_size
        self._ext_type = ""
        self._want = BLOCK
        data = data[:size]
        # Each header replaces what an earlier one of its kind said: what is held never grows
        # past one header of each kind (Go and GNU tar read two x headers in a row so too).
        if kind == _PAX:
            self._pax = _pax_records(data)
        elif kind == _GNU_LONGNAME:
            self._longname = _cstring(data)
        elif kind == _GNU_LONGLINK:
            self._longlink = _cstring(data)
        elif kind == _PAX_GLOBAL:
            # Validated and otherwise ignored, as containerd does. Go returns it as a member of
            # its own, so the extended headers before it describe nothing: drop them too.
            _pax_records(data, keep=False)
            self._pax = {}
            self._longname = self._longlink = b""

    def _merge_extended(self, entry: TarEntry) -> None:
        """Give ``entry`` what the extended headers before it said, then forget them. GNU long
        names win over PAX, as in Go; an empty one changes nothing."""
        if self._pax:
            self._merge_pax(entry, self._pax)
            self._pax = {}
        if self._longname:
            entry.name = _decode(self._longname)
            self._longname = b""
        if self._longlink:
            entry.linkname = _decode(self._longlink)
            self._longlink = b""
        self._ext_count = self._ext_bytes = 0

    @staticmethod
    def _merge_pax(entry: TarEntry, pax: Mapping[str, bytes]) -> None:
        for key, value in pax.items():
            if key.startswith(PAX_XATTR):
                entry.xattrs[key[len(PAX_XATTR):]] = value
            elif key not in _PAX_KEYS or not value:
                continue  # an empty value restores the header field (POSIX)
            elif key == "path":
                entry.name = _decode(value)
            elif key == "linkpath":
                entry.linkname = _decode(value)
            elif key in ("mtime", "atime"):
                ns = _pax_time(value)
                if key == "mtime":
                    entry.mtime_ns = ns
                else:
                    entry.atime_ns = ns
            else:
                try:
                    number = int(value)
                except ValueError:
                    raise _invalid(f"bad PAX {key} {value!r}") from None
                if number < 0:
                    raise _invalid(f"negative PAX {key}")
                setattr(entry, key, number)


def _fits_octal(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: str,
           linkname: bytes, devmajor: int, devminor: int) -> bytes:
    header = bytearray(_HEADER.pack(
        name, _octal(mode, 8), _octal(uid, 8), _octal(gid, 8), _octal(size, 12),
        _octal(mtime, 12), b" " * 8, kind.encode("latin-1"), linkname, b"ustar\0", b"00", b"",
        b"", _octal(devmajor, 8), _octal(devminor, 8), b""))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def encode_header(entry: TarEntry) -> bytes:
    """The header block(s) for ``entry``: a ustar block, preceded by a PAX header when a name or
    number does not fit ustar or when there are xattrs. Times are written in whole seconds, as
    containerd's diff writer does. Content and its padding are the caller's to write."""
    if not (_fits_octal(entry.devmajor, 8) and _fits_octal(entry.devminor, 8)):
        raise errdefs.InvalidArgument(
            f"{shown(entry.name)}: device {entry.devmajor}:{entry.devminor} does not fit a tar")
    name = entry.name.encode("utf-8", "surrogateescape")
    link = entry.linkname.encode("utf-8", "surrogateescape")
    mtime = entry.mtime_ns // 1_000_000_000
    records: list[bytes] = []
    if len(name) > 100:
        records.append(_pax_record("path", name))
    if len(link) > 100:
        records.append(_pax_record("linkpath", link))
    numbers = {"uid": (entry.uid, 8), "gid": (entry.gid, 8), "size": (entry.size, 12),
               "mtime": (mtime, 12)}
    for key, (value, width) in numbers.items():
        if not _fits_octal(value, width):
            records.append(_pax_record(key, str(value).encode()))
    for key in sorted(entry.xattrs):
        records.append(_pax_record(PAX_XATTR + key, entry.xattrs[key]))

    def clamp(value: int, width: int) -> int:
        return value if _fits_octal(value, width) else 0

    out = b""
    if records:
        data = b"".join(records)
        pax_name = (b"PaxHeaders/" + name.rstrip(b"/").rsplit(b"/", 1)[-1])[:100]
        out = _block(pax_name, 0o644, 0, 0, len(data), clamp(mtime, 12), _PAX, b"", 0, 0)
        out += data + bytes(-len(data) % BLOCK)
    return out + _block(name[:100], entry.mode & 0o7777, clamp(entry.uid, 8), clamp(entry.gid, 8),
                        clamp(entry.size, 12), clamp(mtime, 12), entry.type, link[:100],
                        entry.devmajor, entry.devminor)


END_OF_ARCHIVE = bytes(2 * BLOCK)
