"""Registry answers and network failures, translated into Berth's errors in one place.

* 404 → ``NotFound``; 400/413/414 → ``InvalidArgument`` (the registry refused what we sent);
  416 → ``OutOfRange``.
* 401 (after auth was tried) and 403 → ``FailedPrecondition`` naming what to do (``berth
  login HOST``): the closed set in ``berth.errdefs`` has no PermissionDenied or Unauthenticated,
  and "log in first" is a precondition the caller can fix. (If errdefs gains
  ``PermissionDenied``, 403 and rejected credentials belong there.)
* Unreachable registries and 429/5xx after retries → ``Unavailable``.
* A response larger than Berth reads into memory → ``ResourceExhausted`` (:func:`too_large`),
  as gRPC answers a message over its size limit; retrying would only fetch it again.
  (Manifests over ``MAX_MANIFEST_SIZE`` stay ``InvalidArgument``: that is the resolver's and
  fetcher's documented contract.)
* Anything else unexpected → ``FailedPrecondition`` with the status and the registry's message.

The registry's own ``{"errors": [{"code", "message"}]}`` is quoted in every message.
"""

from __future__ import annotations

import json
import ssl

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from berth import errdefs

MAX_ERROR_BODY = 64 << 10


def login_name(host: str) -> str:
    """The name a person logs in to for ``host`` (``docker.io`` for the Hub's registry)."""
    return "docker.io" if host == "registry-1.docker.io" else host


def network_reason(err: BaseException) -> str:
    """The root cause of a network error in words ("Connection refused", not a repr chain)."""
    cause, seen = err, {id(err)}
    while True:
        nested = [a for a in cause.args if isinstance(a, BaseException)]
        nxt = cause.__cause__ or (nested[0] if nested else None) or cause.__context__
        if nxt is None or id(nxt) in seen:
            break
        cause = nxt
        seen.add(id(nxt))
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


def unreachable(host: str, err: BaseException) -> errdefs.Unavailable:
    """The error for a registry that cannot be talked to."""
    return errdefs.Unavailable(
        f"registry {host} is unreachable: {network_reason(err)}; "
        "check the address and that it is running"
    )


class RedirectedUnauthorized(errdefs.FailedPrecondition):
    """A host the registry redirected to asked for credentials, or refused what it was given.

    The registry's own credentials were never offered to it (by design), so this says nothing
    about them: ``berth login`` must not report them as rejected. Its code is
    FailedPrecondition's, like every other 401.
    """


def _size(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def too_large(what: str, source: str, limit: int) -> errdefs.ResourceExhausted:
    """The error for ``what`` (e.g. "the token response") from ``source`` (e.g. "registry
    r.io") being longer than the ``limit`` bytes Berth will read of it."""
    return errdefs.ResourceExhausted(
        f"{what} from {source} is larger than the {limit}-byte ({_size(limit)}) limit for it; "
        "refusing to read more"
    )


def registry_errors(body: bytes) -> str:
    """The ``errors`` of a registry's JSON error body as ``CODE: message; ...`` ('' if none)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body[:200].decode(errors="replace").strip()
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return ""
    parts = []
    for item in doc["errors"]:
        if isinstance(item, dict):
            code, message = item.get("code", ""), item.get("message", "")
            parts.append(f"{code}: {message}" if code and message else str(code or message))
    return "; ".join(p for p in parts if p)


def read_error_body(resp: urllib3.BaseHTTPResponse) -> bytes:
    """Up to MAX_ERROR_BODY bytes of a response we will not use; the connection is kept only
    if the body was read to its end."""
    if resp.closed:  # preloaded by RegistrySession.request (or already consumed)
        return resp.data or b""
    try:
        data = resp.read(MAX_ERROR_BODY)
        if resp.read(1):
            resp.close()
        return data
    except Urllib3Error:
        resp.close()
        return b""
    finally:
        resp.release_conn()


def raise_for_status(resp: urllib3.BaseHTTPResponse, what: str, host: str) -> None:
    """Raise the errdefs error for a response that is not 2xx (the body is consumed)."""
    if 200 <= resp.status < 300:
        return
    detail = registry_errors(read_error_body(resp))
    suffix = f" ({detail})" if detail else ""
    status = resp.status
    if status == 404:
        raise errdefs.NotFound(f"{what}: not found{suffix}")
    if status in (400, 413, 414):
        raise errdefs.InvalidArgument(f"{what}: registry {host} refused the request{suffix}")
    if status == 403:
        raise errdefs.FailedPrecondition(
            f"denied: registry {host} refused access to {what}{suffix}: "
            f"run `berth login {login_name(host)}` with an account that has access"
        )
    if status == 416:
        raise errdefs.OutOfRange(f"{what}: requested range not satisfiable{suffix}")
    raise errdefs.FailedPrecondition(f"{what}: unexpected HTTP {status} from {host}{suffix}")


def _ssl_errors(err: BaseException) -> list[ssl.SSLError]:
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return [e for e in seen if isinstance(e, ssl.SSLError)] + [
        a for e in seen for a in getattr(e, "args", ()) if isinstance(a, ssl.SSLError)
    ]


def is_cert_error(err: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in _ssl_errors(err))


def cert_error_reason(err: BaseException) -> str:
    for e in _ssl_errors(err):
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or str(e)
    return str(err)
