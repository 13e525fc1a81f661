"""The sans-IO SPDY/3.1 core (berth.cri.streaming.spdy), fed scripted bytes both ways.

Most client bytes come from :class:`SpecPeer`, a client written here from the SPDY/3 draft with
``struct`` and ``zlib`` (its dictionary rebuilt from the draft's word list), which shares no code
with the module, so the codec is not only checked against itself. What the server sends is read
back by the same peer, the way spdystream reads it: one inflater for the whole connection, each
header block consumed exactly.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence

import pytest

from berth import errdefs
from berth.cri.streaming import spdy

# -- an independent peer, from the draft -------------------------------------------------------

_WORDS = [  # the draft's names and values, each to be length-prefixed
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
    "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
    "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
    "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
    "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
    "public", "set-cookie", "keep-alive", "origin"
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
SPEC_DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
Pairs = Sequence[tuple[bytes, bytes]]


def raw_block(pairs: Pairs) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


class SpecPeer:
    """A SPDY/3 client from the draft: frames packed by hand, one zlib context per direction."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(zdict=SPEC_DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=SPEC_DICTIONARY)
        self.blocks: list[bytes] = []  # compressed header blocks sent, in order

    def block(self, pairs: Pairs) -> bytes:
        out = self.deflate.compress(raw_block(pairs)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.blocks.append(out)
        return out

    @staticmethod
    def control(type_: int, flags: int, payload: bytes, version: int = 3) -> bytes:
        return struct.pack(">HHI", 0x8000 | version, type_, flags << 24 | len(payload)) + payload

    def syn_stream(self, stream_id: int, pairs: Pairs = (), flags: int = 0) -> bytes:
        fixed = struct.pack(">IIBB", stream_id, 0, 0, 0)
        return self.control(SYN_STREAM, flags, fixed + self.block(pairs))

    def headers(self, stream_id: int, pairs: Pairs, flags: int = 0) -> bytes:
        return self.control(HEADERS, flags, struct.pack(">I", stream_id) + self.block(pairs))

    def syn_reply(self, stream_id: int, pairs: Pairs = ()) -> bytes:
        return self.control(SYN_REPLY, 0, struct.pack(">I", stream_id) + self.block(pairs))

    @staticmethod
    def data(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
        return struct.pack(">II", stream_id, (1 << 24 if fin else 0) | len(payload)) + payload

    def rst(self, stream_id: int, status: int) -> bytes:
        return self.control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self.control(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_good: int, status: int = 0) -> bytes:
        return self.control(GOAWAY, 0, struct.pack(">II", last_good, status))

    def window_update(self, stream_id: int, delta: int) -> bytes:
        return self.control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))

    def settings(self, entries: Sequence[tuple[int, int]]) -> bytes:
        body = struct.pack(">I", len(entries))
        body += b"".join(struct.pack(">II", id_, value) for id_, value in entries)
        return self.control(SETTINGS, 0, body)

    def parse(self, wire: bytes) -> list[tuple[object, ...]]:
        """Whole frames the server sent, as tuples; header blocks inflated exactly."""
        frames: list[tuple[object, ...]] = []
        pos = 0
        while pos < len(wire):
            first, flags_length = struct.unpack_from(">II", wire, pos)
            flags, length = flags_length >> 24, flags_length & 0xFFFFFF
            payload = wire[pos + 8 : pos + 8 + length]
            assert len(payload) == length, "truncated frame"
            pos += 8 + length
            if not first & 0x80000000:
                frames.append(("DATA", first, flags, payload))
                continue
            assert first >> 16 == 0x8003, "not a SPDY/3 control frame"
            type_ = first & 0xFFFF
            if type_ in (SYN_REPLY, HEADERS):
                (stream_id,) = struct.unpack_from(">I", payload)
                frames.append((type_, stream_id, flags, self.inflate_block(payload[4:])))
            elif type_ == PING:
                assert flags == 0 and length == 4
                frames.append(("PING", *struct.unpack(">I", payload)))
            elif type_ in (RST_STREAM, GOAWAY):
                assert flags == 0 and length == 8
                frames.append(("RST" if type_ == RST_STREAM else "GOAWAY",
                               *struct.unpack(">II", payload)))
            else:
                raise AssertionError(f"unexpected control frame {type_}")
        return frames

    def inflate_block(self, compressed: bytes) -> dict[bytes, list[bytes]]:
        raw = self.inflate.decompress(compressed)
        assert not self.inflate.unconsumed_tail and not self.inflate.eof
        (count,) = struct.unpack_from(">I", raw)
        pos, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4 : pos + 4 + n]
            pos += 4 + n
            (n,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4 : pos + 4 + n]
            pos += 4 + n
            assert name == name.lower() and name not in out
            out[name] = value.split(b"\0")
        assert pos == len(raw), "a header block must be consumed exactly, as spdystream checks"
        return out


