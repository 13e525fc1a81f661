"""The ttrpc codec with scripted bytes: frames, envelopes, statuses. No sockets."""

from __future__ import annotations

import struct

import pytest

from berth import errdefs
from berth.ttrpc import codec
from berth.ttrpc.codec import Frame, FrameDecoder, FrameType, OversizedFrame


def header(length: int, stream_id: int, type_: int, flags: int = 0) -> bytes:
    return struct.pack(">IIBB", length, stream_id, type_, flags)


# -- frames ------------------------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    assert codec.encode_frame(1, FrameType.REQUEST, b"abc") == (
        b"\x00\x00\x00\x03" b"\x00\x00\x00\x01" b"\x01" b"\x00" b"abc"
    )
    assert codec.encode_frame(0x01020304, FrameType.DATA, b"", flags=codec.FLAG_NO_DATA) == (
        b"\x00\x00\x00\x00" b"\x01\x02\x03\x04" b"\x03" b"\x04"
    )


def test_encode_frame_refuses_oversized_payload() -> None:
    assert len(codec.encode_frame(1, 1, bytes(codec.MAX_MESSAGE))) == (
        codec.HEADER_LENGTH + codec.MAX_MESSAGE
    )
    with pytest.raises(codec.ProtocolError, match="exceeds"):
        codec.encode_frame(1, 1, bytes(codec.MAX_MESSAGE + 1))


def test_decoder_one_frame() -> None:
    d = FrameDecoder()
    assert d.idle
    assert d.feed(codec.encode_frame(3, 2, b"payload", flags=1)) == [Frame(3, 2, 1, b"payload")]
    assert d.idle


def test_decoder_byte_by_byte() -> None:
    wire = codec.encode_frame(1, 1, b"hello") + codec.encode_frame(3, 1, b"")
    d = FrameDecoder()
    events = []
    for i in range(len(wire)):
        got = d.feed(wire[i : i + 1])
        events.extend(got)
        if i < len(wire) - 1:
            assert not d.idle or got
    assert events == [Frame(1, 1, 0, b"hello"), Frame(3, 1, 0, b"")]
    assert d.idle


def test_decoder_split_header() -> None:
    wire = codec.encode_frame(5, 2, b"xyz")
    d = FrameDecoder()
    assert d.feed(wire[:7]) == []
    assert not d.idle
    assert d.feed(wire[7:9]) == []
    assert d.feed(wire[9:]) == [Frame(5, 2, 0, b"xyz")]


def test_decoder_coalesced_frames_and_a_partial_tail() -> None:
    wire = b"".join(codec.encode_frame(i, 2, bytes([i]) * i) for i in range(1, 8, 2))
    tail = codec.encode_frame(9, 2, b"tail")
    d = FrameDecoder()
    events = d.feed(wire + tail[:12])
    assert [e.stream_id for e in events] == [1, 3, 5, 7]
    assert all(isinstance(e, Frame) and e.payload == bytes([e.stream_id]) * e.stream_id
               for e in events)
    assert d.feed(tail[12:]) == [Frame(9, 2, 0, b"tail")]


def test_decoder_payload_spanning_many_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = codec.encode_frame(1, 1, payload)
    d = FrameDecoder()
    events = []
    for i in range(0, len(wire), 65536):
        events.extend(d.feed(wire[i : i + 65536]))
    assert events == [Frame(1, 1, 0, payload)]


def test_decoder_unknown_type_passes_through() -> None:
    d = FrameDecoder()
    assert d.feed(header(2, 7, 0x7F, 0xFF) + b"??") == [Frame(7, 0x7F, 0xFF, b"??")]


def test_decoder_oversized_frame_is_reported_and_skipped() -> None:
    length = codec.MAX_MESSAGE + 10
    d = FrameDecoder()
    events = d.feed(header(length, 9, 1) + b"x" * 100)
    assert events == [OversizedFrame(9, 1, 0, length)]
    assert not d.idle
    # The rest of the payload, in chunks, and the next frame right after it.
    remaining = length - 100
    assert d.feed(b"y" * (remaining - 1)) == []
    after = codec.encode_frame(11, 1, b"next")
    assert d.feed(b"y" + after) == [Frame(11, 1, 0, b"next")]
    assert d.idle


