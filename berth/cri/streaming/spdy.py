"""SPDY/3.1 with no I/O: frames, header compression, and the server side of a connection as
Kubernetes' streaming clients speak it.

kubectl, the kubelet and critest reach the Exec, Attach and PortForward URLs through
moby/spdystream after an HTTP ``Upgrade: SPDY/3.1``. Every frame opens with 8 bytes::

    control  |1| version: 15 | type: 16 |   flags: 8 | length: 24 |   then ``length`` bytes
    data     |0| stream id: 31          |   flags: 8 | length: 24 |   then ``length`` bytes

Control frames carry version 3 and one of the types of :class:`FrameType`. SYN_STREAM,
SYN_REPLY and HEADERS hold a header block (a count, then length-prefixed lower-case names and
values, several values of one name NUL-separated), compressed with zlib primed with
:data:`HEADER_DICTIONARY`. Each direction of a connection is ONE zlib stream: a block may refer
back to every earlier block in that direction, and each ends with a sync flush. So every header
block a peer sends must be inflated, in order, even for a frame that is then ignored.

:class:`FrameReader` cuts bytes (in any chunking) into frames and :class:`FrameWriter` turns
frames into bytes; each owns its direction's zlib context. Bounds, so a peer cannot make us hold
unbounded memory: a control frame may declare at most ``max_control_frame`` bytes (1 MiB) and
its header block inflate to at most ``max_header_block`` bytes (1 MiB) and ``max_header_count``
names; a DATA frame's payload is never buffered but handed on in the pieces the bytes arrived in.
Bytes that are not SPDY/3 (a control frame of another version, DATA with undefined flags or on a
stream never opened) fail fast. Unknown control frame types are skipped.

:class:`ServerConnection` is the server's state machine. The contract for its caller:

- Feed it what the socket gave with :meth:`~ServerConnection.receive_data`; act on the events it
  returns; send what :meth:`~ServerConnection.data_to_send` returns. A :class:`ProtocolError` from
  ``receive_data`` means the connection is dead: a GOAWAY (PROTOCOL_ERROR) is queued, flush it
  and close the socket (events of that last call are dropped).
- Clients open streams (odd ids, increasing; an even, reused or backward id gets RST_STREAM
  PROTOCOL_ERROR, the session lives on, as in spdystream). Answer each :class:`StreamOpened`
  with :meth:`~ServerConnection.reply` at once: spdystream opens streams one at a time and waits
  (30 s in client-go) for each SYN_REPLY, and it drops DATA that precedes the SYN_REPLY, so
  :meth:`~ServerConnection.send_data` refuses to run before the reply.
- A stream is half-closed by FIN from either side: :class:`StreamEnded` is the one signal that
  the client finished (``fin`` on :class:`StreamOpened` and :class:`HeadersReceived` only says
  that a StreamEnded follows); ``send_data(..., fin=True)`` ends ours. After both, or a
  RST_STREAM from either side (:class:`StreamReset`), the stream is gone; sending on it raises
  :class:`StreamClosed`. DATA the client sends after its FIN resets the stream
  (STREAM_ALREADY_CLOSED); frames still in flight for a stream already gone are dropped. A
  client-go session ends with RST_STREAM CANCEL for each stream the client never FIN'd (stdout,
  stderr, error), then GOAWAY: a StreamReset after our own FIN is the normal end.
- No flow control: spdystream neither sends nor honours WINDOW_UPDATE or SETTINGS, so a server
  that waited for a window would deadlock. Sending never waits; incoming WINDOW_UPDATE and
  SETTINGS are ignored. Back-pressure is the caller's (:attr:`~ServerConnection.pending_bytes`).
- PINGs: a client's are odd and answered here (queued) with a :class:`Ping` event; ours are even,
  and the echo comes back as :class:`PingAck`.
- GOAWAY: received (:class:`GoAway`), new streams are refused; sent, new streams are ignored.
  spdystream stops reading at a GOAWAY, so send it last: what follows it is never read.
- A server never opens streams here, and never sends HEADERS: spdystream hands HEADERS to
  ``ReceiveHeader`` through an unbuffered channel, which Kubernetes never reads, so the worker
  carrying that stream's frames would stall until the stream closes.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from berth import errdefs

VERSION = 3
MAX_FRAME_LENGTH = (1 << 24) - 1  # the 24-bit length field; spdystream's MaxDataLength
MAX_CONTROL_FRAME = 1 << 20
MAX_HEADER_BLOCK = 1 << 20
MAX_HEADER_COUNT = 1000  # spdystream 0.5's own limit
MAX_CONCURRENT_STREAMS = 1000
SEND_FRAME_SIZE = 32 << 10  # what client-go's io.Copy writes per DATA frame
MAX_STREAM_ID = 0x7FFFFFFF

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM: the recipient may not send
FLAG_SETTINGS_CLEAR = 0x01


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed common
# header names and values, then a run of status codes, dates and media types. zlib knows it by its
# adler32, e3c6a7c2, which a compressed stream names in its header (FDICT).
HEADER_DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put"
    b"\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept"
    b"\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding"
    b"\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age"
    b"\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control"
    b"\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding"
    b"\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length"
    b"\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range"
    b"\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag"
    b"\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host"
    b"\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match"
    b"\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified"
    b"\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma"
    b"\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization"
    b"\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after"
    b"\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer"
    b"\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent"
    b"\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning"
    b"\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get"
    b"\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version"
    b"\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public"
    b"\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin"
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

_HEAD = struct.Struct(">II")  # both frame kinds: a first word, then flags << 24 | length
_CONTROL_WORD = 0x80000000 | VERSION << 16
_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">II")
_SYN_STREAM = struct.Struct(">IIBB")
_SETTING = struct.Struct(">II")

Buffer = bytes | bytearray | memoryview


class ProtocolError(errdefs.InvalidArgument):
    """The peer broke SPDY/3: bytes that are not SPDY, a frame over the bounds, a header block that
    does not inflate. A session error: the connection that raised it is dead."""


class StreamClosed(errdefs.FailedPrecondition):
    """The stream cannot take what was sent: reset by either side, finished by this side, or never
    opened."""


# -- headers -----------------------------------------------------------------------------------

HeaderInput = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


class Headers(Mapping[str, tuple[str, ...]]):
    """A header block: lower-case names, each with one or more values (kept in order).

    Built from a mapping (a value may be a string or a sequence of strings) or from (name, value)
    pairs; names are lower-cased and repeats merged. Lookups ignore case. :meth:`first` gives a
    name's first value. Text is UTF-8 on the wire; bytes that are not UTF-8 survive a round trip
    as surrogate escapes. InvalidArgument for an empty name, or a NUL in a name or value (NUL
    separates values on the wire).
    """

    __slots__ = ("_items",)

    def __init__(self, source: HeaderInput = ()) -> None:
        merged: dict[str, list[str]] = {}
        pairs: Iterable[tuple[str, str | Sequence[str]]] = (
            source.items() if isinstance(source, Mapping) else source
        )
        for name, value in pairs:
            key = name.lower()
            if not key or "\0" in key:
                raise errdefs.InvalidArgument(f"spdy: invalid header name {name!r}")
            values = [value] if isinstance(value, str) else list(value)
            for item in values:
                if "\0" in item:
                    raise errdefs.InvalidArgument(f"spdy: NUL in a value of header {name!r}")
            merged.setdefault(key, []).extend(values)
        self._items = {key: tuple(values) or ("",) for key, values in merged.items()}

    @classmethod
    def _checked(cls, items: dict[str, tuple[str, ...]]) -> Headers:
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def first(self, name: str, default: str | None = None) -> str | None:
        values = self._items.get(name.lower())
        return values[0] if values else default

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_header_block(headers: Headers) -> bytes:
    """A header block, uncompressed."""
    parts = [_U32.pack(len(headers))]
    for name, values in headers.items():
        raw_name = _wire(name)
        raw_value = b"\0".join(_wire(value) for value in values)
        parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def decode_header_block(raw: bytes, max_count: int = MAX_HEADER_COUNT) -> Headers:
    """Parse an uncompressed header block; ProtocolError unless it is exactly one well-formed
    block: at most ``max_count`` names (and values), non-empty, lower-case, none repeated."""
    if len(raw) < 4:
        raise ProtocolError("spdy: header block shorter than its count")
    (count,) = _U32.unpack_from(raw)
    if count > max_count:
        raise ProtocolError(f"spdy: header block of {count} names (at most {max_count})")
    items: dict[str, tuple[str, ...]] = {}
    pos = 4
    values_left = max_count  # values too: a name's value is NUL-separated values
    for _ in range(count):
        name, pos = _length_prefixed(raw, pos)
        value, pos = _length_prefixed(raw, pos)
        if not name or b"\0" in name or name != name.lower():
            raise ProtocolError(f"spdy: invalid header name {name[:64]!r}")
        key = _text(name)
        if key in items:
            raise ProtocolError(f"spdy: header {key!r} repeated")
        values_left -= value.count(b"\0") + 1
        if values_left < 0:
            raise ProtocolError(f"spdy: header block of more than {max_count} values")
        items[key] = tuple(_text(item) for item in value.split(b"\0"))
    if pos != len(raw):
        raise ProtocolError("spdy: bytes after the header block")
    return Headers._checked(items)


def _length_prefixed(raw: bytes, pos: int) -> tuple[bytes, int]:
    if len(raw) - pos < 4:
        raise ProtocolError("spdy: header block truncated")
    (length,) = _U32.unpack_from(raw, pos)
    pos += 4
    if len(raw) - pos < length:
        raise ProtocolError("spdy: header block truncated")
    return raw[pos : pos + length], pos + length


# -- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    """DATA. From :class:`FrameReader`, one frame's payload may come as several DataFrames, in
    the pieces the bytes arrived in; only the last carries ``fin``."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False
    associated_to: int = 0
    priority: int = 0  # 0 (highest) to 7
    slot: int = 0