def payloads(frames: Sequence[tuple[object, ...]]) -> list[bytes]:
    """The payloads of parsed DATA frames."""
    return [frame[3] for frame in frames if frame[0] == "DATA" and isinstance(frame[3], bytes)]


def coalesce(events: Sequence[spdy.Event]) -> list[spdy.Event]:
    out: list[spdy.Event] = []
    for event in events:
        last = out[-1] if out else None
        if (isinstance(event, spdy.StreamData) and isinstance(last, spdy.StreamData)
                and last.stream_id == event.stream_id):
            out[-1] = spdy.StreamData(event.stream_id, last.data + event.data)
        else:
            out.append(event)
    return out


def opened(peer: SpecPeer, *stream_ids: int, replied: bool = True) -> spdy.ServerConnection:
    conn = spdy.ServerConnection()
    for stream_id in stream_ids:
        events = conn.receive_data(peer.syn_stream(stream_id, [(b"streamtype", b"stdout")]))
        assert events == [spdy.StreamOpened(stream_id, spdy.Headers({"streamtype": "stdout"}))]
        if replied:
            conn.reply(stream_id)
    if replied:
        assert [f[:2] for f in peer.parse(conn.data_to_send())] == [
            (SYN_REPLY, stream_id) for stream_id in stream_ids]
    return conn


# -- the dictionary and header compression -----------------------------------------------------


def test_dictionary_is_the_drafts_with_its_zlib_id() -> None:
    assert len(spdy.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdy.HEADER_DICTIONARY) == 0xE3C6A7C2
    assert spdy.HEADER_DICTIONARY == SPEC_DICTIONARY


def test_server_blocks_name_the_dictionary_and_share_one_context() -> None:
    peer = SpecPeer()
    conn = opened(SpecPeer(), 1, 3, 5, replied=False)
    headers = {"streamtype": "stdout", "requestid": "0", "x-berth-long": "ab" * 40}
    for stream_id in (1, 3, 5):
        conn.reply(stream_id, headers)
    wire = conn.data_to_send()
    blocks, pos = [], 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">I", wire, pos + 4)
        blocks.append(wire[pos + 12 : pos + 8 + length])
        pos += 8 + length
    # The zlib header: FDICT set, DICTID e3c6a7c2.
    assert blocks[0][1] & 0x20 and blocks[0][2:6] == bytes.fromhex("e3c6a7c2")
    # Later blocks lean on the earlier ones: smaller, and meaningless without them.
    assert len(blocks[1]) < len(blocks[0]) // 2
    fresh = zlib.decompressobj(wbits=-15, zdict=SPEC_DICTIONARY)
    try:
        alone = fresh.decompress(blocks[1])
    except zlib.error:
        alone = None
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert alone is None or alone != raw_block(pairs)
    expected = {name: [value] for name, value in pairs}
    # Read with one context across the connection, each decodes.
    assert [frame[3] for frame in peer.parse(wire)] == [expected] * 3


def test_client_blocks_decode_only_with_the_shared_context() -> None:
    peer = SpecPeer()
    pairs = [(b"streamtype", b"data"), (b"port", b"8080"), (b"requestid", b"7")]
    first, second = peer.syn_stream(1, pairs), peer.syn_stream(3, pairs)
    assert len(peer.blocks[1]) < len(peer.blocks[0]) // 2
    conn = spdy.ServerConnection()
    events = conn.receive_data(first + second)
    want = spdy.Headers({"streamtype": "data", "port": "8080", "requestid": "7"})
    assert events == [spdy.StreamOpened(1, want), spdy.StreamOpened(3, want)]
    # The second block on a connection that never saw the first does not decode.
    with pytest.raises(spdy.ProtocolError, match="inflate"):
        spdy.ServerConnection().receive_data(second)