def test_decoder_oversized_frame_whole_in_one_chunk() -> None:
    length = codec.MAX_MESSAGE + 1
    wire = header(length, 1, 1) + bytes(length) + codec.encode_frame(3, 1, b"ok")
    assert FrameDecoder().feed(wire) == [OversizedFrame(1, 1, 0, length), Frame(3, 1, 0, b"ok")]


def test_decoder_oversized_header_split() -> None:
    d = FrameDecoder()
    h = header(0xFFFFFFFF, 1, 2)
    assert d.feed(h[:5]) == []
    assert d.feed(h[5:]) == [OversizedFrame(1, 2, 0, 0xFFFFFFFF)]


# -- envelopes ---------------------------------------------------------------------------------


def test_request_wire_bytes() -> None:
    # Field numbers as Go's ttrpc Request: 1 service, 2 method, 3 payload, 4 timeout_nano,
    # 5 metadata {1 key, 2 value}.
    data = codec.encode_request("s", "m", b"p", timeout_nano=5, metadata=[("k", "v")])
    assert data == bytes.fromhex("0a0173" "12016d" "1a0170" "2005" "2a06" "0a016b" "120176")
    req = codec.decode_request(data)
    assert (req.service, req.method, req.payload, req.timeout_nano) == ("s", "m", b"p", 5)
    assert [(kv.key, kv.value) for kv in req.metadata] == [("k", "v")]


def test_request_repeated_metadata_keys_keep_order() -> None:
    data = codec.encode_request("s", "m", b"", metadata=[("a", "1"), ("b", "2"), ("a", "3")])
    assert [(kv.key, kv.value) for kv in codec.decode_request(data).metadata] == [
        ("a", "1"), ("b", "2"), ("a", "3")]


def test_response_always_carries_a_status() -> None:
    # ttrpc 1.1 clients fail "no status provided on response" without field 1.
    assert codec.encode_response() == b"\x0a\x00"
    assert codec.encode_response(b"r") == b"\x0a\x00\x12\x01r"
    resp = codec.decode_response(codec.encode_response(code=5, message="gone"))
    assert (resp.status.code, resp.status.message, resp.payload) == (5, "gone", b"")


def test_response_without_status_reads_ok() -> None:
    assert codec.decode_response(b"").status.code == codec.OK


def test_garbage_envelopes() -> None:
    with pytest.raises(codec.ProtocolError, match="unmarshal request"):
        codec.decode_request(b"\xff\xff\xff")
    with pytest.raises(codec.ProtocolError, match="unmarshal response"):
        codec.decode_response(b"\x0a\x05\x08")


# -- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errdefs.NotFound("x"), 5),
        (errdefs.AlreadyExists("x"), 6),
        (errdefs.InvalidArgument("x"), 3),
        (errdefs.FailedPrecondition("x"), 9),
        (errdefs.Unavailable("x"), 14),
        (errdefs.NotImplementedByBerth("x"), 12),
        (errdefs.DeadlineExceeded("x"), 4),
        (errdefs.Canceled("x"), 1),
        (errdefs.Internal("x"), 13),
        (FileNotFoundError("x"), 5),
        (ValueError("x"), 2),
    ],
)
def test_error_to_status(err: BaseException, code: int) -> None:
    assert codec.error_to_status(err) == (code, "x")


@pytest.mark.parametrize(
    ("code", "cls"),
    [(5, errdefs.NotFound), (6, errdefs.AlreadyExists), (12, errdefs.NotImplementedByBerth),
     (4, errdefs.DeadlineExceeded), (14, errdefs.Unavailable), (13, errdefs.Internal)],
)
def test_status_to_error(code: int, cls: type[errdefs.BerthError]) -> None:
    err = codec.status_to_error(code, "msg")
    assert type(err) is cls
    assert str(err) == "msg"


@pytest.mark.parametrize("code", [2, 7, 16, 999])
def test_status_without_a_class_is_a_plain_berth_error(code: int) -> None:
    err = codec.status_to_error(code, "msg")
    assert type(err) is errdefs.BerthError


# -- addresses ---------------------------------------------------------------------------------


def test_unix_path() -> None:
    assert codec.unix_path("unix:///run/x.sock") == "/run/x.sock"
    assert codec.unix_path("/run/x.sock") == "/run/x.sock"
    with pytest.raises(errdefs.InvalidArgument):
        codec.unix_path("vsock://3:1024")
