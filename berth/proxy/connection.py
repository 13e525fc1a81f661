"""The connection every proxy makes its calls on: one gRPC channel to berthd.

Each call carries containerd's headers: the namespace (the connection's own when it was bound
to one, else the caller's current one, :func:`berth.namespaces.current_or_none`) and the lease (the
connection's :attr:`Connection.lease_id` when set, else :func:`berth.leases.current`). A failed
call raises Berth's error for its status code (:func:`berth.errdefs.from_grpc_code`, the client
side of the one mapping), with plain words for a daemon that is not there or too old; no caller
sees a raw gRPC exception, not even from a stream that breaks off half-way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Final, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from berth import errdefs, leases, namespaces
from berth.plugin.config import DEFAULT_ADDRESS

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Headers = tuple[tuple[str, str], ...]


class _Default(enum.Enum):
    TIMEOUT = enum.auto()


DEFAULT_TIMEOUT: Final = _Default.TIMEOUT
"""Stands for "the connection's timeout" where None already means "no deadline"."""

Timeout = float | None | _Default


class Waiting(Protocol[T_co]):
    """A unary call in flight (``stub.Method.future(...)``)."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co: ...

    def cancel(self) -> bool: ...


class Connection:
    """A channel to berthd at ``address`` and how calls are made on it.

    ``namespace`` None means "the caller's current namespace, per call"; ``timeout`` is the
    default deadline of unary calls (None: none). Safe for use from several threads.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, namespace: str | None = None,
                 timeout: float | None = 30.0) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.lease_id: str | None = None
        self._channel = grpc.insecure_channel(f"unix:{address}")

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def headers(self) -> Headers:
        """The metadata of a call made now. With no namespace known, none is sent: berthd
        refuses a call that needs one (FailedPrecondition), and serves one that does not
        (the Namespaces service's)."""
        ns = self.namespace if self.namespace is not None else namespaces.current_or_none()
        md: Headers = ((namespaces.GRPC_HEADER, ns),) if ns is not None else ()
        lease = self.lease_id or leases.current()
        if lease:
            md += ((leases.GRPC_HEADER, lease),)
        return md

    def error(self, err: grpc.RpcError) -> errdefs.BerthError:
        """The Berth error for a failed call."""
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (err.details() if isinstance(err, grpc.Call) else str(err)) or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # gRPC's own words for a connection that never was or broke; anything else
            # UNAVAILABLE came from berthd (a registry it could not reach, say).
            if details.startswith("failed to connect to all addresses"):
                reason = details.rpartition("error: ")[2] if "error: " in details else details
                return errdefs.Unavailable(
                    f"cannot reach berthd at {self.address} ({reason}): is it running? "
                    "(choose the socket with --address or BERTH_ADDRESS)")
            if details in ("Socket closed", "Connection reset by peer", "") or \
                    details.startswith("recvmsg:"):
                return errdefs.Unavailable(
                    f"lost the connection to berthd at {self.address} ({details or 'closed'})")
        if code == grpc.StatusCode.UNIMPLEMENTED and (
                details == "Method not found!" or details.endswith("not implemented by berthd")):
            return errdefs.NotImplementedByBerth(
                f"berthd at {self.address} does not serve this call ({details}); is it older "
                "than this berth?")
        return errdefs.from_grpc_code(code, details or str(code))

    def call(self, method: Callable[..., T], request: Message, *,
             timeout: Timeout = DEFAULT_TIMEOUT) -> T:
        """A unary call; ``timeout=None`` waits as long as it takes."""
        deadline = self.timeout if timeout is DEFAULT_TIMEOUT else timeout
        try:
            return method(request, timeout=deadline, metadata=self.headers())
        except grpc.RpcError as err:
            raise self.error(err) from None

    def stream(self, method: Callable[..., Iterable[T]],
               request: Message | Iterator[Message]) -> Generator[T, None, None]:
        """A server-streaming (or, given an iterator of requests, bidirectional) call with no
        deadline. The call starts at once; closing the iterator cancels it."""
        try:
            responses = method(request, metadata=self.headers())
        except grpc.RpcError as err:
            raise self.error(err) from None
        return self._responses(responses)

    def _responses(self, responses: Iterable[T]) -> Generator[T, None, None]:
        try:
            yield from responses
        except grpc.RpcError as err:
            raise self.error(err) from None
        finally:
            cancel = getattr(responses, "cancel", None)
            if callable(cancel):
                cancel()

    def future(self, method: Callable[..., Waiting[T]], request: Message) -> Waiting[T]:
        """A unary call started now and answered later (no deadline); its ``result`` raises
        Berth's errors, and TimeoutError when ``timeout`` passes first."""
        return _Future(self, method(request, metadata=self.headers()))

    def close(self) -> None:
        self._channel.close()


class _Future(Waiting[T]):
    def __init__(self, conn: Connection, inner: Waiting[T]) -> None:
        self._conn = conn
        self._inner = inner

    def done(self) -> bool:
        return self._inner.done()

    def result(self, timeout: float | None = None) -> T:
        try:
            return self._inner.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no answer within {timeout} s") from None
        except grpc.RpcError as err:
            raise self._conn.error(err) from None

    def cancel(self) -> bool:
        return self._inner.cancel()
