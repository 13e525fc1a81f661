"""Berth's closed set of errors, and the one place that maps them to status codes.

Every subsystem raises these (never a bare ``Exception`` for a user-facing failure). Each error
class carries its :class:`Code` (the gRPC numbering, which ttrpc shares). The gRPC edge turns an
error into a ``grpc.StatusCode`` with :func:`to_grpc_code`; ttrpc uses :func:`code_of` directly;
clients turn codes back into errors with :func:`from_code` / :func:`from_grpc_code`. This module
does not import grpc at load time, so the lean shim process never pays for it.

The message is for a person: say what went wrong and, where it helps, what to do about it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class Code(enum.IntEnum):
    """Status codes, numbered as gRPC (and ttrpc) put them on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class BerthError(Exception):
    """Base of every error Berth reports to a caller."""

    code: Code = Code.UNKNOWN


class NotFound(BerthError):
    code = Code.NOT_FOUND


class AlreadyExists(BerthError):
    code = Code.ALREADY_EXISTS


class InvalidArgument(BerthError):
    code = Code.INVALID_ARGUMENT


class FailedPrecondition(BerthError):
    code = Code.FAILED_PRECONDITION


class OutOfRange(BerthError):
    code = Code.OUT_OF_RANGE


class Unavailable(BerthError):
    """Retry later: the resource is busy (for example, a ref being written by someone else)."""

    code = Code.UNAVAILABLE


class ResourceExhausted(BerthError):
    code = Code.RESOURCE_EXHAUSTED


class NotImplementedByBerth(BerthError):
    code = Code.UNIMPLEMENTED


class Aborted(BerthError):
    code = Code.ABORTED


class Canceled(BerthError):
    code = Code.CANCELLED


class DeadlineExceeded(BerthError):
    code = Code.DEADLINE_EXCEEDED


class Internal(BerthError):
    code = Code.INTERNAL


class Unknown(BerthError):
    """A failure with no better code: what containerd answers for most failed operations
    (a CRI call on a container in the wrong state, for one)."""

    code = Code.UNKNOWN


_BY_CODE: dict[Code, type[BerthError]] = {
    cls.code: cls
    for cls in (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, OutOfRange,
                Unavailable, ResourceExhausted, NotImplementedByBerth, Aborted, Canceled,
                DeadlineExceeded, Internal)
}


def code_of(err: BaseException) -> Code:
    """The status code a failed call answers with for ``err``."""
    if isinstance(err, BerthError):
        return err.code
    if isinstance(err, NotImplementedError):
        return Code.UNIMPLEMENTED
    if isinstance(err, FileNotFoundError):
        return Code.NOT_FOUND
    if isinstance(err, FileExistsError):
        return Code.ALREADY_EXISTS
    return Code.UNKNOWN


def from_code(code: int, message: str) -> BerthError:
    """The Berth error a client raises for a status it received."""
    try:
        cls = _BY_CODE.get(Code(code), BerthError)
    except ValueError:
        cls = BerthError
    return cls(message)


def to_grpc_code(err: BaseException) -> grpc.StatusCode:
    """The gRPC status code for ``err`` (the gRPC edge's view of :func:`code_of`)."""
    import grpc

    number = code_of(err)
    for status in grpc.StatusCode:
        if status.value[0] == number:
            return status
    return grpc.StatusCode.UNKNOWN


def from_grpc_code(code: grpc.StatusCode, message: str) -> BerthError:
    """The Berth error a gRPC client raises for a status it received."""
    return from_code(int(code.value[0]), message)
