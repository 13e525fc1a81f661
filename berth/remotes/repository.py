"""One repository at one registry, as the fetcher, pusher and resolver see it: the hosts to
try, URL paths, auth scopes, and the fail-over loop over mirrors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, urlencode

from berth import errdefs
from berth.oci import image
from berth.remotes.auth import repository_scope
from berth.remotes.hosts import RegistryHost
from berth.remotes.reference import Reference
from berth.remotes.session import RegistrySession

MANIFEST_MEDIA_TYPES = frozenset(
    {
        image.MEDIA_TYPE_MANIFEST,
        image.MEDIA_TYPE_INDEX,
        image.DOCKER_MANIFEST,
        image.DOCKER_MANIFEST_LIST,
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
# What a resolve accepts, most wanted first; "*/*" lets odd registries answer at all.
RESOLVE_ACCEPT = ", ".join(
    [
        image.MEDIA_TYPE_INDEX,
        image.DOCKER_MANIFEST_LIST,
        image.MEDIA_TYPE_MANIFEST,
        image.DOCKER_MANIFEST,
        "*/*",
    ]
)

T = TypeVar("T")


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFEST_MEDIA_TYPES


@dataclass(frozen=True)
class Repository:
    """``ref``'s repository reached through ``hosts`` (already filtered by capability)."""

    session: RegistrySession
    ref: Reference
    hosts: Sequence[RegistryHost]

    def path(self, host: RegistryHost, kind: str, obj: str = "", **query: str) -> str:
        """``/<repo>/<kind>/<obj>?...`` under the host's API root; mirrors get ``ns=``."""
        path = f"/{self.ref.repository}/{kind}/{quote(obj, safe=':@/')}"
        params = dict(query)
        if host.is_mirror:
            params["ns"] = self.ref.host
        return path + ("?" + urlencode(params) if params else "")

    def pull_scopes(self) -> tuple[str, ...]:
        return (repository_scope(self.ref.repository, "pull"),)

    def push_scopes(self) -> tuple[str, ...]:
        return (repository_scope(self.ref.repository, "pull", "push"),)

    def each_host(self, attempt: Callable[[RegistryHost, bool], T]) -> T:
        """``attempt(host, is_last)`` on each host in order until one succeeds.

        Any Berth error moves on to the next host: a mirror that is down, lacks the content or
        refuses us must not stop a pull the origin can serve. Only the last host (normally the
        origin) gets retries with backoff, so a dead mirror costs one failed connection, not a
        backoff series, per request. If every host fails, the last host's error is raised (the
        origin's answer is the authoritative one) with the others' failures in its message.
        """
        failures: list[tuple[RegistryHost, errdefs.BerthError]] = []
        for i, host in enumerate(self.hosts):
            try:
                return attempt(host, i == len(self.hosts) - 1)
            except errdefs.BerthError as err:
                failures.append((host, err))
        if not failures:
            raise errdefs.FailedPrecondition(f"no registry host is configured for {self.ref.name}")
        last = failures[-1][1]
        if len(failures) == 1:
            raise last
        others = "; ".join(f"{h.url}: {e}" for h, e in failures[:-1])
        combined = type(last)(f"{last} (also tried {others})")
        raise combined from last
