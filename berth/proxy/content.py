"""The content store over berthd's Content service: a :class:`berth.content.content.Store`.

What the daemon's store promises holds over the API, within the namespace of each call:

* a reader opens the blob on the daemon's side when it is made (one ``Read`` stream, read on
  as the caller reads on), so an open reader keeps reading a blob deleted meanwhile; a read
  elsewhere than where the stream is starts another stream there;
* a writer is one ``Write`` stream for as long as it is open: opening it asks for the ingest's
  status, so ``AlreadyExists`` (``expected`` is stored), ``Unavailable`` (another writer holds
  the ref) and bad arguments come from :meth:`ContentProxy.writer` itself; an ingest resumes at
  the offset the daemon kept; closing the writer returns only once the daemon released the
  ref.
"""

from __future__ import annotations

import queue
from collections.abc import Generator, Iterator, Mapping, Sequence

from berth import errdefs
from berth.api.services.content.v1 import content_pb2 as pb
from berth.api.services.content.v1 import content_pb2_grpc
from berth.content.content import Info, ReaderAt, Status, Store, Writer
from berth.proxy.connection import Connection
from berth.proxy.convert import field_mask, from_timestamp

WRITE_CHUNK = 1 << 20
"""The most bytes one write request carries (berthd reads messages of up to 16 MiB)."""


def _info(i: pb.Info) -> Info:
    return Info(i.digest, i.size, from_timestamp(i.created_at), from_timestamp(i.updated_at),
                dict(i.labels))


def _status(s: pb.Status) -> Status:
    return Status(s.ref, s.offset, s.total, s.expected, from_timestamp(s.started_at),
                  from_timestamp(s.updated_at))