@dataclass(frozen=True, slots=True)
class SynReplyFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    clear: bool = False


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int  # 0: the whole session (SPDY/3.1)
    delta: int


Frame = (DataFrame | SynStreamFrame | SynReplyFrame | RstStreamFrame | SettingsFrame | PingFrame
         | GoAwayFrame | HeadersFrame | WindowUpdateFrame)


def data_frame_head(stream_id: int, length: int, fin: bool = False) -> bytes:
    """The 8 bytes that open a DATA frame of ``length`` payload bytes."""
    _check_stream_id(stream_id)
    if not 0 <= length <= MAX_FRAME_LENGTH:
        raise errdefs.InvalidArgument(f"spdy: DATA of {length} bytes (at most {MAX_FRAME_LENGTH})")
    return _HEAD.pack(stream_id, (FLAG_FIN if fin else 0) << 24 | length)


def _check_stream_id(stream_id: int, zero: bool = False) -> None:
    if not (0 if zero else 1) <= stream_id <= MAX_STREAM_ID:
        raise errdefs.InvalidArgument(f"spdy: invalid stream id {stream_id}")


def _control(type_: FrameType, flags: int, *payload: bytes) -> bytes:
    length = sum(len(part) for part in payload)
    if length > MAX_FRAME_LENGTH:
        raise errdefs.InvalidArgument(f"spdy: control frame of {length} bytes")
    return b"".join((_HEAD.pack(_CONTROL_WORD | type_, flags << 24 | length), *payload))