def test_headers_are_lower_case_on_the_wire_and_looked_up_in_any_case() -> None:
    peer = SpecPeer()
    conn = spdy.ServerConnection()
    [event] = conn.receive_data(peer.syn_stream(1, [(b"streamtype", b"stdin"),
                                                   (b"x-multi", b"a\0b\0c")]))
    assert isinstance(event, spdy.StreamOpened)
    assert event.headers["StreamType"] == ("stdin",)
    assert event.headers.first("STREAMTYPE") == "stdin"
    assert event.headers["x-multi"] == ("a", "b", "c")
    assert event.headers.first("missing") is None and "Missing" not in event.headers
    conn.reply(1, [("X-Reply", "one"), ("x-reply", "two"), ("Other", "")])
    [(_, _, _, block)] = peer.parse(conn.data_to_send())
    assert block == {b"x-reply": [b"one", b"two"], b"other": [b""]}


def test_headers_refuse_what_the_wire_cannot_carry() -> None:
    with pytest.raises(errdefs.InvalidArgument):
        spdy.Headers({"a": "b\0c"})
    with pytest.raises(errdefs.InvalidArgument):
        spdy.Headers({"": "x"})
    assert spdy.Headers({"A": ["1", "2"]}) == {"a": ("1", "2")}


def test_bad_header_blocks_from_the_peer_are_protocol_errors() -> None:
    for pairs in ([(b"StreamType", b"x")], [(b"a", b"1"), (b"a", b"2")], [(b"", b"x")]):
        with pytest.raises(spdy.ProtocolError):
            spdy.ServerConnection().receive_data(SpecPeer().syn_stream(1, pairs))
    # A header bomb: 2 MiB that compresses to a few KiB.
    with pytest.raises(spdy.ProtocolError, match="inflates past"):
        spdy.ServerConnection().receive_data(
            SpecPeer().syn_stream(1, [(b"x", b"a" * (2 << 20))]))
    too_many = [(b"h%d" % i, b"") for i in range(spdy.MAX_HEADER_COUNT + 1)]
    with pytest.raises(spdy.ProtocolError, match="names"):
        spdy.ServerConnection().receive_data(SpecPeer().syn_stream(1, too_many))


# -- the codec ---------------------------------------------------------------------------------


def test_every_frame_type_round_trips_and_unknown_controls_are_skipped() -> None:
    h = spdy.Headers({"streamtype": "error"})
    frames: list[spdy.Frame] = [
        spdy.SynStreamFrame(1, h, fin=True, unidirectional=True, associated_to=0, priority=7,
                            slot=1),
        spdy.SynReplyFrame(1, spdy.Headers(), fin=True),
        spdy.HeadersFrame(1, h),
        spdy.RstStreamFrame(3, spdy.RstStatus.CANCEL),
        spdy.SettingsFrame(((1, 7, 65536), (0, 4, 100)), clear=True),
        spdy.PingFrame(0xFFFFFFFF),
        spdy.GoAwayFrame(5, spdy.GoAwayStatus.INTERNAL_ERROR),
        spdy.WindowUpdateFrame(0, 1 << 20),
        spdy.DataFrame(9, b"payload", fin=True),
        spdy.DataFrame(9, b""),
    ]
    writer, reader = spdy.FrameWriter(), spdy.FrameReader()
    wire = b"".join(writer.encode(frame) for frame in frames)
    noop = SpecPeer.control(5, 0, b"") + SpecPeer.control(10, 0, b"credential" * 100)
    assert reader.feed(noop + wire + noop) == frames and reader.idle


