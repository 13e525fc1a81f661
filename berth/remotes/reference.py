"""Image references, parsed and normalized the way docker and containerd's CRI do.

Grammar (docker/distribution's ``reference`` package)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component ( "/" path-component )*
    domain     := host [ ":" port ]        host: DNS label(s) or "[" IPv6 "]"
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex{32,}    (Berth accepts sha256 only)

Normalization: the first path element is a domain only if it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the domain is ``docker.io``.
``index.docker.io`` becomes ``docker.io``, and a one-element Docker Hub path gets ``library/``.
Without a tag or digest the tag is ``latest``. So ``busybox`` is
``docker.io/library/busybox:latest`` and ``127.0.0.1:5000/x/y@sha256:...`` keeps its digest and
gets no tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth import errdefs
from berth.digest import validate_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(_DOMAIN)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_HEX64_RE = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalized reference. ``host`` is the domain as written in references (``docker.io``,
    not ``registry-1.docker.io``: the hosts configuration maps one to the other)."""

    host: str
    repository: str  # "library/busybox"
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``host/repository``: what containerd calls the locator."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest when there is one
        (it pins the content; the tag is then informational), else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form people type: ``busybox:latest`` for Docker Hub official images."""
        name = self.name
        if self.host == DEFAULT_DOMAIN:
            name = self.repository.removeprefix(OFFICIAL_REPO_PREFIX)
        return name + str(self)[len(self.name) :]

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest (InvalidArgument for a bad tag)."""
        if not _TAG_RE.fullmatch(tag):
            raise errdefs.InvalidArgument(f"invalid tag {tag!r}")
        return Reference(self.host, self.repository, tag)


def is_tag(tag: str) -> bool:
    """Whether ``tag`` is a valid tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)."""
    return _TAG_RE.fullmatch(tag) is not None


def _invalid(ref: str, why: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"invalid reference {ref!r}: {why}")


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_domain = bool(slash) and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )
    domain, remainder = (first, rest) if is_domain else (DEFAULT_DOMAIN, name)
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize ``ref``; ``InvalidArgument`` says what is wrong with it.

    With ``default_tag`` (the default) a reference without tag or digest gets ``latest``;
    without it, such a reference has an empty ``object`` (a bare repository, e.g. for
    ``berth login`` or a push target named later).
    """
    if not ref:
        raise errdefs.InvalidArgument("invalid reference: it is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise _invalid(ref, "it contains whitespace")
    if _HEX64_RE.fullmatch(ref):
        raise _invalid(ref, "a 64-character hexadecimal string is an image ID, not a name")
    rest, at, digest = ref.partition("@")
    if at:
        if not _DIGEST_RE.fullmatch(digest):
            raise _invalid(ref, f"{digest!r} is not a digest (expected sha256:<64 hex digits>)")
        validate_digest(digest)
    name, tag = rest, ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a colon after the last slash separates the tag
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(ref, f"tag {tag!r} is not valid (letters, digits, _ . -; max 128)")
    if not name:
        raise _invalid(ref, "the repository name is missing")
    domain, path = _split_domain(name)
    if path.lower() != path:
        raise _invalid(ref, f"repository name {path!r} must be lowercase")
    if not _DOMAIN_RE.fullmatch(domain):
        raise _invalid(ref, f"{domain!r} is not a valid registry host")
    if not _PATH_RE.fullmatch(path):
        raise _invalid(
            ref,
            f"repository name {path!r} is not valid (lowercase letters and digits, "
            "separated by '.', '_', '__' or '-', in '/'-separated parts)",
        )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(ref, f"the name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