class FrameWriter:
    """Frames to bytes, for one direction of one connection: its zlib context runs across every
    header block it writes, as the peer's one decompressor expects, so frames must be sent in
    the order they were encoded. InvalidArgument for a frame that cannot be sent (a stream id out
    of range, PING 0 or RST_STREAM status 0, which spdystream takes as a broken connection)."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK) -> None:
        self._deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)
        self._max_header_block = max_header_block

    def header_block(self, headers: Headers) -> bytes:
        """``headers`` compressed into this direction's zlib stream, sync-flushed."""
        raw = encode_header_block(headers)
        # Checked before compressing: a refused block must not advance the shared context.
        if len(raw) > self._max_header_block:
            raise errdefs.InvalidArgument(f"spdy: header block of {len(raw)} bytes")
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            return data_frame_head(frame.stream_id, len(frame.data), frame.fin) + frame.data
        if isinstance(frame, SynStreamFrame):
            _check_stream_id(frame.stream_id)
            _check_stream_id(frame.associated_to, zero=True)
            if not 0 <= frame.priority <= 7 or not 0 <= frame.slot <= 255:
                raise errdefs.InvalidArgument("spdy: priority is 0-7, slot 0-255")
            flags = (FLAG_FIN if frame.fin else 0) | (
                FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            fixed = _SYN_STREAM.pack(frame.stream_id, frame.associated_to, frame.priority << 5,
                                     frame.slot)
            return _control(FrameType.SYN_STREAM, flags, fixed, self.header_block(frame.headers))
        if isinstance(frame, SynReplyFrame | HeadersFrame):
            _check_stream_id(frame.stream_id)
            type_ = FrameType.SYN_REPLY if isinstance(frame, SynReplyFrame) else FrameType.HEADERS
            return _control(type_, FLAG_FIN if frame.fin else 0, _U32.pack(frame.stream_id),
                            self.header_block(frame.headers))
        if isinstance(frame, RstStreamFrame):
            _check_stream_id(frame.stream_id)
            if not 0 < frame.status <= 0xFFFFFFFF:
                raise errdefs.InvalidArgument(f"spdy: RST_STREAM status {frame.status}")
            return _control(FrameType.RST_STREAM, 0, _PAIR.pack(frame.stream_id, frame.status))
        if isinstance(frame, SettingsFrame):
            entries = [_SETTING.pack(flags << 24 | id_, value)
                       for flags, id_, value in frame.entries]
            return _control(FrameType.SETTINGS, FLAG_SETTINGS_CLEAR if frame.clear else 0,
                            _U32.pack(len(entries)), *entries)
        if isinstance(frame, PingFrame):
            if not 0 < frame.ping_id <= 0xFFFFFFFF:
                raise errdefs.InvalidArgument(f"spdy: PING id {frame.ping_id}")
            return _control(FrameType.PING, 0, _U32.pack(frame.ping_id))
        if isinstance(frame, GoAwayFrame):
            _check_stream_id(frame.last_good_stream_id, zero=True)
            return _control(FrameType.GOAWAY, 0,
                            _PAIR.pack(frame.last_good_stream_id, frame.status))
        _check_stream_id(frame.stream_id, zero=True)
        return _control(FrameType.WINDOW_UPDATE, 0, _PAIR.pack(frame.stream_id, frame.delta))


class FrameReader:
    """Bytes to frames, for one direction of one connection (its zlib context runs across the
    header blocks it reads).

    :meth:`feed` takes bytes in any chunking and returns the frames they complete, in order.
    A DATA payload is not buffered: each feed hands on the part of it that arrived, as a
    :class:`DataFrame` (zero-length frames come through too). A control frame is held until
    whole, at most ``max_control_frame`` bytes. Unknown control types are skipped. ProtocolError
    for bytes that break SPDY/3; the reader is then dead and raises again on every feed.
    """

    def __init__(self, *, max_control_frame: int = MAX_CONTROL_FRAME,
                 max_header_block: int = MAX_HEADER_BLOCK,
                 max_header_count: int = MAX_HEADER_COUNT,
                 max_data_frame: int = MAX_FRAME_LENGTH) -> None:
        self._max_control = max_control_frame
        self._max_header_block = max_header_block
        self._max_header_count = max_header_count
        self._max_data = max_data_frame
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._buf = bytearray()  # a partial frame head or control frame
        self._control: tuple[int, int, int] | None = None  # type, flags, length: head read
        self._data_stream = 0
        self._data_fin = False
        self._data_left = 0  # payload bytes of the current DATA frame still to come
        self._failed: ProtocolError | None = None

    @property
    def idle(self) -> bool:
        """True between frames. At end of input, False means the peer stopped mid-frame."""
        return not self._buf and self._control is None and not self._data_left

    def feed(self, data: Buffer) -> list[Frame]:
        if self._failed is not None:
            raise ProtocolError(f"spdy: connection already failed: {self._failed}")
        try:
            return self._feed(memoryview(data).cast("B"))
        except ProtocolError as err:
            self._failed = err
            raise

    def _feed(self, view: memoryview) -> list[Frame]:
        frames: list[Frame] = []
        pos, end = 0, len(view)
        while True:
            if self._data_left:
                if pos == end:
                    break
                take = min(self._data_left, end - pos)
                self._data_left -= take
                fin = self._data_fin and not self._data_left
                frames.append(DataFrame(self._data_stream, view[pos : pos + take].tobytes(), fin))
                pos += take
                continue
            if self._control is None:
                head, pos = self._take(view, pos, end, 8)
                if head is None:
                    break
                word, flags_length = _HEAD.unpack_from(head)
                flags, length = flags_length >> 24, flags_length & 0xFFFFFF
                if not word & 0x80000000:
                    self._data_head(frames, word, flags, length)
                    continue
                version = word >> 16 & 0x7FFF
                if version != VERSION:
                    raise ProtocolError(f"spdy: control frame of version {version}, not 3")
                if length > self._max_control:
                    raise ProtocolError(f"spdy: control frame of {length} bytes "
                                        f"(at most {self._max_control})")
                self._control = (word & 0xFFFF, flags, length)
            type_, flags, length = self._control
            payload, pos = self._take(view, pos, end, length)
            if payload is None:
                break
            self._control = None
            frame = self._parse_control(type_, flags, payload)
            if frame is not None:
                frames.append(frame)
        return frames

    def _take(self, view: memoryview, pos: int, end: int,
              size: int) -> tuple[bytes | memoryview | None, int]:
        """``size`` bytes from the partial buffer and then ``view``, or None (what there was is
        kept) if they have not all arrived yet."""
        if not self._buf and end - pos >= size:
            return view[pos : pos + size], pos + size
        chunk = view[pos : pos + size - len(self._buf)]
        self._buf += chunk
        pos += len(chunk)
        if len(self._buf) < size:
            return None, pos
        whole = bytes(self._buf)
        self._buf.clear()
        return whole, pos

    def _data_head(self, frames: list[Frame], stream_id: int, flags: int, length: int) -> None:
        if flags & ~FLAG_FIN:
            raise ProtocolError(f"spdy: DATA with undefined flags {flags:#04x} (not SPDY/3?)")
        if stream_id == 0:
            raise ProtocolError("spdy: DATA on stream 0")
        if length > self._max_data:
            raise ProtocolError(f"spdy: DATA of {length} bytes (at most {self._max_data})")
        if length == 0:
            frames.append(DataFrame(stream_id, b"", bool(flags & FLAG_FIN)))
            return
        self._data_stream, self._data_left = stream_id, length
        self._data_fin = bool(flags & FLAG_FIN)

    def _headers(self, compressed: bytes | memoryview) -> Headers:
        try:
            raw = self._inflate.decompress(compressed, self._max_header_block + 1)
        except zlib.error as err:
            raise ProtocolError(f"spdy: header block does not inflate: {err}") from None
        if len(raw) > self._max_header_block or self._inflate.unconsumed_tail:
            raise ProtocolError(f"spdy: header block inflates past {self._max_header_block} bytes")
        if self._inflate.eof:
            raise ProtocolError("spdy: the peer ended its header compression stream")
        return decode_header_block(raw, self._max_header_count)

    def _parse_control(self, type_: int, flags: int, payload: bytes | memoryview) -> Frame | None:
        length = len(payload)
        fin = bool(flags & FLAG_FIN)
        if type_ == FrameType.SYN_STREAM:
            if length < _SYN_STREAM.size:
                raise ProtocolError(f"spdy: SYN_STREAM of {length} bytes")
            stream_id, associated, priority, slot = _SYN_STREAM.unpack_from(payload)
            headers = self._headers(payload[_SYN_STREAM.size :])
            stream_id &= MAX_STREAM_ID
            if stream_id == 0:
                raise ProtocolError("spdy: SYN_STREAM for stream 0")
            return SynStreamFrame(stream_id, headers, fin, bool(flags & FLAG_UNIDIRECTIONAL),
                                  associated & MAX_STREAM_ID, priority >> 5, slot)
        if type_ in (FrameType.SYN_REPLY, FrameType.HEADERS):
            if length < 4:
                raise ProtocolError(f"spdy: {FrameType(type_).name} of {length} bytes")
            headers = self._headers(payload[4:])
            stream_id = _U32.unpack_from(payload)[0] & MAX_STREAM_ID
            if stream_id == 0:
                raise ProtocolError(f"spdy: {FrameType(type_).name} for stream 0")
            if type_ == FrameType.SYN_REPLY:
                return SynReplyFrame(stream_id, headers, fin)
            return HeadersFrame(stream_id, headers, fin)
        if type_ == FrameType.SETTINGS:
            if length < 4 or (length - 4) % 8 or _U32.unpack_from(payload)[0] != (length - 4) // 8:
                raise ProtocolError(f"spdy: SETTINGS of {length} bytes")
            entries = tuple((key >> 24, key & 0xFFFFFF, value)
                            for key, value in _SETTING.iter_unpack(payload[4:]))
            return SettingsFrame(entries, bool(flags & FLAG_SETTINGS_CLEAR))
        if type_ == FrameType.PING:
            if length != 4:
                raise ProtocolError(f"spdy: PING of {length} bytes")
            return PingFrame(_U32.unpack_from(payload)[0])
        if type_ in (FrameType.RST_STREAM, FrameType.GOAWAY, FrameType.WINDOW_UPDATE):
            if length != 8:
                raise ProtocolError(f"spdy: {FrameType(type_).name} of {length} bytes")
            first, second = _PAIR.unpack_from(payload)
            first &= MAX_STREAM_ID
            if type_ == FrameType.GOAWAY:
                return GoAwayFrame(first, second)
            if type_ == FrameType.WINDOW_UPDATE:
                return WindowUpdateFrame(first, second & MAX_STREAM_ID)
            if first == 0:
                raise ProtocolError("spdy: RST_STREAM for stream 0")
            return RstStreamFrame(first, second)
        return None  # NOOP (SPDY/2), CREDENTIAL, anything newer: skipped, as the draft asks


# -- the server's connection -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The client opened a stream (SYN_STREAM). Answer with :meth:`ServerConnection.reply`
    (or reset it); ``unidirectional``: the client will not take data on it (no reply either)."""

    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The client sent FIN: nothing more will come on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone. ``remote``: the client sent RST_STREAM with ``status``; otherwise this
    side reset it (already queued) because the client broke the protocol on it."""

    stream_id: int
    status: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    """The client pinged; the echo is already queued."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingAck:
    """The echo of a :meth:`ServerConnection.ping`."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    """The client is going away: it accepted streams up to ``last_good_stream_id``."""

    last_good_stream_id: int
    status: int


Event = (StreamOpened | StreamData | StreamEnded | StreamReset | HeadersReceived | Ping | PingAck
         | GoAway)


@dataclass(slots=True)
class _Stream:
    replied: bool = False
    local_closed: bool = False  # we sent FIN
    remote_closed: bool = False  # the client sent FIN


class _Events:
    """Events of one ``receive_data``, with adjacent data of one stream joined."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._stream = 0
        self._pieces: list[bytes] = []

    def data(self, stream_id: int, piece: bytes) -> None:
        if self._pieces and stream_id != self._stream:
            self._flush()
        self._stream = stream_id
        self._pieces.append(piece)

    def add(self, event: Event) -> None:
        self._flush()
        self.events.append(event)

    def _flush(self) -> None:
        if self._pieces:
            self.events.append(StreamData(self._stream, b"".join(self._pieces)))
            self._pieces = []

    def done(self) -> list[Event]:
        self._flush()
        return self.events


class ServerConnection:
    """The server side of one SPDY/3.1 connection; the module docstring states the contract.

    Not thread-safe: one task feeds it and calls its methods.
    """

    def __init__(self, *, max_control_frame: int = MAX_CONTROL_FRAME,
                 max_header_block: int = MAX_HEADER_BLOCK,
                 max_header_count: int = MAX_HEADER_COUNT,
                 max_data_frame: int = MAX_FRAME_LENGTH,
                 max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
                 send_frame_size: int = SEND_FRAME_SIZE) -> None:
        if not 0 < send_frame_size <= MAX_FRAME_LENGTH:
            raise errdefs.InvalidArgument(f"spdy: send_frame_size {send_frame_size}")
        self._reader = FrameReader(max_control_frame=max_control_frame,
                                   max_header_block=max_header_block,
                                   max_header_count=max_header_count,
                                   max_data_frame=max_data_frame)
        self._writer = FrameWriter(max_header_block)
        self._max_streams = max_concurrent_streams
        self._send_frame_size = send_frame_size
        self._streams: dict[int, _Stream] = {}
        self._last_seen = 0  # highest stream id of a SYN_STREAM taken in order
        self._last_accepted = 0
        self._next_ping = 2
        self._pings: set[int] = set()
        self._goaway_sent = False
        self._goaway_received = False
        self._failed: ProtocolError | None = None
        self._out: deque[bytes | memoryview] = deque()
        self._out_len = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def streams(self) -> frozenset[int]:
        """Streams not yet gone (neither reset nor finished both ways)."""
        return frozenset(self._streams)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for :meth:`data_to_send`."""
        return self._out_len

    @property
    def goaway_received(self) -> bool:
        return self._goaway_received

    @property
    def goaway_sent(self) -> bool:
        return self._goaway_sent

    @property
    def failed(self) -> bool:
        return self._failed is not None

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[Event]:
        """The events ``data`` completes. ProtocolError: the connection is dead (see above)."""
        if self._failed is not None:
            raise ProtocolError(f"spdy: connection already failed: {self._failed}")
        events = _Events()
        try:
            for frame in self._reader.feed(data):
                self._handle(frame, events)
        except ProtocolError as err:
            self._fail(err)
            raise
        return events.done()

    def _handle(self, frame: Frame, events: _Events) -> None:
        if isinstance(frame, DataFrame):
            stream = self._receiving(frame.stream_id, "DATA", events)
            if stream is not None:
                if frame.data:
                    events.data(frame.stream_id, frame.data)
                if frame.fin:
                    self._remote_fin(frame.stream_id, stream, events)
        elif isinstance(frame, SynStreamFrame):
            self._syn_stream(frame, events)
        elif isinstance(frame, HeadersFrame):
            stream = self._receiving(frame.stream_id, "HEADERS", events)
            if stream is not None:
                events.add(HeadersReceived(frame.stream_id, frame.headers, frame.fin))
                if frame.fin:
                    self._remote_fin(frame.stream_id, stream, events)
        elif isinstance(frame, RstStreamFrame):
            if self._streams.pop(frame.stream_id, None) is not None:
                events.add(StreamReset(frame.stream_id, frame.status))
        elif isinstance(frame, PingFrame):
            if frame.ping_id % 2:
                self._queue(self._writer.encode(frame))
                events.add(Ping(frame.ping_id))
            elif frame.ping_id in self._pings:  # an even ping we did not send is ignored
                self._pings.discard(frame.ping_id)
                events.add(PingAck(frame.ping_id))
        elif isinstance(frame, GoAwayFrame):
            self._goaway_received = True
            events.add(GoAway(frame.last_good_stream_id, frame.status))
        elif isinstance(frame, SynReplyFrame):
            # This server opens no streams, so a SYN_REPLY answers nothing.
            if self._streams.pop(frame.stream_id, None) is not None:
                self._queue_reset(frame.stream_id, RstStatus.PROTOCOL_ERROR)
                events.add(StreamReset(frame.stream_id, RstStatus.PROTOCOL_ERROR, remote=False))
            else:
                self._queue_reset(frame.stream_id, RstStatus.INVALID_STREAM)
        # SETTINGS, WINDOW_UPDATE: no flow control here (nor in spdystream).

    def _syn_stream(self, frame: SynStreamFrame, events: _Events) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == 0 or stream_id <= self._last_seen:
            if self._goaway_sent:
                return
            # Even, reused or out of order: refused, as spdystream does, without killing the
            # session; a stream already open under that id is reset with it.
            if self._streams.pop(stream_id, None) is not None:
                events.add(StreamReset(stream_id, RstStatus.PROTOCOL_ERROR, remote=False))
            self._queue_reset(stream_id, RstStatus.PROTOCOL_ERROR)
            return
        self._last_seen = stream_id
        if self._goaway_sent:
            return  # the draft: after GOAWAY, new streams are ignored
        if self._goaway_received or len(self._streams) >= self._max_streams:
            self._queue_reset(stream_id, RstStatus.REFUSED_STREAM)
            return
        # Unidirectional: the client takes nothing on it, not even a SYN_REPLY.
        stream = _Stream(replied=frame.unidirectional, local_closed=frame.unidirectional)
        self._streams[stream_id] = stream
        self._last_accepted = stream_id
        events.add(StreamOpened(stream_id, frame.headers, frame.fin, frame.unidirectional))
        if frame.fin:
            self._remote_fin(stream_id, stream, events)

    def _receiving(self, stream_id: int, what: str, events: _Events) -> _Stream | None:
        """The stream a DATA or HEADERS frame may be taken on, or None (frame dropped)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id % 2 == 0 or stream_id > self._last_seen:
                # Garbage that looks like DATA lands here: fail fast, not on the next frame.
                raise ProtocolError(f"spdy: {what} on stream {stream_id}, never opened")
            return None  # reset, refused or finished: frames still in flight
        if stream.remote_closed:
            del self._streams[stream_id]
            self._queue_reset(stream_id, RstStatus.STREAM_ALREADY_CLOSED)
            events.add(StreamReset(stream_id, RstStatus.STREAM_ALREADY_CLOSED, remote=False))
            return None
        return stream

    def _remote_fin(self, stream_id: int, stream: _Stream, events: _Events) -> None:
        stream.remote_closed = True
        events.add(StreamEnded(stream_id))
        if stream.local_closed:
            del self._streams[stream_id]

    def _fail(self, err: ProtocolError) -> None:
        self._failed = err
        self._streams.clear()
        if not self._goaway_sent:
            self._goaway_sent = True
            self._queue(self._writer.encode(
                GoAwayFrame(self._last_accepted, GoAwayStatus.PROTOCOL_ERROR)))

    # -- output --------------------------------------------------------------------------------

    def reply(self, stream_id: int, headers: HeaderInput = (), *, fin: bool = False) -> None:
        """Accept a client's stream (SYN_REPLY), once. Kubernetes replies with no headers."""
        stream = self._sending(stream_id)
        if stream.replied:
            raise errdefs.FailedPrecondition(f"spdy: stream {stream_id} already replied")
        block = headers if isinstance(headers, Headers) else Headers(headers)
        self._queue(self._writer.encode(SynReplyFrame(stream_id, block, fin)))
        stream.replied = True
        if fin:
            self._local_fin(stream_id, stream)

    def send_data(self, stream_id: int, data: Buffer, *, fin: bool = False) -> None:
        """Queue ``data`` on a replied stream, in DATA frames of at most ``send_frame_size``;
        ``fin`` ends this side of the stream (empty ``data`` with ``fin``: just the FIN). Never
        waits: there is no flow control."""
        stream = self._sending(stream_id)
        if not stream.replied:
            raise errdefs.FailedPrecondition(
                f"spdy: stream {stream_id}: reply before sending data (spdystream drops DATA "
                "that precedes the SYN_REPLY)")
        view = memoryview(data if isinstance(data, bytes) else bytes(data)).cast("B")
        size = self._send_frame_size
        for start in range(0, len(view), size):
            chunk = view[start : start + size]
            last = start + size >= len(view)
            self._queue(data_frame_head(stream_id, len(chunk), fin and last))
            self._queue(chunk)
        if fin:
            if not view:
                self._queue(data_frame_head(stream_id, 0, True))
            self._local_fin(stream_id, stream)

    def reset(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        """Reset a stream (RST_STREAM); nothing more is sent or taken on it. A stream already gone
        is left alone, so a reset racing the client's own is harmless."""
        if not 0 < status <= 0xFFFFFFFF:
            raise errdefs.InvalidArgument(f"spdy: RST_STREAM status {status}")
        if self._streams.pop(stream_id, None) is not None:
            self._queue_reset(stream_id, status)

    def ping(self, ping_id: int | None = None) -> int:
        """Queue a PING (ours are even: the next one unless ``ping_id`` is given); returns its id.
        Its echo arrives as :class:`PingAck`."""
        if ping_id is None:
            ping_id = self._next_ping
            self._next_ping = ping_id + 2 if ping_id < MAX_STREAM_ID - 1 else 2
        elif ping_id % 2 or not 0 < ping_id <= 0xFFFFFFFF:
            raise errdefs.InvalidArgument(f"spdy: a server's PING id is even and > 0: {ping_id}")
        self._queue(self._writer.encode(PingFrame(ping_id)))
        self._pings.add(ping_id)
        return ping_id

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        """Queue a GOAWAY naming the last stream accepted; from then on new streams are ignored.
        Only the first call sends. spdystream reads nothing after it: send it last."""
        if not self._goaway_sent:
            self._goaway_sent = True
            self._queue(self._writer.encode(GoAwayFrame(self._last_accepted, status)))

    def data_to_send(self, limit: int | None = None) -> bytes:
        """The queued bytes (at most ``limit`` of them), in order; they leave the queue."""
        if limit is None or limit >= self._out_len:
            out = b"".join(self._out)
            self._out.clear()
            self._out_len = 0
            return out
        parts: list[bytes | memoryview] = []
        taken = 0
        while taken < limit:
            piece = self._out.popleft()
            room = limit - taken
            if len(piece) > room:
                self._out.appendleft(piece[room:])
                piece = piece[:room]
            parts.append(piece)
            taken += len(piece)
        self._out_len -= taken
        return b"".join(parts)

    def _sending(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosed(f"spdy: stream {stream_id} is not open (reset, finished or never "
                               "opened)")
        if stream.local_closed:
            raise StreamClosed(f"spdy: stream {stream_id} already ended on this side")
        return stream

    def _local_fin(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self._streams[stream_id]

    def _queue_reset(self, stream_id: int, status: int) -> None:
        self._queue(self._writer.encode(RstStreamFrame(stream_id, status)))

    def _queue(self, data: bytes | memoryview) -> None:
        self._out.append(data)
        self._out_len += len(data)