class ContentProxy(Store):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = content_pb2_grpc.ContentStub(conn.channel)

    # -- Provider --

    def info(self, digest: str) -> Info:
        resp: pb.InfoResponse = self._conn.call(self._stub.Info, pb.InfoRequest(digest=digest))
        return _info(resp.info)

    def reader(self, digest: str) -> ReaderAt:
        return _Reader(self, digest, self.info(digest).size)

    # -- Ingester --

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> RemoteWriter:
        return RemoteWriter(self, ref, total, expected)

    # -- Manager --

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = pb.UpdateRequest(info=pb.Info(digest=info.digest, size=info.size,
                                            labels=info.labels),
                               update_mask=field_mask(fieldpaths))
        resp: pb.UpdateResponse = self._conn.call(self._stub.Update, req)
        return _info(resp.info)

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        # Read whole before returning, so a bad filter fails the call itself.
        found = [_info(i)
                 for resp in self._conn.stream(self._stub.List,
                                               pb.ListContentRequest(filters=list(filters)))
                 for i in resp.info]
        return iter(found)

    def delete(self, digest: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteContentRequest(digest=digest))

    # -- IngestManager --

    def status(self, ref: str) -> Status:
        resp: pb.StatusResponse = self._conn.call(self._stub.Status, pb.StatusRequest(ref=ref))
        return _status(resp.status)

    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        resp: pb.ListStatusesResponse = self._conn.call(
            self._stub.ListStatuses, pb.ListStatusesRequest(filters=list(filters)))
        return [_status(s) for s in resp.statuses]

    def abort(self, ref: str) -> None:
        self._conn.call(self._stub.Abort, pb.AbortRequest(ref=ref))

    # -- what the API adds --

    def set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set the given labels (an empty value removes one), leaving the others."""
        if labels:
            self.update(Info(digest, 0, labels={k: v for k, v in labels.items() if v}),
                        [f"labels.{k}" for k in labels])

    def _read(self, digest: str, offset: int) -> Generator[pb.ReadContentResponse, None, None]:
        return self._conn.stream(self._stub.Read,
                                 pb.ReadContentRequest(digest=digest, offset=offset))

    def _write(self, requests: Iterator[pb.WriteContentRequest],
               ) -> Generator[pb.WriteContentResponse, None, None]:
        return self._conn.stream(self._stub.Write, requests)


class _Reader(ReaderAt):
    """A ``Read`` stream from where the caller reads, and the last chunk it brought."""

    def __init__(self, store: ContentProxy, digest: str, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size
        self._stream: Generator[pb.ReadContentResponse, None, None] | None = None
        self._chunk = b""
        self._chunk_at = 0
        self._next = 0  # the offset of what the stream brings next
        self._open(0)

    @property
    def size(self) -> int:
        return self._size

    def _open(self, offset: int) -> None:
        self._cancel()
        self._stream = self._store._read(self._digest, offset)
        self._chunk, self._chunk_at, self._next = b"", offset, offset
        # The first chunk (or the stream's end): the daemon has the blob open from here on.
        self._pull()

    def _pull(self) -> bool:
        if self._stream is None:
            return False
        resp = next(self._stream, None)
        if resp is None:
            self._stream = None
            return False
        self._chunk, self._chunk_at = resp.data, resp.offset
        self._next = resp.offset + len(resp.data)
        return bool(resp.data)

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise errdefs.InvalidArgument(f"cannot read {n} bytes at offset {offset}")
        n = min(n, self._size - offset)
        out = bytearray()
        while n > 0:
            start = offset - self._chunk_at
            if 0 <= start < len(self._chunk):
                piece = self._chunk[start:start + n]
                out += piece
                offset += len(piece)
                n -= len(piece)
            elif self._stream is not None and offset == self._next:
                if not self._pull():
                    break
            else:
                self._open(offset)
                if not self._chunk:
                    break
        return bytes(out)

    def _cancel(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()  # cancels the call

    def close(self) -> None:
        self._cancel()
        self._chunk = b""


class RemoteWriter(Writer):
    """An ingest over one ``Write`` stream: a request, then its answer, for each operation.
    :meth:`commit` can label the new blob."""

    def __init__(self, store: ContentProxy, ref: str, total: int, expected: str) -> None:
        self._ref = ref
        self._total = total
        self._expected = expected
        self._requests: queue.SimpleQueue[pb.WriteContentRequest | None] = queue.SimpleQueue()
        self._closed = False
        self._responses = store._write(iter(self._requests.get, None))
        first = self._send(pb.WriteContentRequest(action=pb.STAT, ref=ref, total=total,
                                                  expected=expected))
        self._offset = first.offset

    def _send(self, req: pb.WriteContentRequest) -> pb.WriteContentResponse:
        if self._closed:
            raise errdefs.FailedPrecondition(f"the writer of ingest {self._ref!r} is closed")
        self._requests.put(req)
        try:
            resp = next(self._responses, None)
        except BaseException:
            self._end()
            raise
        if resp is None:
            self._end()
            raise errdefs.Internal(f"berthd ended the write of ingest {self._ref!r} early")
        return resp

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for i in range(0, len(view), WRITE_CHUNK):
            piece = bytes(view[i:i + WRITE_CHUNK])
            resp = self._send(pb.WriteContentRequest(action=pb.WRITE, offset=self._offset,
                                                     data=piece))
            self._offset = resp.offset
        return len(data)

    def status(self) -> Status:
        resp = self._send(pb.WriteContentRequest(action=pb.STAT))
        return Status(self._ref, resp.offset, resp.total, self._expected,
                      from_timestamp(resp.started_at), from_timestamp(resp.updated_at))

    def digest(self) -> str:
        return self._send(pb.WriteContentRequest(action=pb.STAT)).digest

    def truncate(self, size: int) -> None:
        if size != 0:
            raise errdefs.InvalidArgument(
                f"an ingest can be truncated only to 0 over the API, not to {size}")
        # A write at offset 0 of an ingest that has bytes starts it over.
        resp = self._send(pb.WriteContentRequest(action=pb.WRITE, offset=0))
        self._offset = resp.offset

    def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> str:
        """As :meth:`berth.content.content.Writer.commit`; ``labels`` go on the new blob."""
        try:
            resp = self._send(pb.WriteContentRequest(
                action=pb.COMMIT, offset=self._offset, total=size, expected=expected,
                labels=dict(labels or {})))
        finally:
            self.close()
        return resp.digest

    def close(self) -> None:
        if self._closed:
            return
        self._requests.put(None)  # ends the request stream: the daemon lets go of the ref...
        try:
            for _ in self._responses:  # ...and the stream ends once it has
                pass
        except errdefs.BerthError:
            pass  # what failed was already reported, or nothing is left to report it to
        self._end()

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(None)  # frees grpc's thread that waits for requests
            self._responses.close()
