"""ttrpc on the wire, with no I/O: frames in and out, the Request/Response envelopes, statuses.

A ttrpc connection carries frames. Each starts with a 10-byte big-endian header::

    +----------------+----------------+------+-------+
    | length: uint32 | stream: uint32 | type | flags |   then ``length`` bytes of payload
    +----------------+----------------+------+-------+

``type`` is 1 (request) or 2 (response); ttrpc 1.2 adds 3 (data, for streams) and the flags
``FLAG_REMOTE_CLOSED``, ``FLAG_REMOTE_OPEN`` and ``FLAG_NO_DATA``. Clients open streams with odd
ids, increasing. A request's payload is a ``ttrpc.Request`` (service, method, the call's own
message as bytes, a timeout in nanoseconds, metadata key/values); the answer on the same stream
is a ``ttrpc.Response`` (a ``google.rpc.Status`` and the reply message as bytes).

A payload may not exceed :data:`MAX_MESSAGE` (4 MiB). As Go's ttrpc does, a receiver does not
drop the connection over an oversized frame: it skips the payload and answers that stream with
RESOURCE_EXHAUSTED. :class:`FrameDecoder` reports such a frame as :class:`OversizedFrame`.

Statuses: the wire carries gRPC code numbers; :func:`error_to_status` and
:func:`status_to_error` translate through :mod:`berth.errdefs`, the project's one mapping.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from berth import errdefs
from berth.api.google.rpc import status_pb2
from berth.api.ttrpc import ttrpc_pb2

HEADER_LENGTH = 10
MAX_MESSAGE = 4 << 20

_HEADER = struct.Struct(">IIBB")


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3  # ttrpc 1.2 streams


FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


class ProtocolError(Exception):
    """Bytes that break the ttrpc protocol (an envelope that does not decode, a message too big
    to send). The transports turn it into a status for the peer or a Berth error for the caller;
    it never leaves :mod:`berth.ttrpc`."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame. ``type`` is an int, not a :class:`FrameType`: unknown types are passed
    up, for the receiver to ignore as Go's ttrpc does."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame that declared ``length`` > :data:`MAX_MESSAGE`. Its payload has been (or is being)
    skipped; the receiver should fail that stream with RESOURCE_EXHAUSTED."""

    stream_id: int
    type: int
    flags: int
    length: int


Event = Frame | OversizedFrame


def encode_frame(stream_id: int, type: int, payload: bytes, flags: int = 0) -> bytes:
    """The frame's bytes. ProtocolError if ``payload`` exceeds :data:`MAX_MESSAGE`."""
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError(
            f"message of {len(payload)} bytes exceeds the ttrpc maximum of {MAX_MESSAGE}"
        )
    return _HEADER.pack(len(payload), stream_id, type, flags) + payload


class FrameDecoder:
    """Cuts a byte stream into frames.

    Feed it whatever the socket returned, in any chunking; it returns the events completed by
    that data, in order, and keeps the rest. An oversized frame yields one
    :class:`OversizedFrame` as soon as its header is seen; its payload is then skipped without
    being buffered, however many feeds it spans.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to discard

    @property
    def idle(self) -> bool:
        """True between frames: no partial header or payload is pending. At end of input, False
        means the peer stopped mid-frame."""
        return not self._buf and not self._skip

    def feed(self, data: bytes) -> list[Event]:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        # Common case: nothing buffered, so frames are cut straight from ``data``.
        src: bytes | bytearray
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data
        events: list[Event] = []
        pos = 0
        end = len(src)
        while end - pos >= HEADER_LENGTH:
            length, stream_id, type_, flags = _HEADER.unpack_from(src, pos)
            if length > MAX_MESSAGE:
                events.append(OversizedFrame(stream_id, type_, flags, length))
                pos += HEADER_LENGTH
                if end - pos < length:
                    self._skip = length - (end - pos)
                    pos = end
                    break
                pos += length
                continue
            if end - pos - HEADER_LENGTH < length:
                break
            start = pos + HEADER_LENGTH
            pos = start + length
            events.append(Frame(stream_id, type_, flags, bytes(src[start:pos])))
        if src is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += src[pos:]
        return events


# -- envelopes ---------------------------------------------------------------------------------


def encode_request(
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout_nano: int = 0,
    metadata: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A serialized ``ttrpc.Request``."""
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload,
                            timeout_nano=timeout_nano)
    for key, value in metadata:
        req.metadata.add(key=key, value=value)
    return req.SerializeToString()


def decode_request(data: bytes) -> ttrpc_pb2.Request:
    """Parse a ``ttrpc.Request``; ProtocolError if it does not decode."""
    try:
        return ttrpc_pb2.Request.FromString(data)
    except DecodeError as err:
        raise ProtocolError(f"unmarshal request error: {err}") from None


def encode_response(payload: bytes = b"", *, code: int = 0, message: str = "") -> bytes:
    """A serialized ``ttrpc.Response``. The status is always present, OK included: ttrpc 1.1
    clients reject a response without one."""
    return ttrpc_pb2.Response(
        status=status_pb2.Status(code=code, message=message), payload=payload
    ).SerializeToString()


def decode_response(data: bytes) -> ttrpc_pb2.Response:
    """Parse a ``ttrpc.Response``; ProtocolError if it does not decode. A missing status reads
    as OK (code 0), as ttrpc 1.2 clients take it."""
    try:
        return ttrpc_pb2.Response.FromString(data)
    except DecodeError as err:
        raise ProtocolError(f"unmarshal response error: {err}") from None


# -- statuses ----------------------------------------------------------------------------------
# The wire speaks the codes' numbers, which errdefs.Code shares.

OK = int(errdefs.Code.OK)
# Go's ttrpc answers it for oversized messages.
RESOURCE_EXHAUSTED = int(errdefs.Code.RESOURCE_EXHAUSTED)


def error_to_status(err: BaseException) -> tuple[int, str]:
    """The (code, message) that answers a call which failed with ``err``."""
    return int(errdefs.code_of(err)), str(err)


def status_to_error(code: int, message: str) -> errdefs.BerthError:
    """The Berth error a caller gets for a non-OK status. A code errdefs has no class for
    (PERMISSION_DENIED, ...) gives a plain BerthError."""
    return errdefs.from_code(code, message)


# -- addresses ---------------------------------------------------------------------------------


def unix_path(address: str | os.PathLike[str]) -> str:
    """The socket path of a ttrpc address: a path, or ``unix://`` and a path.

    InvalidArgument for another scheme (vsock, hybrid vsock): only unix sockets are spoken.
    """
    path = os.fspath(address)
    if path.startswith("unix://"):
        return path[len("unix://"):]
    if "://" in path:
        raise errdefs.InvalidArgument(f"ttrpc: unsupported address {path!r}: only unix sockets")
    return path