def test_spec_peer_frames_decode_and_writer_frames_parse_by_the_spec() -> None:
    peer = SpecPeer()
    wire = (peer.syn_stream(3, [(b"port", b"80")], flags=1) + peer.rst(3, 5) + peer.ping(7)
            + peer.goaway(3, 1) + peer.window_update(3, 10) + peer.settings([(7, 1)])
            + peer.data(3, b"abc", fin=True))
    assert spdy.FrameReader().feed(wire) == [
        spdy.SynStreamFrame(3, spdy.Headers({"port": "80"}), fin=True),
        spdy.RstStreamFrame(3, 5), spdy.PingFrame(7), spdy.GoAwayFrame(3, 1),
        spdy.WindowUpdateFrame(3, 10), spdy.SettingsFrame(((0, 7, 1),)),
        spdy.DataFrame(3, b"abc", fin=True)]
    writer = spdy.FrameWriter()
    out = (writer.encode(spdy.SynReplyFrame(3, spdy.Headers({"a": "b"}), fin=True))
           + writer.encode(spdy.RstStreamFrame(3, 2)) + writer.encode(spdy.PingFrame(8))
           + writer.encode(spdy.GoAwayFrame(3)) + writer.encode(spdy.DataFrame(3, b"x", True)))
    assert peer.parse(out) == [(SYN_REPLY, 3, 1, {b"a": [b"b"]}), ("RST", 3, 2), ("PING", 8),
                               ("GOAWAY", 3, 0), ("DATA", 3, 1, b"x")]


def test_writer_refuses_frames_spdystream_would_die_on() -> None:
    writer = spdy.FrameWriter()
    for frame in (spdy.PingFrame(0), spdy.RstStreamFrame(1, 0), spdy.DataFrame(0, b""),
                  spdy.SynReplyFrame(1 << 31, spdy.Headers())):
        with pytest.raises(errdefs.InvalidArgument):
            writer.encode(frame)
    with pytest.raises(errdefs.InvalidArgument):
        spdy.data_frame_head(1, spdy.MAX_FRAME_LENGTH + 1)


def test_frames_split_at_every_byte_boundary_parse_identically() -> None:
    peer = SpecPeer()
    wire = b"".join([
        peer.syn_stream(1, [(b"streamtype", b"error")]),
        peer.syn_stream(3, [(b"streamtype", b"stdin")]),
        peer.data(3, b"hello "), peer.settings([(7, 65536)]), peer.window_update(3, 1000),
        peer.ping(1), SpecPeer.control(10, 0, b"skip me"), peer.data(3, b"world"),
        peer.headers(1, [(b"x-extra", b"1")]), peer.data(1, b"", fin=True),
        peer.syn_stream(5, [(b"streamtype", b"resize")], flags=1), peer.data(3, b"!", fin=True),
        peer.syn_stream(2, []), peer.rst(5, 5), peer.ping(3), peer.goaway(5, 0),
    ])

    def run(chunks: list[bytes]) -> tuple[list[spdy.Event], bytes]:
        conn = spdy.ServerConnection()
        events: list[spdy.Event] = []
        for chunk in chunks:
            events += conn.receive_data(chunk)
        return coalesce(events), conn.data_to_send()

    whole = run([wire])
    assert [type(e).__name__ for e in whole[0]] == [
        "StreamOpened", "StreamOpened", "StreamData", "Ping", "StreamData", "HeadersReceived",
        "StreamEnded", "StreamOpened", "StreamEnded", "StreamData", "StreamEnded", "StreamReset",
        "Ping", "GoAway"]
    assert SpecPeer().parse(whole[1]) == [("PING", 1), ("RST", 2, 1), ("PING", 3)]
    for cut in range(len(wire) + 1):
        assert run([wire[:cut], wire[cut:]]) == whole, cut
    assert run([wire[i : i + 1] for i in range(len(wire))]) == whole


# -- the connection ----------------------------------------------------------------------------


def test_client_pings_are_echoed_and_ours_are_even() -> None:
    peer = SpecPeer()
    conn = spdy.ServerConnection()
    assert conn.receive_data(peer.ping(1) + peer.ping(2)) == [spdy.Ping(1)]
    assert conn.data_to_send() == bytes.fromhex("8003000600000004 00000001")
    assert conn.ping() == 2 and conn.ping() == 4
    assert peer.parse(conn.data_to_send()) == [("PING", 2), ("PING", 4)]
    assert conn.receive_data(peer.ping(4) + peer.ping(2) + peer.ping(2)) == [
        spdy.PingAck(4), spdy.PingAck(2)]
    assert conn.data_to_send() == b""
    with pytest.raises(errdefs.InvalidArgument):
        conn.ping(3)


