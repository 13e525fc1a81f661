"""Pushing blobs and manifests to a registry (the distribution spec's upload protocol).

A blob goes up as ``POST /<repo>/blobs/uploads/`` (202 + ``Location``), then either one
``PUT <location>?digest=<d>`` carrying the whole body (monolithic, the default), or ``PATCH``
chunks with ``Content-Range`` followed by an empty ``PUT ...?digest=``. ``Location`` may be
relative and may carry its own query; each answer's ``Location`` replaces the previous one.
A failed upload is started over in a new session (the registry purges abandoned ones), up to
the session's retry policy, because a half-sent body cannot be trusted to resume cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlencode, urljoin

import urllib3

from berth import errdefs
from berth.oci.image import Descriptor
from berth.remotes.auth import repository_scope
from berth.remotes.errors import raise_for_status, read_error_body
from berth.remotes.reference import is_tag
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Pusher
from berth.remotes.repository import Repository, is_manifest

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"


class RegistryPusher(Pusher):
    """Pushes to one repository through the first host that has the ``push`` capability
    (like containerd: mirrors are for pulling). ``chunk_size`` None uploads monolithically.

    ``push`` always uploads: call ``exists`` or ``mount`` first to skip what is there.
    """

    def __init__(self, repository: Repository, *, chunk_size: int | None = None) -> None:
        if not repository.hosts:
            raise errdefs.FailedPrecondition(
                f"no host in the hosts configuration for {repository.ref.host} may be pushed to "
                "(capability 'push')"
            )
        if chunk_size is not None and chunk_size <= 0:
            raise errdefs.InvalidArgument("chunk_size must be positive")
        self._repo = repository
        self._host = repository.hosts[0]
        self._chunk_size = chunk_size

    def _what(self, desc: Descriptor) -> str:
        return f"{self._repo.ref.name}@{desc.digest}"

    def exists(self, desc: Descriptor) -> bool:
        kind = "manifests" if is_manifest(desc.media_type) else "blobs"
        headers = {"Accept": desc.media_type} if kind == "manifests" else {}
        resp = self._repo.session.request(
            "HEAD",
            self._host,
            self._repo.path(self._host, kind, desc.digest),
            scopes=self._repo.push_scopes(),
            target=self._what(desc),
            headers=headers,
        )
        if resp.status == 404:
            return False
        raise_for_status(resp, self._what(desc), self._host.host)
        return True

    def mount(self, desc: Descriptor, from_repository: str) -> bool:
        if from_repository == self._repo.ref.repository:
            return self.exists(desc)
        resp = self._repo.session.request(
            "POST",
            self._host,
            self._repo.path(
                self._host, "blobs", "uploads/", mount=desc.digest, **{"from": from_repository}
            ),
            scopes=(*self._repo.push_scopes(), repository_scope(from_repository, "pull")),
            target=self._what(desc),
            headers={"Content-Length": "0"},
        )
        if resp.status == 201:
            return True
        if resp.status == 202:
            # Not mounted (unknown blob, or no access to the source): the registry opened an
            # upload session instead. Cancel it rather than leave it to the purger.
            self._cancel(resp)
            return False
        raise_for_status(resp, f"mount of {desc.digest} from {from_repository}", self._host.host)
        return False

    def _cancel(self, resp: urllib3.BaseHTTPResponse) -> None:
        location = resp.headers.get("Location")
        if not location:
            return
        url = urljoin(self._repo.session.base_url(self._host) + "/", location)
        try:
            cancel = self._repo.session.request(
                "DELETE", self._host, url, scopes=self._repo.push_scopes(), retry=False
            )
        except errdefs.BerthError as err:
            log.info("could not cancel the upload session %s: %s", url, err)
            return
        if cancel.status not in (202, 204, 404):
            log.info("cancelling upload session %s: HTTP %s", url, cancel.status)

    def push(self, desc: Descriptor, data: Callable[[], BinaryIO], ref: str = "") -> None:
        if is_manifest(desc.media_type):
            self._put_manifest(desc, data, ref)
        else:
            self._upload_blob(desc, data)

    # -- manifests --------------------------------------------------------------------------

    def _put_manifest(self, desc: Descriptor, data: Callable[[], BinaryIO], ref: str) -> None:
        name = ref or desc.digest
        if ref and not ref.startswith("sha256:") and not is_tag(ref):
            raise errdefs.InvalidArgument(f"cannot push a manifest under {ref!r}: not a tag")
        with data() as stream:
            body = stream.read(MAX_MANIFEST_SIZE + 1)
        if len(body) > MAX_MANIFEST_SIZE:
            raise errdefs.InvalidArgument(
                f"manifest {desc.digest} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        if len(body) != desc.size:
            raise errdefs.InvalidArgument(
                f"manifest {desc.digest}: the data has {len(body)} bytes, the descriptor "
                f"says {desc.size}"
            )
        what = f"{self._repo.ref.name}:{name}" if ref else self._what(desc)
        resp = self._repo.session.request(
            "PUT",
            self._host,
            self._repo.path(self._host, "manifests", name),
            scopes=self._repo.push_scopes(),
            target=what,
            headers={"Content-Type": desc.media_type},
            body=body,
        )
        raise_for_status(resp, what, self._host.host)
        self._check_digest(resp, desc, what)

    # -- blobs ------------------------------------------------------------------------------

    def _upload_blob(self, desc: Descriptor, data: Callable[[], BinaryIO]) -> None:
        policy = self._repo.session.retry
        for attempt in range(policy.max_retries + 1):
            # Starting is retried by the session itself; only a failure while sending the
            # data starts the whole upload over, so a dead registry is not retried twice over.
            location = self._start_upload(desc)
            try:
                if self._chunk_size is not None and desc.size > self._chunk_size:
                    self._upload_chunks(desc, data, location)
                else:
                    self._upload_whole(desc, data, location)
                return
            except errdefs.Unavailable as err:
                if attempt >= policy.max_retries:
                    raise
                log.info("upload of %s failed (%s); starting over", desc.digest, err)
                self._repo.session.sleep(policy.delay(attempt))

    def _start_upload(self, desc: Descriptor) -> str:
        path = self._repo.path(self._host, "blobs", "uploads/")
        resp = self._repo.session.request(
            "POST",
            self._host,
            path,
            scopes=self._repo.push_scopes(),
            target=self._what(desc),
            headers={"Content-Length": "0"},
        )
        if resp.status != 202:
            raise_for_status(resp, f"upload of {self._what(desc)}", self._host.host)
        return self._location(resp, self._repo.session.base_url(self._host) + path)

    def _location(self, resp: urllib3.BaseHTTPResponse, request_url: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise errdefs.FailedPrecondition(
                f"registry {self._host.host} started an upload without a Location header"
            )
        return urljoin(request_url, location)

    def _upload_whole(self, desc: Descriptor, data: Callable[[], BinaryIO], url: str) -> None:
        resp = self._repo.session.request(
            "PUT",
            self._host,
            _with_digest(url, desc.digest),
            scopes=self._repo.push_scopes(),
            target=self._what(desc),
            headers={"Content-Type": OCTET_STREAM, "Content-Length": str(desc.size)},
            body=lambda: _Exactly(data(), desc.size, desc.digest),
            retry=False,
        )
        self._finish(resp, desc)

    def _upload_chunks(self, desc: Descriptor, data: Callable[[], BinaryIO], url: str) -> None:
        assert self._chunk_size is not None
        offset = 0
        with data() as stream:
            while offset < desc.size:
                chunk = stream.read(min(self._chunk_size, desc.size - offset))
                if not chunk:
                    raise _short(desc, offset)
                end = offset + len(chunk) - 1
                resp = self._repo.session.request(
                    "PATCH",
                    self._host,
                    url,
                    scopes=self._repo.push_scopes(),
                    target=self._what(desc),
                    headers={
                        "Content-Type": OCTET_STREAM,
                        "Content-Length": str(len(chunk)),
                        "Content-Range": f"{offset}-{end}",
                    },
                    body=chunk,
                    retry=False,
                )
                if resp.status != 202:
                    raise_for_status(resp, f"upload of {self._what(desc)}", self._host.host)
                url = self._location(resp, url)
                offset = end + 1
            if stream.read(1):
                raise errdefs.InvalidArgument(
                    f"the data for {desc.digest} is longer than its {desc.size} bytes"
                )
        resp = self._repo.session.request(
            "PUT",
            self._host,
            _with_digest(url, desc.digest),
            scopes=self._repo.push_scopes(),
            target=self._what(desc),
            headers={"Content-Length": "0"},
            retry=False,
        )
        self._finish(resp, desc)

    def _finish(self, resp: urllib3.BaseHTTPResponse, desc: Descriptor) -> None:
        if resp.status != 201:
            raise_for_status(resp, f"upload of {self._what(desc)}", self._host.host)
            read_error_body(resp)
            raise errdefs.FailedPrecondition(
                f"upload of {self._what(desc)}: unexpected HTTP {resp.status}"
            )
        self._check_digest(resp, desc, self._what(desc))

    def _check_digest(self, resp: urllib3.BaseHTTPResponse, desc: Descriptor, what: str) -> None:
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != desc.digest:
            raise errdefs.InvalidArgument(
                f"{what}: registry {self._host.host} stored digest {stored}, not {desc.digest}"
            )


def _with_digest(url: str, digest: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode({"digest": digest})


def _short(desc: Descriptor, got: int) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(
        f"the data for {desc.digest} ended after {got} of its {desc.size} bytes"
    )


class _Exactly:
    """A body that is exactly ``size`` bytes of ``stream``, or an InvalidArgument: a short
    source would leave the registry waiting for the rest, a long one would be cut silently."""

    def __init__(self, stream: BinaryIO, size: int, digest: str) -> None:
        self._stream, self._left, self._size, self._digest = stream, size, size, digest

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            if self._stream.read(1):
                raise errdefs.InvalidArgument(
                    f"the data for {self._digest} is longer than its {self._size} bytes"
                )
            return b""
        want = self._left if n < 0 else min(n, self._left)
        chunk = self._stream.read(want)
        if not chunk:
            got = self._size - self._left
            raise errdefs.InvalidArgument(
                f"the data for {self._digest} ended after {got} of its {self._size} bytes"
            )
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._stream.close()
