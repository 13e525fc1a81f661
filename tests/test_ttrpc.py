"""ttrpc client and server over real unix sockets: against each other, against raw bytes, and
against Go's ttrpc (Debian's containerd-shim-runc-v2 as the server, and as a client of ours)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from google.protobuf import empty_pb2

from berth import errdefs, namespaces
from berth.api.runtime.task.v2 import shim_pb2
from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.ttrpc import (
    BackgroundLoop,
    Client,
    RequestContext,
    Server,
    Stub,
    SyncClient,
    SyncStub,
    codec,
)
from berth.ttrpc import server as server_module
from berth.ttrpc.codec import Frame, FrameType

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
EVENTS = events_pb2.DESCRIPTOR.services_by_name["Events"]
TASK_NAME = TASK.full_name
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Short: unix socket paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeTask:
    """A Task service with behaviours to test against. Pause, Resume, ... are missing on
    purpose: they must answer UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.seen: list[RequestContext] = []
        self.namespaces: list[str | None] = []
        self.running = 0
        self.max_running = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def Connect(self, ctx: RequestContext, req: shim_pb2.ConnectRequest
                      ) -> shim_pb2.ConnectResponse:
        self.seen.append(ctx)
        self.namespaces.append(namespaces.current_or_none())
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=len(req.id),
                                        version=req.id)

    async def Wait(self, ctx: RequestContext, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        """Sleeps ``exec_id`` milliseconds, answers the id as exit status."""
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            await asyncio.sleep(int(req.exec_id) / 1000)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.running -= 1
        return shim_pb2.WaitResponse(exit_status=int(req.id))

    async def Kill(self, ctx: RequestContext, req: shim_pb2.KillRequest) -> empty_pb2.Empty:
        kinds: dict[str, type[errdefs.BerthError]] = {
            "notfound": errdefs.NotFound, "exists": errdefs.AlreadyExists,
            "precondition": errdefs.FailedPrecondition, "invalid": errdefs.InvalidArgument,
        }
        if req.id in kinds:
            raise kinds[req.id](f"task {req.id!r}: {req.id}")
        if req.id == "value":
            raise ValueError("a bug in the handler")
        if req.id == "oserror":
            raise FileNotFoundError(2, "No such file or directory", "/nope")
        return empty_pb2.Empty()

    async def Delete(self, ctx: RequestContext, req: shim_pb2.DeleteRequest) -> Any:
        return empty_pb2.Empty()  # the wrong type: the reply must be a DeleteResponse

    async def State(self, ctx: RequestContext, req: shim_pb2.StateRequest
                    ) -> shim_pb2.StateResponse:
        return shim_pb2.StateResponse(id=req.id, bundle="x" * int(req.exec_id or 0))


class ShutsDownInline:
    """The mistake Server.shutdown refuses: awaiting it from a handler."""

    server: Server

    async def Forward(self, ctx: RequestContext, req: events_pb2.ForwardRequest
                      ) -> empty_pb2.Empty:
        await self.server.shutdown()
        return empty_pb2.Empty()


class Recorder:
    """containerd's Events service, as the shim's publisher calls it."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str | None, events_pb2.ForwardRequest]] = []
        self.arrived = asyncio.Event()

    async def Forward(self, ctx: RequestContext, req: events_pb2.ForwardRequest
                      ) -> empty_pb2.Empty:
        self.forwarded.append((ctx.namespace, req))
        self.arrived.set()
        return empty_pb2.Empty()


@contextlib.asynccontextmanager
async def serving(path: str, task: FakeTask | None = None) -> AsyncIterator[Server]:
    server = Server()
    server.register(TASK, task or FakeTask())
    server.register(EVENTS, Recorder())
    await server.serve(path)
    try:
        yield server
    finally:
        await server.shutdown(timeout=2)


async def raw_call(path: str, frames: bytes, answers: int, timeout: float = 5) -> list[Frame]:
    """Send raw bytes, read ``answers`` frames back."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(frames)
        await writer.drain()
        decoder = codec.FrameDecoder()
        got: list[Frame] = []
        async with asyncio.timeout(timeout):
            while len(got) < answers:
                data = await reader.read(65536)
                assert data, f"connection closed after {got}"
                for event in decoder.feed(data):
                    assert isinstance(event, Frame)
                    got.append(event)
        return got
    finally:
        writer.close()


def request_frame(sid: int, method: str, msg: Any, *, service: str = TASK_NAME,
                  timeout_nano: int = 0, flags: int = 0) -> bytes:
    envelope = codec.encode_request(service, method, msg.SerializeToString(),
                                    timeout_nano=timeout_nano)
    return codec.encode_frame(sid, FrameType.REQUEST, envelope, flags)


def status_of(frame: Frame) -> tuple[int, str]:
    assert frame.type == FrameType.RESPONSE
    resp = codec.decode_response(frame.payload)
    return resp.status.code, resp.status.message


# -- our client against our server ------------------------------------------------------------


def test_round_trip_metadata_and_namespace(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        async with serving(path, task):
            client = await Client.connect("unix://" + path)
            resp = await client.call(
                TASK_NAME, "Connect", shim_pb2.ConnectRequest(id="abc"),
                shim_pb2.ConnectResponse,
                metadata={namespaces.TTRPC_HEADER: "k8s.io", "x-other": "1"}, timeout=5)
            assert (resp.shim_pid, resp.task_pid, resp.version) == (os.getpid(), 3, "abc")
            # No namespace sent: none bound.
            await client.call(TASK_NAME, "Connect", shim_pb2.ConnectRequest(),
                              shim_pb2.ConnectResponse)
            await client.close()

    run(main())
    assert task.namespaces == ["k8s.io", None]
    ctx = task.seen[0]
    assert ctx.service == TASK_NAME and ctx.method == "Connect"
    assert ctx.metadata == {namespaces.TTRPC_HEADER: ["k8s.io"], "x-other": ["1"]}
    assert ctx.namespace == "k8s.io" and ctx.get("X-Other") == "1"
    assert 4.0 < ctx.timeout_nano / 1e9 <= 5.0
    assert task.seen[1].deadline is None and task.seen[1].timeout_nano == 0


def test_socket_is_private_and_removed_at_shutdown(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert not os.path.exists(path)

    run(main())


def test_concurrent_calls_answer_out_of_order(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        async with serving(path, task):
            client = await Client.connect(path)
            stub = Stub(client, TASK)
            # Call i sleeps (50 - i) ms: the last sent is answered first.
            calls = [stub.Wait(shim_pb2.WaitRequest(id=str(i), exec_id=str(50 - i)))
                     for i in range(50)]
            results = await asyncio.gather(*calls)
            assert [r.exit_status for r in results] == list(range(50))
            await client.close()

    run(main())
    assert task.max_running == 50


def test_errors_map_both_ways(sockdir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            stub = Stub(await Client.connect(path), TASK)
            cases: list[tuple[str, type[errdefs.BerthError], str]] = [
                ("notfound", errdefs.NotFound, "task 'notfound': notfound"),
                ("exists", errdefs.AlreadyExists, "task 'exists': exists"),
                ("precondition", errdefs.FailedPrecondition, "task 'precondition': precondition"),
                ("invalid", errdefs.InvalidArgument, "task 'invalid': invalid"),
                ("oserror", errdefs.NotFound, "[Errno 2] No such file or directory: '/nope'"),
            ]
            for id_, cls, message in cases:
                with pytest.raises(cls) as info:
                    await stub.Kill(shim_pb2.KillRequest(id=id_))
                assert type(info.value) is cls and str(info.value) == message
            # A bug in a handler: UNKNOWN with its message, logged on the server.
            with pytest.raises(errdefs.BerthError) as info:
                await stub.Kill(shim_pb2.KillRequest(id="value"))
            assert type(info.value) is errdefs.BerthError
            assert str(info.value) == "a bug in the handler"
            # A reply of the wrong type: Internal.
            with pytest.raises(errdefs.Internal, match="wrong message type"):
                await stub.Delete(shim_pb2.DeleteRequest())
            # A handler that works still works on the same connection.
            await stub.Kill(shim_pb2.KillRequest(id="fine"))

    with caplog.at_level(logging.ERROR, logger="berth.ttrpc"):
        run(main())
    assert any("a bug in the handler" in (r.exc_text or "") for r in caplog.records)


def test_unimplemented(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            client = await Client.connect(path)
            with pytest.raises(errdefs.NotImplementedByBerth, match=r"^method Pause$"):
                await Stub(client, TASK).Pause(shim_pb2.PauseRequest(id="x"))
            with pytest.raises(errdefs.NotImplementedByBerth, match=r"^method Nope$"):
                await client.call(TASK_NAME, "Nope", empty_pb2.Empty(), empty_pb2.Empty)
            with pytest.raises(errdefs.NotImplementedByBerth, match=r"^service no\.Such$"):
                await client.call("no.Such", "Call", empty_pb2.Empty(), empty_pb2.Empty)

    run(main())


def test_invalid_namespace_is_invalid_argument(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            client = await Client.connect(path)
            with pytest.raises(errdefs.InvalidArgument, match="namespace"):
                await client.call(TASK_NAME, "Connect", shim_pb2.ConnectRequest(),
                                  shim_pb2.ConnectResponse,
                                  metadata={namespaces.TTRPC_HEADER: "bad ns!"})

    run(main())


def test_client_timeout_cancels_the_handler(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        async with serving(path, task):
            client = await Client.connect(path)
            stub = Stub(client, TASK, timeout=0.2)
            started = time.monotonic()
            with pytest.raises(errdefs.DeadlineExceeded):
                await stub.Wait(shim_pb2.WaitRequest(id="1", exec_id="10000"))
            assert time.monotonic() - started < 2
            # The server's own deadline cancelled the handler too.
            await asyncio.wait_for(task.cancelled.wait(), 2)
            # The connection is still good; a late answer on the old stream is ignored.
            r = await stub.Wait(shim_pb2.WaitRequest(id="7", exec_id="0"))
            assert r.exit_status == 7
            with pytest.raises(errdefs.DeadlineExceeded):
                await stub.Wait(shim_pb2.WaitRequest(id="1", exec_id="0"), timeout=0)

    run(main())


def test_server_enforces_the_deadline_it_is_sent(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    wait = shim_pb2.WaitRequest(id="1", exec_id="10000")

    async def main() -> None:
        async with serving(path):
            frames = (request_frame(1, "Wait", wait, timeout_nano=100_000_000)
                      + request_frame(3, "Wait", wait, timeout_nano=-1))
            got = await raw_call(path, frames, 2)
            by_id = {f.stream_id: status_of(f) for f in got}
            assert by_id[1] == (4, "ttrpc: Wait: deadline exceeded")
            assert by_id[3][0] == 4

    run(main())


def test_connection_drop_fails_pending_and_later_calls(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        server = Server()
        server.register(TASK, task)
        await server.serve(path)
        client = await Client.connect(path)
        stub = Stub(client, TASK)
        pending = asyncio.ensure_future(stub.Wait(shim_pb2.WaitRequest(id="1", exec_id="60000")))
        await task.started.wait()
        await server.shutdown(timeout=0.1)  # gives up on the handler, closes the connection
        with pytest.raises(errdefs.Canceled, match="cancelled"):
            await pending
        await asyncio.wait_for(client.wait_closed(), 2)
        assert client.closed
        with pytest.raises(errdefs.Unavailable, match="connection closed"):
            await stub.Connect(shim_pb2.ConnectRequest())

    run(main())


def test_client_close_fails_pending_calls_and_cancels_handlers(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        async with serving(path, task):
            client = await Client.connect(path)
            pending = asyncio.ensure_future(
                Stub(client, TASK).Wait(shim_pb2.WaitRequest(id="1", exec_id="60000")))
            await task.started.wait()
            await client.close()
            with pytest.raises(errdefs.Unavailable, match="closed by the client"):
                await pending
            await asyncio.wait_for(task.cancelled.wait(), 2)

    run(main())


def test_peer_that_hangs_up(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()

        plain = await asyncio.start_unix_server(hang_up, path)
        async with plain:
            client = await Client.connect(path)
            with pytest.raises(errdefs.Unavailable, match="closed by the server"):
                await client.call(TASK_NAME, "Connect", shim_pb2.ConnectRequest(),
                                  shim_pb2.ConnectResponse)
        with pytest.raises(errdefs.Unavailable, match="cannot connect"):
            await Client.connect(os.path.join(sockdir, "nobody"))

    run(main())


def test_shutdown_lets_running_calls_finish(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    task = FakeTask()

    async def main() -> None:
        server = Server()
        server.register(TASK, task)
        await server.serve(path)
        client = await Client.connect(path)
        stub = Stub(client, TASK)
        slow = asyncio.ensure_future(stub.Wait(shim_pb2.WaitRequest(id="5", exec_id="300")))
        await task.started.wait()
        closing = asyncio.ensure_future(server.shutdown(timeout=5))
        await asyncio.sleep(0.05)
        # A new request while shutting down is refused, the running one completes.
        with pytest.raises(errdefs.Unavailable, match="shutting down"):
            await stub.Connect(shim_pb2.ConnectRequest())
        assert (await slow).exit_status == 5
        await closing
        assert not os.path.exists(path)
        await asyncio.wait_for(client.wait_closed(), 2)
        with pytest.raises(errdefs.FailedPrecondition):
            await server.serve(path)

    run(main())


def test_shutdown_from_a_handler_is_refused(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        impl = ShutsDownInline()
        impl.server = Server()
        impl.server.register(EVENTS, impl)
        await impl.server.serve(path)
        client = await Client.connect(path)
        with pytest.raises(errdefs.BerthError, match="from one of its own handlers"):
            await Stub(client, EVENTS).Forward(events_pb2.ForwardRequest())
        await impl.server.shutdown()

    run(main())


def test_stale_socket_is_replaced_live_one_is_not(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    with open(os.path.join(sockdir, "file"), "w"):
        pass

    async def main() -> None:
        async with serving(path):
            client = await Client.connect(path)
            await client.call(TASK_NAME, "Connect", shim_pb2.ConnectRequest(),
                              shim_pb2.ConnectResponse)
            with pytest.raises(errdefs.AlreadyExists, match="in use"):
                await Server().serve(path)
            with pytest.raises(errdefs.AlreadyExists, match="not a socket"):
                await Server().serve(os.path.join(sockdir, "file"))

    run(main())


def test_serve_a_listening_socket(sockdir: str) -> None:
    # As the shim receives its listener from the "start" process.
    path = os.path.join(sockdir, "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    async def main() -> None:
        server = Server()
        server.register(TASK, FakeTask())
        await server.serve(listener)
        client = await Client.connect(path)
        r = await client.call(TASK_NAME, "Connect", shim_pb2.ConnectRequest(id="x"),
                              shim_pb2.ConnectResponse)
        assert r.version == "x"
        await server.shutdown()
        assert os.path.exists(path)  # the caller's file
        assert listener.fileno() == -1

    run(main())


def test_client_from_a_connected_socket(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            client = await Client.from_socket(sock)
            r = await Stub(client, TASK).Connect(shim_pb2.ConnectRequest(id="y"))
            assert r.version == "y"

    run(main())


def test_register_and_stub_contracts() -> None:
    server = Server()
    server.register(TASK, FakeTask())
    with pytest.raises(errdefs.AlreadyExists):
        server.register(TASK, FakeTask())

    class NotAsync:
        def Forward(self, ctx: RequestContext, req: Any) -> Any:
            return None

    with pytest.raises(TypeError, match="async def"):
        Server().register(EVENTS, NotAsync())

    async def main() -> None:
        a, b = socket.socketpair()
        client = await Client.from_socket(a)
        stub = Stub(client, TASK)
        with pytest.raises(TypeError, match="takes a StateRequest"):
            await stub.State(shim_pb2.KillRequest())
        with pytest.raises(AttributeError, match="no unary method 'Nope'"):
            stub.Nope  # noqa: B018
        await client.close()
        b.close()

    run(main())


def test_large_messages_and_the_size_limit(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async with serving(path):
            client = await Client.connect(path)
            stub = Stub(client, TASK)
            big = codec.MAX_MESSAGE - 64
            r = await stub.State(shim_pb2.StateRequest(id="a", exec_id=str(big)))
            assert len(r.bundle) == big
            # A reply over 4 MiB: the server answers RESOURCE_EXHAUSTED instead.
            with pytest.raises(errdefs.BerthError, match="exceeds") as info:
                await stub.State(shim_pb2.StateRequest(exec_id=str(codec.MAX_MESSAGE)))
            assert type(info.value) is errdefs.ResourceExhausted
            # A request over 4 MiB is refused before it is sent.
            with pytest.raises(errdefs.BerthError, match="exceeds the maximum"):
                await stub.State(shim_pb2.StateRequest(id="x" * codec.MAX_MESSAGE))
            assert (await stub.State(shim_pb2.StateRequest(id="ok"))).id == "ok"

    run(main())


# -- our server against raw bytes --------------------------------------------------------------


def test_server_protocol_edges(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    connect = shim_pb2.ConnectRequest(id="z")
    oversized = struct_header(codec.MAX_MESSAGE + 5, 9, FrameType.REQUEST) + bytes(
        codec.MAX_MESSAGE + 5)

    async def main() -> None:
        async with serving(path):
            frames = b"".join([
                request_frame(2, "Connect", connect),  # even id
                request_frame(3, "Connect", connect),  # fine
                request_frame(3, "Connect", connect),  # reused id
                codec.encode_frame(7, FrameType.REQUEST, b"\xff\xff"),  # garbage envelope
                codec.encode_frame(5, 0x42, b"future"),  # unknown type: ignored
                oversized,  # answered RESOURCE_EXHAUSTED, the connection lives on
                codec.encode_frame(11, FrameType.DATA, b"", codec.FLAG_REMOTE_CLOSED),
                # A stream opening (ttrpc 1.2 flags) on a unary method is served as unary.
                request_frame(13, "Connect", connect, flags=codec.FLAG_REMOTE_CLOSED),
                codec.encode_frame(13, FrameType.DATA, b"", codec.FLAG_NO_DATA),  # dropped
                request_frame(15, "Forward", events_pb2.ForwardRequest(),
                              service=EVENTS.full_name),
            ])
            got = await raw_call(path, frames, 8)
            # Errors found on arrival are answered at once, calls when their task finishes.
            answers = sorted((f.stream_id, *status_of(f)) for f in got)
            assert answers == sorted([
                (2, 3, "StreamID must be odd for client initiated streams"),
                (3, 0, ""),
                (3, 3, "StreamID cannot be re-used and must increment"),
                (7, 3, "unmarshal request error: Error parsing message with type "
                       "'ttrpc.Request': Wire format was corrupt"),
                (9, codec.RESOURCE_EXHAUSTED,
                 f"message length {codec.MAX_MESSAGE + 5} exceed maximum message size of "
                 f"{codec.MAX_MESSAGE}"),
                (11, 12, "ttrpc: streams are not supported"),
                (13, 0, ""),
                (15, 0, ""),
            ])
            ok = next(f for f in got if f.stream_id == 3 and status_of(f)[0] == 0)
            reply = shim_pb2.ConnectResponse.FromString(codec.decode_response(ok.payload).payload)
            assert reply.version == "z"

    run(main())


def test_server_backpressure_on_a_peer_that_does_not_read(
    sockdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies pile up while the peer does not read; the server stops reading requests meanwhile
    and catches up once the peer reads: nothing is lost or stuck."""
    path = os.path.join(sockdir, "s")
    paused: list[bool] = []
    original = server_module._Connection.pause_writing

    def pause_writing(self: Any) -> None:
        paused.append(True)
        original(self)

    monkeypatch.setattr(server_module._Connection, "pause_writing", pause_writing)
    size = 1 << 20
    count = 24

    async def main() -> None:
        async with serving(path):
            reader, writer = await asyncio.open_unix_connection(path)
            for i in range(count):
                writer.write(request_frame(2 * i + 1, "State",
                                           shim_pb2.StateRequest(id=str(i), exec_id=str(size))))
            await writer.drain()
            await asyncio.sleep(0.3)  # the server's send buffer fills up meanwhile
            decoder = codec.FrameDecoder()
            got: list[Frame] = []
            async with asyncio.timeout(20):
                while len(got) < count:
                    data = await reader.read(1 << 20)
                    assert data
                    got.extend(f for f in decoder.feed(data) if isinstance(f, Frame))
            writer.close()
            ids = set()
            for f in got:
                reply = shim_pb2.StateResponse.FromString(codec.decode_response(f.payload).payload)
                assert len(reply.bundle) == size
                ids.add(reply.id)
            assert ids == {str(i) for i in range(count)}

    run(main())
    assert paused


def struct_header(length: int, sid: int, type_: int, flags: int = 0) -> bytes:
    return length.to_bytes(4, "big") + sid.to_bytes(4, "big") + bytes([type_, flags])


def test_client_against_a_misbehaving_server(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = codec.FrameDecoder()
            while data := await reader.read(65536):
                for f in decoder.feed(data):
                    assert isinstance(f, Frame)
                    method = codec.decode_request(f.payload).method
                    if method == "Oversized":
                        writer.write(struct_header(codec.MAX_MESSAGE + 1, f.stream_id, 2)
                                     + bytes(codec.MAX_MESSAGE + 1))
                    elif method == "Garbage":
                        writer.write(codec.encode_frame(f.stream_id, 2, b"\xff\xff"))
                    elif method == "BadPayload":
                        writer.write(codec.encode_frame(
                            f.stream_id, 2, codec.encode_response(b"\xff\xff")))
                    elif method == "Data":
                        writer.write(codec.encode_frame(f.stream_id, FrameType.DATA, b""))
                    elif method == "Stray":
                        writer.write(codec.encode_frame(99, 2, codec.encode_response()))
                        writer.write(codec.encode_frame(f.stream_id, 0x42, b""))
                        writer.write(codec.encode_frame(f.stream_id, 2, codec.encode_response()))
                    await writer.drain()
            writer.close()

        plain = await asyncio.start_unix_server(serve, path)
        async with plain:
            client = await Client.connect(path)

            async def call(method: str) -> Any:
                return await client.call("s", method, empty_pb2.Empty(), shim_pb2.StateResponse)

            with pytest.raises(errdefs.BerthError, match="exceeds the maximum"):
                await call("Oversized")
            with pytest.raises(errdefs.Internal, match="unmarshal response"):
                await call("Garbage")
            with pytest.raises(errdefs.Internal, match="not a StateResponse"):
                await call("BadPayload")
            with pytest.raises(errdefs.Internal, match="stream data"):
                await call("Data")
            assert await call("Stray") == shim_pb2.StateResponse()
            await client.close()

    run(main())


# -- blocking façade ---------------------------------------------------------------------------


@contextlib.contextmanager
def background_server(path: str, task: FakeTask | None = None) -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop(name="test-server")
    server = Server()
    server.register(TASK, task or FakeTask())
    loop.run(server.serve(path))
    try:
        yield loop
    finally:
        loop.run(server.shutdown(timeout=2))
        loop.close()


def test_sync_client_from_threads(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    with background_server(path):
        client = SyncClient.connect(path)
        stub = SyncStub(client, TASK, metadata={namespaces.TTRPC_HEADER: "default"})
        assert stub.Connect(shim_pb2.ConnectRequest(id="q")).version == "q"
        with pytest.raises(errdefs.NotFound):
            stub.Kill(shim_pb2.KillRequest(id="notfound"))
        with pytest.raises(errdefs.DeadlineExceeded):
            stub.Wait(shim_pb2.WaitRequest(id="1", exec_id="5000"), timeout=0.1)

        def one(i: int) -> int:
            r = client.call(TASK_NAME, "Wait", shim_pb2.WaitRequest(id=str(i), exec_id="20"),
                            shim_pb2.WaitResponse, timeout=5)
            return r.exit_status

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(40))) == list(range(40))
        client.close()
        assert client.closed and client.wait_closed(0.1)
        with pytest.raises(errdefs.Unavailable):
            stub.Connect(shim_pb2.ConnectRequest())


def test_background_loop_contracts() -> None:
    loop = BackgroundLoop()
    assert loop.run(asyncio.sleep(0, result=3)) == 3
    with pytest.raises(errdefs.DeadlineExceeded):
        loop.run(asyncio.sleep(5), timeout=0.05)

    async def inside() -> None:
        coro = asyncio.sleep(0)
        loop.run(coro)

    with pytest.raises(RuntimeError, match="own loop thread"):
        loop.run(inside())
    loop.close()
    assert BackgroundLoop.default() is BackgroundLoop.default()
    with pytest.raises(RuntimeError):
        BackgroundLoop.default().close()


# -- Go's ttrpc: Debian's containerd-shim-runc-v2 ---------------------------------------------
# Started as containerd 1.6 starts it: "start" in the bundle directory prints the address of a
# long-lived shim it spawned; TTRPC_ADDRESS is where the shim forwards events (Go ttrpc client).

GO_SHIM = shutil.which("containerd-shim-runc-v2")
GO_NAMESPACE = "berth-ttrpc-test"  # the shim keeps runc state in /run/containerd/runc/<ns>
needs_go_shim = pytest.mark.skipif(GO_SHIM is None,
                                   reason="containerd-shim-runc-v2 is not installed")


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class GoShim:
    """One Go runc shim for a test; :meth:`cleanup` kills only its pid and removes its socket."""

    def __init__(self, sockdir: str, bundle: str) -> None:
        self.bundle = bundle
        self.id = f"ttrpc-test-{os.getpid()}-{time.monotonic_ns()}"
        self.events_path = os.path.join(sockdir, "events")
        self.pid = 0
        self.socket = ""
        os.mkfifo(os.path.join(bundle, "log"))
        # The shim logs into this FIFO; an open reader keeps it from blocking.
        self._log_fd = os.open(os.path.join(bundle, "log"), os.O_RDWR | os.O_NONBLOCK)

    async def start(self) -> Stub:
        """Run ``start``, connect, Connect; the Task stub."""
        assert GO_SHIM is not None
        proc = await asyncio.create_subprocess_exec(
            GO_SHIM, "-namespace", GO_NAMESPACE, "-address", "/nonexistent/containerd.sock",
            "-publish-binary", "/bin/true", "-id", self.id, "start",
            cwd=self.bundle, env={**os.environ, "TTRPC_ADDRESS": self.events_path},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        address = out.decode().strip()
        assert address.startswith("unix:///run/containerd/s/"), address
        self.socket = codec.unix_path(address)
        self.client = await Client.connect(address)
        task = Stub(self.client, TASK, metadata={namespaces.TTRPC_HEADER: GO_NAMESPACE},
                    timeout=10)
        connected = await task.Connect(shim_pb2.ConnectRequest(id=self.id))
        self.pid = connected.shim_pid
        assert self.pid > 0
        return task

    async def shutdown(self, task: Stub) -> None:
        # The shim exits on Shutdown: the reply may beat the hang-up or not.
        with contextlib.suppress(errdefs.Unavailable):
            await task.Shutdown(shim_pb2.ShutdownRequest(id=self.id))
        await asyncio.wait_for(self.client.wait_closed(), 10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and is_running(self.pid):
            await asyncio.sleep(0.05)
        assert not is_running(self.pid), "the shim did not exit after Shutdown"

    def cleanup(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)
        if self.socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
        os.close(self._log_fd)
        # runc's state root for our namespace; left empty by a clean Delete.
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(f"/run/containerd/runc/{GO_NAMESPACE}")


@pytest.mark.needs_root
@needs_go_shim
def test_go_shim_serves_our_client(sockdir: str) -> None:
    """Our client against Go's ttrpc server: answers, errors, concurrency, Shutdown."""
    bundle = os.path.join(sockdir, "bundle")
    os.mkdir(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write("{}")
    shim = GoShim(sockdir, bundle)

    async def main() -> None:
        task = await shim.start()
        with pytest.raises(errdefs.NotFound, match="container not created: not found"):
            await task.State(shim_pb2.StateRequest(id=shim.id))
        with pytest.raises(errdefs.NotImplementedByBerth, match="NoSuchMethod"):
            await shim.client.call(TASK_NAME, "NoSuchMethod", empty_pb2.Empty(),
                                   empty_pb2.Empty)
        with pytest.raises(errdefs.NotImplementedByBerth, match=r"no\.Such"):
            await shim.client.call("no.Such", "Method", empty_pb2.Empty(), empty_pb2.Empty)
        replies = await asyncio.gather(*(task.Connect(shim_pb2.ConnectRequest(id=shim.id))
                                         for _ in range(50)))
        assert {r.shim_pid for r in replies} == {shim.pid}
        await shim.shutdown(task)

    try:
        run(main(), timeout=60)
    finally:
        shim.cleanup()


@pytest.mark.needs_root
@needs_go_shim
@pytest.mark.skipif(shutil.which("runc") is None or shutil.which("busybox") is None,
                    reason="needs runc and busybox")
def test_go_shim_forwards_events_to_our_server(sockdir: str) -> None:
    """Go's ttrpc client (the shim's event publisher) against our Events server: a container
    running /bin/true makes the shim forward create, start, exit and delete."""
    bundle = os.path.join(sockdir, "bundle")
    os.mkdir(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    spec["process"].update(args=["/bin/true"], terminal=False)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    os.makedirs(os.path.join(bundle, "rootfs", "bin"))
    shutil.copy(shutil.which("busybox") or "", os.path.join(bundle, "rootfs", "bin", "busybox"))
    os.symlink("busybox", os.path.join(bundle, "rootfs", "bin", "true"))
    shim = GoShim(sockdir, bundle)
    recorder = Recorder()

    async def main() -> None:
        server = Server()
        server.register(EVENTS, recorder)
        await server.serve(shim.events_path)
        # Our own client reaches the same server first.
        await Stub(await Client.connect(shim.events_path), EVENTS).Forward(
            events_pb2.ForwardRequest())
        task = await shim.start()
        await task.Create(shim_pb2.CreateTaskRequest(id=shim.id, bundle=bundle))
        await task.Start(shim_pb2.StartRequest(id=shim.id))
        assert (await task.Wait(shim_pb2.WaitRequest(id=shim.id))).exit_status == 0
        await task.Delete(shim_pb2.DeleteRequest(id=shim.id))
        async with asyncio.timeout(10):
            while len(recorder.forwarded) < 5:
                recorder.arrived.clear()
                await recorder.arrived.wait()
        await shim.shutdown(task)
        await server.shutdown()

    try:
        run(main(), timeout=60)
    finally:
        shim.cleanup()
    seen = [(ns, req.envelope.namespace, req.envelope.topic, req.envelope.event.type_url)
            for ns, req in recorder.forwarded[1:]]
    assert seen == [
        (GO_NAMESPACE, GO_NAMESPACE, f"/tasks/{topic}", f"containerd.events.Task{name}")
        for topic, name in [("create", "Create"), ("start", "Start"), ("exit", "Exit"),
                            ("delete", "Delete")]
    ]