def test_stream_lifecycle_half_closes_both_ways() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1, replied=False)
    with pytest.raises(errdefs.FailedPrecondition, match="reply before"):
        conn.send_data(1, b"early")
    conn.reply(1)
    with pytest.raises(errdefs.FailedPrecondition, match="already replied"):
        conn.reply(1)
    conn.send_data(1, b"out", fin=True)
    with pytest.raises(spdy.StreamClosed):
        conn.send_data(1, b"more")
    assert peer.parse(conn.data_to_send()) == [(SYN_REPLY, 1, 0, {}), ("DATA", 1, 1, b"out")]
    # Half-closed here, the client still sends; its FIN closes the stream for good.
    assert conn.receive_data(peer.data(1, b"in") + peer.data(1, b"", fin=True)) == [
        spdy.StreamData(1, b"in"), spdy.StreamEnded(1)]
    assert conn.streams == frozenset()
    assert conn.receive_data(peer.data(1, b"straggler")) == []  # gone: dropped
    assert conn.data_to_send() == b""
    conn.reset(1)  # already gone: nothing
    assert conn.data_to_send() == b""


def test_data_after_the_clients_fin_resets_the_stream() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    assert conn.receive_data(peer.data(1, b"x", fin=True) + peer.data(1, b"late")) == [
        spdy.StreamData(1, b"x"), spdy.StreamEnded(1),
        spdy.StreamReset(1, spdy.RstStatus.STREAM_ALREADY_CLOSED, remote=False)]
    assert peer.parse(conn.data_to_send()) == [("RST", 1, spdy.RstStatus.STREAM_ALREADY_CLOSED)]
    with pytest.raises(spdy.StreamClosed):
        conn.send_data(1, b"x")


def test_syn_stream_with_a_fin_and_a_unidirectional_stream() -> None:
    peer = SpecPeer()
    conn = spdy.ServerConnection()
    assert conn.receive_data(peer.syn_stream(1, flags=1) + peer.syn_stream(3, flags=2)) == [
        spdy.StreamOpened(1, spdy.Headers(), fin=True), spdy.StreamEnded(1),
        spdy.StreamOpened(3, spdy.Headers(), unidirectional=True)]
    conn.reply(1, fin=True)  # both ways finished: gone
    with pytest.raises(spdy.StreamClosed):
        conn.reply(3)
    assert conn.streams == {3}
    assert conn.receive_data(peer.data(3, b"one way")) == [spdy.StreamData(3, b"one way")]


def test_stream_ids_even_reused_or_backwards_are_refused() -> None:
    peer = SpecPeer()
    conn = spdy.ServerConnection()
    assert conn.receive_data(peer.syn_stream(2)) == []  # a server's id
    assert conn.receive_data(peer.syn_stream(5)) == [spdy.StreamOpened(5, spdy.Headers())]
    assert conn.receive_data(peer.syn_stream(3)) == []  # backwards
    assert conn.receive_data(peer.syn_stream(5)) == [  # reused while open
        spdy.StreamReset(5, spdy.RstStatus.PROTOCOL_ERROR, remote=False)]
    assert peer.parse(conn.data_to_send()) == [("RST", 2, 1), ("RST", 3, 1), ("RST", 5, 1)]
    assert conn.receive_data(peer.syn_stream(7)) == [spdy.StreamOpened(7, spdy.Headers())]
    with pytest.raises(spdy.ProtocolError, match="stream 0"):
        conn.receive_data(peer.syn_stream(0))


def test_data_on_a_stream_never_opened_is_a_protocol_error() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    with pytest.raises(spdy.ProtocolError, match="never opened"):
        conn.receive_data(peer.data(3, b"x"))
    assert peer.parse(conn.data_to_send()) == [("GOAWAY", 1, spdy.GoAwayStatus.PROTOCOL_ERROR)]


