"""containerd.services.content.v1.Content over the namespaced content store."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.services.content.v1 import content_pb2 as pb
from berth.api.services.content.v1 import content_pb2_grpc
from berth.content.content import Info, Status
from berth.metadata.content import NamespacedContentStore, NamespacedWriter
from berth.services.convert import batched, timestamp

READ_CHUNK = 1 << 20
LIST_BATCH = 100


def _info(i: Info) -> pb.Info:
    return pb.Info(digest=i.digest, size=i.size, created_at=timestamp(i.created_at),
                   updated_at=timestamp(i.updated_at), labels=i.labels)


def _status(s: Status) -> pb.Status:
    return pb.Status(ref=s.ref, offset=s.offset, total=s.total, expected=s.expected,
                     started_at=timestamp(s.started_at), updated_at=timestamp(s.updated_at))


class ContentService(content_pb2_grpc.ContentServicer):
    def __init__(self, store: NamespacedContentStore) -> None:
        self.store = store

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        return pb.InfoResponse(info=_info(self.store.info(request.digest)))

    def Update(self, request: pb.UpdateRequest,
               context: grpc.ServicerContext) -> pb.UpdateResponse:
        info = Info(request.info.digest, request.info.size, labels=dict(request.info.labels))
        return pb.UpdateResponse(info=_info(self.store.update(info, request.update_mask.paths)))

    def List(self, request: pb.ListContentRequest,
             context: grpc.ServicerContext) -> Iterator[pb.ListContentResponse]:
        for batch in batched(map(_info, self.store.walk(request.filters)), LIST_BATCH):
            yield pb.ListContentResponse(info=batch)

    def Delete(self, request: pb.DeleteContentRequest,
               context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.delete(request.digest)
        return empty_pb2.Empty()

    def Read(self, request: pb.ReadContentRequest,
             context: grpc.ServicerContext) -> Iterator[pb.ReadContentResponse]:
        with self.store.reader(request.digest) as r:
            offset = request.offset
            if offset < 0 or offset > r.size:
                raise errdefs.OutOfRange(
                    f"read offset {offset} is outside blob {request.digest} of {r.size} bytes")
            end = r.size if request.size <= 0 else min(r.size, offset + request.size)
            while offset < end:
                data = r.read_at(offset, min(READ_CHUNK, end - offset))
                if not data:
                    break
                yield pb.ReadContentResponse(offset=offset, data=data)
                offset += len(data)

    def Status(self, request: pb.StatusRequest,
               context: grpc.ServicerContext) -> pb.StatusResponse:
        return pb.StatusResponse(status=_status(self.store.status(request.ref)))

    def ListStatuses(self, request: pb.ListStatusesRequest,
                     context: grpc.ServicerContext) -> pb.ListStatusesResponse:
        return pb.ListStatusesResponse(
            statuses=[_status(s) for s in self.store.list_statuses(request.filters)])

    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.store.abort(request.ref)
        return empty_pb2.Empty()

    def Write(self, request_iterator: Iterator[pb.WriteContentRequest],
              context: grpc.ServicerContext) -> Iterator[pb.WriteContentResponse]:
        writer: NamespacedWriter | None = None
        try:
            total, expected = 0, ""
            for req in request_iterator:
                if writer is None:
                    if not req.ref:
                        raise errdefs.InvalidArgument(
                            "the first write request must name a ref")
                    writer = self.store.writer(req.ref, total=req.total, expected=req.expected)
                elif req.ref and req.ref != writer.status().ref:
                    raise errdefs.InvalidArgument(
                        f"ref changed from {writer.status().ref!r} to {req.ref!r} mid-stream")
                total = req.total or total
                expected = req.expected or expected
                yield self._handle(writer, req, total, expected)
        finally:
            if writer is not None:
                writer.close()

    def _handle(self, writer: NamespacedWriter, req: pb.WriteContentRequest, total: int,
                expected: str) -> pb.WriteContentResponse:
        if req.action == pb.STAT:
            return self._response(writer, req.action, total)
        if req.action not in (pb.WRITE, pb.COMMIT):
            raise errdefs.InvalidArgument(f"unknown write action {req.action}")
        offset = writer.status().offset
        if req.offset > 0 and req.offset != offset:
            raise errdefs.OutOfRange(
                f"write at offset {req.offset} must happen at the current offset {offset}")
        if req.offset == 0 and offset > 0:
            writer.truncate(0)
        if req.data:
            writer.write(req.data)
        if req.action == pb.COMMIT:
            size = writer.status().offset
            digest = writer.commit(total, expected, dict(req.labels))
            return pb.WriteContentResponse(action=req.action, total=total or size, offset=size,
                                           digest=digest)
        return self._response(writer, req.action, total)

    @staticmethod
    def _response(writer: NamespacedWriter, action: pb.WriteAction,
                  total: int) -> pb.WriteContentResponse:
        st = writer.status()
        return pb.WriteContentResponse(
            action=action, started_at=timestamp(st.started_at),
            updated_at=timestamp(st.updated_at), offset=st.offset, total=st.total or total,
            digest=writer.digest())
