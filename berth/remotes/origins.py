"""Where a URL points, for deciding what may be sent to it (sans-IO).

Credentials and a registry's configured headers belong to one origin (scheme, host, port). A
redirect or a ``Location`` can name any other; these helpers say whether two URLs share an
origin, name a URL's host the way the hosts configuration and credential stores do, and follow
a redirect only where following is safe: never from HTTPS to plain HTTP (that would hand what
TLS protected, the request and whatever answers it, to anyone on the path).
"""

from __future__ import annotations

from urllib.parse import SplitResult, urljoin, urlsplit

from berth import errdefs

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # (scheme, host, port), lower-case, port made explicit


def _split(url: str) -> tuple[SplitResult, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as err:  # "host:port" with a port that is not a number or out of range
        raise errdefs.InvalidArgument(f"invalid URL {display(url)!r}: {err}") from err
    return parts, port


def origin(url: str) -> Origin:
    """``url``'s origin; the default port of its scheme when it names none, so that
    ``https://h`` and ``https://h:443`` are one origin."""
    parts, port = _split(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def same_origin(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` have the same scheme, host and port (user info never counts)."""
    return origin(a) == origin(b)


def authority(url: str) -> str:
    """``host[:port]`` of ``url`` as the hosts configuration and docker config name a server:
    lower-case, without user info, without the scheme's default port, IPv6 in brackets."""
    parts, port = _split(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


def display(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: enough to say where, without user info or a
    query (signed storage URLs carry their signature there; errors and logs must not)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def is_downgrade(source: str, target: str) -> bool:
    """Whether going from ``source`` to ``target`` leaves HTTPS for plain HTTP."""
    return (
        urlsplit(source).scheme.lower() == "https" and urlsplit(target).scheme.lower() == "http"
    )


def check_no_downgrade(source: str, target: str, why: str) -> None:
    """FailedPrecondition when ``target`` would be plain HTTP after ``source`` was HTTPS;
    ``why`` says how we got there ("redirected", "gave the upload location")."""
    if is_downgrade(source, target):
        raise errdefs.FailedPrecondition(
            f"{display(source)} {why} {display(target)}: refusing to go from HTTPS to plain "
            "HTTP (what TLS protected would travel in the clear)"
        )


def follow_redirect(current: str, location: str) -> str:
    """The absolute URL a redirect from ``current`` with ``Location: location`` leads to.

    FailedPrecondition when it leaves HTTP(S) altogether or goes from HTTPS to plain HTTP.
    """
    target = urljoin(current, location)
    if urlsplit(target).scheme.lower() not in DEFAULT_PORTS:
        raise errdefs.FailedPrecondition(
            f"{display(current)} redirected to {display(target)}, which is not an HTTP(S) URL"
        )
    check_no_downgrade(current, target, "redirected to")
    return target