def test_rst_stream_mid_stream() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1, 3)
    conn.send_data(1, b"partial")
    events = conn.receive_data(peer.data(1, b"in") + peer.rst(1, spdy.RstStatus.CANCEL)
                               + peer.data(1, b"in flight") + peer.data(3, b"other"))
    assert events == [spdy.StreamData(1, b"in"), spdy.StreamReset(1, spdy.RstStatus.CANCEL),
                      spdy.StreamData(3, b"other")]
    with pytest.raises(spdy.StreamClosed):
        conn.send_data(1, b"more")
    conn.reset(3, spdy.RstStatus.INTERNAL_ERROR)
    with pytest.raises(spdy.StreamClosed):
        conn.send_data(3, b"more")
    assert peer.parse(conn.data_to_send()) == [("DATA", 1, 0, b"partial"), ("RST", 3, 6)]
    assert conn.receive_data(peer.rst(3, 5) + peer.rst(99, 5)) == []  # gone or unknown


def test_goaway_from_the_client_mid_stream() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    assert conn.receive_data(peer.goaway(0) + peer.data(1, b"still")) == [
        spdy.GoAway(0, 0), spdy.StreamData(1, b"still")]
    assert conn.goaway_received
    conn.send_data(1, b"still here")
    assert conn.receive_data(peer.syn_stream(3)) == []  # refused: no new streams
    assert peer.parse(conn.data_to_send()) == [
        ("DATA", 1, 0, b"still here"), ("RST", 3, spdy.RstStatus.REFUSED_STREAM)]


def test_goaway_from_the_server_ignores_new_streams_but_keeps_the_context() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1, 3)
    conn.goaway()
    conn.goaway()
    assert peer.parse(conn.data_to_send()) == [("GOAWAY", 3, 0)]
    # The ignored SYN_STREAM's block still goes through the inflater, so the next block decodes.
    events = conn.receive_data(peer.syn_stream(5, [(b"streamtype", b"stdin")])
                               + peer.headers(1, [(b"streamtype", b"stdin")]))
    assert events == [spdy.HeadersReceived(1, spdy.Headers({"streamtype": "stdin"}))]
    assert conn.data_to_send() == b""
    assert conn.receive_data(peer.data(5, b"to the ignored stream")) == []


def test_syn_reply_from_the_client_resets_the_stream() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    assert conn.receive_data(peer.syn_reply(1) + peer.syn_reply(9)) == [
        spdy.StreamReset(1, spdy.RstStatus.PROTOCOL_ERROR, remote=False)]
    assert peer.parse(conn.data_to_send()) == [("RST", 1, 1), ("RST", 9, 2)]


def test_too_many_streams_are_refused() -> None:
    peer = SpecPeer()
    conn = spdy.ServerConnection(max_concurrent_streams=2)
    events = conn.receive_data(peer.syn_stream(1) + peer.syn_stream(3) + peer.syn_stream(5))
    assert [e.stream_id for e in events if isinstance(e, spdy.StreamOpened)] == [1, 3]
    assert peer.parse(conn.data_to_send()) == [("RST", 5, spdy.RstStatus.REFUSED_STREAM)]


def test_sixteen_mib_sent_without_any_window_update() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    # Flow-control frames are taken and ignored; nothing waits for them.
    assert conn.receive_data(peer.settings([(7, 1024)]) + peer.window_update(1, 1)
                             + peer.window_update(0, 1)) == []
    payload = random.Random(16).randbytes(16 << 20)
    conn.send_data(1, payload, fin=True)
    frames = len(payload) // spdy.SEND_FRAME_SIZE
    assert conn.pending_bytes == len(payload) + 8 * frames
    parsed = peer.parse(conn.data_to_send())
    assert len(parsed) == frames
    assert {(f[0], f[1]) for f in parsed} == {("DATA", 1)}
    assert {len(data) for data in payloads(parsed)} == {spdy.SEND_FRAME_SIZE}
    assert [f[2] for f in parsed] == [0] * (frames - 1) + [1]
    assert b"".join(payloads(parsed)) == payload
    assert conn.pending_bytes == 0


