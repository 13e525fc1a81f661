"""The registry client's interfaces.

A :class:`Resolver` turns a reference (``docker.io/library/busybox:latest``,
``127.0.0.1:5000/x/y@sha256:...``) into the descriptor of what it names (an index or a manifest),
and hands out a :class:`Fetcher` and a :class:`Pusher` bound to that reference's repository.

Contracts every implementation keeps:

* Registries are tried in the order the hosts configuration gives (mirrors first, then the
  origin), each with the capabilities it was given (``pull``, ``resolve``, ``push``).
* Credentials come from a :class:`Credentials` callback per host; bearer and basic challenges
  (``WWW-Authenticate``) are answered transparently, tokens cached per scope. A challenge is
  answered with the credentials of the host that sent it: a registry's never go to a host it
  redirects to, nor to a token realm that host names. Redirects never go from HTTPS to HTTP.
* Response bodies are read into memory only with a bound (``ResourceExhausted`` beyond it).
* Transient failures (connection errors, 429, 5xx) are retried with backoff a bounded number of
  times; then ``errdefs.Unavailable`` says which registry failed and how.
* Manifests and indexes larger than ``MAX_MANIFEST_SIZE`` are refused (``InvalidArgument``)
  before they are read whole.
* Fetchers never verify digests: the content store does that on commit. They only deliver bytes.
* Errors are Berth's: ``NotFound`` (no such tag, repository or blob), ``PermissionDenied``-style
  ``FailedPrecondition`` for 401/403 with what to do (``berth login HOST``), ``Unavailable`` for
  unreachable registries.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import BinaryIO

from berth.oci.image import Descriptor

MAX_MANIFEST_SIZE = 4 << 20

# host -> (username, secret); an empty username with a secret is an identity token. The host
# is the server's own host[:port] as the hosts configuration names it ("registry-1.docker.io"
# for docker.io references, a mirror's address for a mirror), so one callback serves mirrors too.
Credentials = Callable[[str], tuple[str, str] | None]


class Fetcher(abc.ABC):
    @abc.abstractmethod
    def fetch(self, desc: Descriptor, offset: int = 0) -> BinaryIO:
        """A stream of the blob or manifest ``desc`` from byte ``offset`` (a Range request; a
        registry that ignores ranges is handled by skipping). The caller closes it."""


class Pusher(abc.ABC):
    @abc.abstractmethod
    def exists(self, desc: Descriptor) -> bool:
        """Whether the registry already has ``desc`` in this repository."""

    @abc.abstractmethod
    def mount(self, desc: Descriptor, from_repository: str) -> bool:
        """Try a cross-repository blob mount; True if the registry now has the blob."""

    @abc.abstractmethod
    def push(self, desc: Descriptor, data: Callable[[], BinaryIO], ref: str = "") -> None:
        """Upload a blob, or (for manifest and index media types) a manifest under ``ref``
        (a tag, or the digest when empty). ``data`` opens the bytes from their start; it may be
        called again to retry."""


class Resolver(abc.ABC):
    @abc.abstractmethod
    def resolve(self, ref: str) -> tuple[str, Descriptor]:
        """The normalized name and the descriptor ``ref`` points at."""

    @abc.abstractmethod
    def fetcher(self, ref: str) -> Fetcher: ...

    @abc.abstractmethod
    def pusher(self, ref: str) -> Pusher: ...
