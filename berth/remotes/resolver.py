"""The registry resolver: :class:`RegistryResolver` implements :class:`Resolver` over HTTP."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from berth import errdefs
from berth.digest import validate_digest
from berth.oci.image import Descriptor
from berth.remotes import reference
from berth.remotes.auth import Authorizer
from berth.remotes.errors import network_reason, raise_for_status, read_error_body
from berth.remotes.fetcher import RegistryFetcher
from berth.remotes.hosts import (
    CAPABILITY_PULL,
    CAPABILITY_PUSH,
    CAPABILITY_RESOLVE,
    HostsConfig,
    RegistryHost,
)
from berth.remotes.pusher import RegistryPusher
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Credentials, Resolver
from berth.remotes.repository import RESOLVE_ACCEPT, Repository
from berth.remotes.session import RegistrySession, RetryPolicy

OCTET_STREAM = "application/octet-stream"


class RegistryResolver(Resolver):
    """Resolves, fetches and pushes against OCI distribution registries.

    One resolver shares one connection pool, one token cache and one set of learned
    challenges among all its fetchers and pushers, from any number of threads. References are
    normalized like docker's (``busybox`` is ``docker.io/library/busybox:latest``).

    ``hosts`` says which servers serve a registry (mirrors first); ``credentials(host)``
    answers (username, secret) for a server's host name (``registry-1.docker.io`` for the
    Hub). ``plain_http`` uses HTTP for hosts whose scheme the configuration does not state.
    ``max_retries``, ``backoff_base`` and ``backoff_max`` shape the retries (see
    :class:`~berth.remotes.session.RetryPolicy`); ``sleep`` is injectable for tests.
    ``chunk_size`` uploads blobs in PATCH chunks of that many bytes (None: one PUT).
    """

    def __init__(
        self,
        hosts: HostsConfig | None = None,
        credentials: Credentials | None = None,
        *,
        plain_http: bool = False,
        user_agent: str = "berth/0.1",
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 10.0,
        timeout: float = 30.0,
        chunk_size: int | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        hosts = hosts if hosts is not None else HostsConfig()
        self._hosts = hosts.with_plain_http() if plain_http else hosts
        self._chunk_size = chunk_size
        self.session = RegistrySession(
            Authorizer(credentials),
            user_agent=user_agent,
            timeout=timeout,
            retry=RetryPolicy(max_retries, backoff_base, backoff_max),
            headers=headers,
            sleep=sleep,
        )

    def close(self) -> None:
        """Drop pooled connections. The resolver stays usable (it reconnects on demand)."""
        self.session.close()

    def __enter__(self) -> RegistryResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _repository(self, ref: reference.Reference, *capabilities: str) -> Repository:
        hosts = [h for h in self._hosts.hosts(ref.host) if h.capabilities.issuperset(capabilities)]
        if not hosts:
            raise errdefs.FailedPrecondition(
                f"no host in the hosts configuration for {ref.host} has the capabilities "
                f"{', '.join(capabilities)}"
            )
        return Repository(self.session, ref, hosts)

    def resolve(self, ref: str) -> tuple[str, Descriptor]:
        """HEAD (GET when needed) ``/manifests/<tag|digest>`` on each resolve host in order.

        A tag needs ``pull`` and ``resolve`` (only trusted hosts may say what a tag means);
        a digest pins the content, so any ``pull`` host will do, and a digest that is not a
        manifest is looked up under ``/blobs/`` as a last resort. NotFound when no host has it.
        """
        parsed = reference.parse(ref)
        needed = (CAPABILITY_PULL,) if parsed.digest else (CAPABILITY_PULL, CAPABILITY_RESOLVE)
        repo = self._repository(parsed, *needed)
        try:
            desc = repo.each_host(
                lambda host, last: self._resolve_at(repo, host, last, "manifests")
            )
        except errdefs.NotFound:
            if not parsed.digest:
                raise
            desc = repo.each_host(lambda host, last: self._resolve_at(repo, host, last, "blobs"))
        return str(parsed), desc

    def _resolve_at(
        self, repo: Repository, host: RegistryHost, last: bool, kind: str
    ) -> Descriptor:
        ref = repo.ref
        what = str(ref)
        path = repo.path(host, kind, ref.object)
        accept = {"Accept": RESOLVE_ACCEPT}
        resp = self.session.request(
            "HEAD", host, path, scopes=repo.pull_scopes(), target=what, headers=accept, retry=last
        )
        if resp.status == 404:
            raise errdefs.NotFound(f"{what}: not found at {host.url}")
        if 200 <= resp.status < 300:
            header_digest = resp.headers.get("Docker-Content-Digest", "")
            length = resp.headers.get("Content-Length", "")
            digest = ref.digest or header_digest
            if digest and length.isdigit():
                return self._descriptor(what, host, resp, validate_digest(digest), int(length))
        elif resp.status not in (400, 405, 501):  # registries without HEAD: try GET
            raise_for_status(resp, what, host.host)
        return self._resolve_by_get(repo, host, last, path, what)

    def _resolve_by_get(
        self, repo: Repository, host: RegistryHost, last: bool, path: str, what: str
    ) -> Descriptor:
        headers = {"Accept": RESOLVE_ACCEPT}
        resp = self.session.request(
            "GET",
            host,
            path,
            scopes=repo.pull_scopes(),
            target=what,
            headers=headers,
            stream=True,
            retry=last,
        )
        if not 200 <= resp.status < 300:
            raise_for_status(resp, what, host.host)
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
            read_error_body(resp)
            raise _oversize(what, host, int(length))
        try:
            body = resp.read(MAX_MANIFEST_SIZE + 1)
            if len(body) > MAX_MANIFEST_SIZE:
                raise _oversize(what, host, len(body))
        except Urllib3Error as err:
            raise errdefs.Unavailable(
                f"{what}: lost the connection to registry {host.host}: {network_reason(err)}"
            ) from err
        finally:
            resp.close()
            resp.release_conn()
        digest = (
            repo.ref.digest
            or resp.headers.get("Docker-Content-Digest", "")
            or "sha256:" + hashlib.sha256(body).hexdigest()
        )
        return self._descriptor(what, host, resp, validate_digest(digest), len(body))

    def _descriptor(
        self,
        what: str,
        host: RegistryHost,
        resp: urllib3.BaseHTTPResponse,
        digest: str,
        size: int,
    ) -> Descriptor:
        if size > MAX_MANIFEST_SIZE:
            raise _oversize(what, host, size)
        media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return Descriptor(media_type=media_type or OCTET_STREAM, digest=digest, size=size)

    def fetcher(self, ref: str) -> RegistryFetcher:
        """A fetcher for ``ref``'s repository (its tag or digest does not matter)."""
        parsed = reference.parse(ref)
        return RegistryFetcher(self._repository(parsed, CAPABILITY_PULL))

    def pusher(self, ref: str) -> RegistryPusher:
        """A pusher for ``ref``'s repository; a digest reference is refused (InvalidArgument):
        content is pushed by its own digest, and a digest cannot name where to put a tag."""
        parsed = reference.parse(ref, default_tag=False)
        if parsed.digest:
            raise errdefs.InvalidArgument(f"cannot push to a digest reference ({ref})")
        return RegistryPusher(
            self._repository(parsed, CAPABILITY_PUSH), chunk_size=self._chunk_size
        )


def _oversize(what: str, host: RegistryHost, size: int) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(
        f"{what}: refusing a {size}-byte manifest from {host.host}: more than the "
        f"{MAX_MANIFEST_SIZE} bytes a manifest may have"
    )
