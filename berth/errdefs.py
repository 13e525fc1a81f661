"""Berth's closed set of errors, and the one place that maps them to gRPC status codes.

Every subsystem raises these (never a bare ``Exception`` for a user-facing failure). The gRPC edge
turns them into status codes with :func:`to_grpc_code`; clients turn codes back with
:func:`from_grpc_code`. The message is for a person: say what went wrong and, where it helps, what
to do about it.
"""

from __future__ import annotations

import grpc


class BerthError(Exception):
    """Base of every error Berth reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class NotFound(BerthError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BerthError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(BerthError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(BerthError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(BerthError):
    """The object changed underneath the caller (an update raced another)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(BerthError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unavailable(BerthError):
    """Retry later: the resource is busy (for example, a ref being written by someone else)."""

    code = grpc.StatusCode.UNAVAILABLE


class NotImplementedByBerth(BerthError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Aborted(BerthError):
    code = grpc.StatusCode.ABORTED


class Canceled(BerthError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(BerthError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(BerthError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[BerthError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: NotImplementedByBerth,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.CANCELLED: Canceled,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}


def to_grpc_code(err: BaseException) -> grpc.StatusCode:
    """The status code a servicer answers with for ``err``."""
    if isinstance(err, BerthError):
        return err.code
    if isinstance(err, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, FileExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    return grpc.StatusCode.UNKNOWN


def from_grpc_code(code: grpc.StatusCode, message: str) -> BerthError:
    """The Berth error a client raises for a status it received."""
    cls = _BY_CODE.get(code, BerthError)
    return cls(message)