def test_sixteen_mib_received_in_random_chunks_is_never_held_whole() -> None:
    rng = random.Random(1)
    payload = rng.randbytes(16 << 20)
    peer = SpecPeer()
    wire = bytearray(peer.syn_stream(1))
    sizes = [spdy.MAX_FRAME_LENGTH - (1 << 20)]  # one frame close to the largest possible
    while sum(sizes) < len(payload):
        sizes.append(min(rng.randint(0, 300_000), len(payload) - sum(sizes)))
    pos = 0
    for i, size in enumerate(sizes):
        wire += peer.data(1, payload[pos : pos + size], fin=i == len(sizes) - 1)
        pos += size
    conn = spdy.ServerConnection()
    events: list[spdy.Event] = []
    pos, biggest = 0, 0
    while pos < len(wire):
        n = rng.randint(1, 256 << 10)
        biggest = max(biggest, n)
        for event in conn.receive_data(bytes(wire[pos : pos + n])):
            # Data comes out as it arrives: never more than one chunk's worth at a time.
            assert not isinstance(event, spdy.StreamData) or len(event.data) <= n
            events.append(event)
        pos += n
    events = coalesce(events)
    assert events[0] == spdy.StreamOpened(1, spdy.Headers())
    assert events[1] == spdy.StreamData(1, payload)
    assert events[2:] == [spdy.StreamEnded(1)]


@pytest.mark.parametrize("garbage", [
    b"GET /exec/abc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),  # a TLS ClientHello
    SpecPeer.control(1, 0, bytes(20), version=2),  # SPDY/2
    struct.pack(">II", 1, 0x02 << 24 | 4) + b"abcd",  # DATA with SPDY/2's FLAG_COMPRESS
])
def test_garbage_is_a_clean_protocol_error(garbage: bytes) -> None:
    conn = spdy.ServerConnection()
    with pytest.raises(spdy.ProtocolError) as caught:
        conn.receive_data(garbage)
    assert isinstance(caught.value, errdefs.InvalidArgument)
    assert conn.failed and conn.streams == frozenset()
    assert SpecPeer().parse(conn.data_to_send()) == [("GOAWAY", 0, 1)]
    with pytest.raises(spdy.ProtocolError, match="already failed"):
        conn.receive_data(SpecPeer().ping(1))
    with pytest.raises(spdy.StreamClosed):
        conn.send_data(1, b"x")


def test_random_garbage_fails_within_its_first_frame_head() -> None:
    for seed in range(200):
        garbage = random.Random(seed).randbytes(1 << 20)
        conn = spdy.ServerConnection()
        with pytest.raises(spdy.ProtocolError):
            for pos in range(0, len(garbage), 16):
                conn.receive_data(garbage[pos : pos + 16])
                assert pos < 16, f"seed {seed}: garbage taken as SPDY past its first frame head"


def test_oversized_frames_are_refused_from_their_head() -> None:
    head = struct.pack(">HHI", 0x8003, HEADERS, spdy.MAX_CONTROL_FRAME + 1)
    conn = spdy.ServerConnection()
    with pytest.raises(spdy.ProtocolError, match="control frame of"):
        conn.receive_data(head)  # no payload needed to decide
    unknown = struct.pack(">HHI", 0x8003, 99, spdy.MAX_CONTROL_FRAME + 1)
    with pytest.raises(spdy.ProtocolError):
        spdy.ServerConnection().receive_data(unknown)
    peer = SpecPeer()
    conn = spdy.ServerConnection(max_data_frame=1024)
    conn.receive_data(peer.syn_stream(1))
    assert conn.receive_data(peer.data(1, bytes(1024))) == [spdy.StreamData(1, bytes(1024))]
    with pytest.raises(spdy.ProtocolError, match="DATA of 1025 bytes"):
        conn.receive_data(peer.data(1, bytes(1025))[:8])
    for body in (b"", bytes(7), bytes(9)):  # RST_STREAM is 8 bytes, no more, no less
        with pytest.raises(spdy.ProtocolError, match="RST_STREAM of"):
            spdy.ServerConnection().receive_data(SpecPeer.control(RST_STREAM, 0, body))


def test_data_to_send_in_pieces() -> None:
    peer = SpecPeer()
    conn = opened(peer, 1)
    conn.send_data(1, bytes(range(256)) * 300)
    whole_len = conn.pending_bytes
    pieces = []
    while conn.pending_bytes:
        pieces.append(conn.data_to_send(10_000))
        assert len(pieces[-1]) <= 10_000
    assert sum(map(len, pieces)) == whole_len
    assert b"".join(payloads(peer.parse(b"".join(pieces)))) == bytes(range(256)) * 300
