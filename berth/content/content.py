"""The content store's interfaces.

A store holds immutable blobs named by digest (``sha256:<hex>``). Blobs enter only through an
ingest: a :class:`Writer` opened under a *ref* (a caller-chosen name for the upload). Contract:

* One writer per ref at a time. Opening a second writer for a ref that is being written raises
  ``Unavailable`` (the caller retries later).
* An ingest survives its writer and the daemon: reopening the ref resumes at the offset already
  written (``Status.offset``). ``abort`` discards it.
* ``commit(size, expected)`` verifies the bytes written: a size or digest mismatch raises
  ``FailedPrecondition`` and stores nothing. Committing a blob that already exists raises
  ``AlreadyExists`` (the ingest is discarded; the blob is intact). A committed blob is immutable
  and visible atomically: no reader ever sees part of one.
* ``delete`` removes a blob; readers already open keep reading it.

The local store has no notion of namespaces or labels: ``berth.metadata`` wraps it to scope blobs
to namespaces and to keep labels, which is what the gRPC API serves.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from berth.filters import Adaptor, adapt_labels


@dataclass
class Info:
    digest: str
    size: int
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: int  # nanoseconds since the epoch
    updated_at: int


def info_adaptor(info: Info) -> Adaptor:
    """Filter fields of a blob: ``digest``, ``size`` (decimal) and ``labels.<key>``."""

    def adapt(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        if fieldpath[0] == "digest":
            return info.digest, True
        if fieldpath[0] == "size":
            return str(info.size), True
        if fieldpath[0] == "labels":
            return adapt_labels(info.labels, fieldpath)
        return "", False

    return adapt


def status_adaptor(status: Status) -> Adaptor:
    """Filter fields of an ingest: ``ref`` and ``expected`` (present when announced)."""

    def adapt(fieldpath: Sequence[str]) -> tuple[str, bool]:
        if len(fieldpath) != 1:
            return "", False
        if fieldpath[0] == "ref":
            return status.ref, True
        if fieldpath[0] == "expected":
            return status.expected, status.expected != ""
        return "", False

    return adapt


class ReaderAt(abc.ABC):
    """Random access to one committed blob."""

    @property
    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset``; fewer only at the end of the blob."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ReaderAt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Writer(abc.ABC):
    """An open ingest. Not safe for use from two threads at once."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int:
        """Append ``data`` at the current offset."""

    @abc.abstractmethod
    def status(self) -> Status: ...

    @abc.abstractmethod
    def digest(self) -> str:
        """The digest of the bytes written so far."""

    @abc.abstractmethod
    def truncate(self, size: int) -> None:
        """Drop what was written after ``size`` (only 0 need be supported)."""

    @abc.abstractmethod
    def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> str:
        """Verify and commit; returns the digest. ``size`` 0 and ``expected`` '' skip that check.
        The writer is closed afterwards, whether it succeeded or not. ``labels`` go on the
        committed blob in a store that keeps labels (the metadata store); the local store keeps
        none and ignores them, as containerd's does without a label store."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the ref without discarding what was written (it can be resumed)."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Provider(abc.ABC):
    @abc.abstractmethod
    def info(self, digest: str) -> Info:
        """NotFound if the blob does not exist."""

    @abc.abstractmethod
    def reader(self, digest: str) -> ReaderAt:
        """NotFound if the blob does not exist."""


class Ingester(abc.ABC):
    @abc.abstractmethod
    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> Writer:
        """Open (or resume) the ingest ``ref``. If ``expected`` names a blob that already exists,
        raise AlreadyExists. Unavailable if another writer holds ``ref``."""


class Manager(abc.ABC):
    @abc.abstractmethod
    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the labels of a blob (``labels`` or ``labels.<key>`` paths; all labels when no
        path is given)."""

    @abc.abstractmethod
    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Every blob matching any of ``filters`` (containerd filter syntax; none matches all)."""

    @abc.abstractmethod
    def delete(self, digest: str) -> None:
        """NotFound if the blob does not exist."""


class IngestManager(abc.ABC):
    @abc.abstractmethod
    def status(self, ref: str) -> Status:
        """NotFound if there is no such ingest."""

    @abc.abstractmethod
    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]: ...

    @abc.abstractmethod
    def abort(self, ref: str) -> None:
        """Discard an ingest; NotFound if there is none."""


class Store(Provider, Ingester, Manager, IngestManager, abc.ABC):
    """A full content store."""


class _ReaderAtStream(io.RawIOBase):
    def __init__(self, reader: ReaderAt) -> None:
        self._reader = reader
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._reader.read_at(self._offset, len(buffer))
        n = len(data)
        buffer[:n] = data
        self._offset += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


def open_stream(reader: ReaderAt, buffer_size: int = 256 << 10) -> BinaryIO:
    """A sequential, buffered stream over ``reader`` from its start; closing it closes
    ``reader``. (A layer's decompressor reads 128 KiB at a time and several layers are read at
    once: a larger buffer buys no speed, only peak memory.)"""
    return io.BufferedReader(_ReaderAtStream(reader), buffer_size)
