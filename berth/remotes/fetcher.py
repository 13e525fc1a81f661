"""Fetching manifests and blobs from a registry, streamed."""

from __future__ import annotations

import functools
import io
import re
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from berth import errdefs
from berth.oci.image import Descriptor
from berth.remotes.errors import network_reason, raise_for_status
from berth.remotes.hosts import RegistryHost
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Fetcher
from berth.remotes.repository import Repository, is_manifest

STREAM_BUFFER = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RegistryFetcher(Fetcher):
    """Fetches content of one repository, trying its pull hosts in order.

    Manifests and indexes are asked for at ``/manifests/<digest>`` first (mirrors and
    registries may keep them only there), then ``/blobs/<digest>``; anything else at
    ``/blobs/<digest>``. The returned stream is an ``io.BufferedReader``: ``read(n)`` blocks
    for ``n`` bytes or the end. It never yields more than ``desc.size - offset`` bytes (more is
    an ``InvalidArgument``) nor, for manifests, more than ``MAX_MANIFEST_SIZE``; a connection
    lost mid-body raises ``Unavailable`` from ``read`` (fetch again with ``offset`` to resume).
    Digests are not verified here: the content store does that on commit.
    """

    def __init__(self, repository: Repository) -> None:
        self._repo = repository

    def fetch(self, desc: Descriptor, offset: int = 0) -> BinaryIO:
        manifest = is_manifest(desc.media_type)
        if manifest and desc.size > MAX_MANIFEST_SIZE:
            raise errdefs.InvalidArgument(
                f"refusing manifest {desc.digest} of {desc.size} bytes: more than the "
                f"{MAX_MANIFEST_SIZE} bytes a manifest may have"
            )
        if offset < 0 or (desc.size > 0 and offset > desc.size):
            raise errdefs.OutOfRange(f"offset {offset} is outside {desc.digest} ({desc.size} B)")
        kinds = ("manifests", "blobs") if manifest else ("blobs",)
        first_error: errdefs.BerthError | None = None
        for kind in kinds:
            try:
                opener = functools.partial(self._open, kind=kind, desc=desc, offset=offset)
                return self._repo.each_host(opener)
            except errdefs.NotFound as err:
                first_error = first_error or err
        assert first_error is not None
        raise first_error

    def _open(
        self, host: RegistryHost, last: bool, kind: str, desc: Descriptor, offset: int
    ) -> BinaryIO:
        manifest = is_manifest(desc.media_type)
        what = f"{self._repo.ref.name}@{desc.digest}"
        headers = {"Accept": f"{desc.media_type}, */*"} if manifest else {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._repo.session.request(
            "GET",
            host,
            self._repo.path(host, kind, desc.digest),
            scopes=self._repo.pull_scopes(),
            target=what,
            headers=headers,
            stream=True,
            retry=last,
        )
        if resp.status == 416 and desc.size > 0 and offset == desc.size:
            _discard(resp)
            return io.BufferedReader(io.BytesIO(b""))
        if resp.status not in (200, 206):
            raise_for_status(resp, what, host.host)
            _discard(resp)
            raise errdefs.FailedPrecondition(
                f"{what}: unexpected HTTP {resp.status} from {host.host}"
            )
        skip = 0
        if offset and resp.status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                _discard(resp)
                raise errdefs.FailedPrecondition(
                    f"{what}: {host.host} answered range {offset}- with "
                    f"{resp.headers.get('Content-Range')!r}"
                )
        elif offset:
            skip = offset  # the registry ignored Range: read past what we already have
        limit = desc.size - offset if desc.size > 0 else None
        if manifest:
            limit = MAX_MANIFEST_SIZE if limit is None else min(limit, MAX_MANIFEST_SIZE)
        length = resp.headers.get("Content-Length")
        if limit is not None and length is not None and length.isdigit():
            announced = int(length) - skip
            if announced > limit:
                _discard(resp)
                raise errdefs.InvalidArgument(_too_long(what, host.host, announced, limit))
        raw = _ResponseReader(resp, host.host, what, skip, limit)
        return io.BufferedReader(raw, buffer_size=STREAM_BUFFER)


def _too_long(what: str, host: str, got: int, limit: int) -> str:
    return f"{what}: {host} sent {got} bytes or more, more than the {limit} expected"


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Drop a response whose body we will not read (the connection is not reused)."""
    resp.close()
    resp.release_conn()


class _ResponseReader(io.RawIOBase):
    """A response body as a raw stream: skips ``skip`` bytes first, enforces ``limit``,
    translates network errors, and returns the connection to the pool at the end."""

    def __init__(
        self,
        resp: urllib3.BaseHTTPResponse,
        host: str,
        what: str,
        skip: int,
        limit: int | None,
    ) -> None:
        super().__init__()
        self._resp, self._host, self._what = resp, host, what
        self._skip, self._limit = skip, limit
        self._delivered = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._eof or len(buffer) == 0:
            return 0
        while self._skip:
            dropped = self._read(min(self._skip, STREAM_BUFFER))
            if not dropped:
                raise errdefs.Unavailable(f"{self._what}: {self._host} ended before the offset")
            self._skip -= len(dropped)
        data = self._read(len(buffer))
        if not data:
            self._eof = True
            self._resp.release_conn()
            return 0
        self._delivered += len(data)
        if self._limit is not None and self._delivered > self._limit:
            self.close()
            raise errdefs.InvalidArgument(
                _too_long(self._what, self._host, self._delivered, self._limit)
            )
        n = len(data)
        buffer[:n] = data
        return n

    def _read(self, n: int) -> bytes:
        try:
            return self._resp.read1(n)
        except Urllib3Error as err:
            self.close()
            raise errdefs.Unavailable(
                f"{self._what}: lost the connection to registry {self._host} after "
                f"{self._delivered} bytes: {network_reason(err)}; fetch again to resume"
            ) from err

    def close(self) -> None:
        if not self.closed:
            if not self._eof:
                self._resp.close()  # do not drain what may be gigabytes
            self._resp.release_conn()
        super().close()
