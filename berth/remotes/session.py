"""HTTP to registries: one shared urllib3 pool, TLS per host, auth, redirects, retries, errors.

:class:`RegistrySession` is what every resolver, fetcher and pusher of one resolver share. A
call to :meth:`RegistrySession.request` returns the final response of one logical request:

* authorization is added up front when the host's scheme is known, and a 401 is answered by
  the :class:`~berth.remotes.auth.Authorizer` (token fetched, request sent again) at most
  ``MAX_AUTH_ROUNDS`` times; a 401 that remains becomes ``FailedPrecondition`` saying to
  ``berth login``;
* ``GET``/``HEAD`` follow redirects (``Authorization`` and the host's headers never leave the
  registry's own host:port, so signed storage URLs work and credentials do not leak);
* connection failures, 429 and 5xx are retried ``max_retries`` times with exponential backoff
  and full jitter, honouring ``Retry-After`` (capped at ``backoff_max``), then ``Unavailable``;
* a loopback host marked ``http_fallback`` that does not speak TLS is used over HTTP from then
  on (never a certificate failure: that is reported, not downgraded).

Every other status is returned to the caller, who maps it with
:func:`berth.remotes.errors.raise_for_status`. urllib3 errors never escape this module.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Protocol, cast
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import parse_url

from berth import errdefs
from berth.remotes.auth import Authorizer, Prepared, TokenRequest
from berth.remotes.errors import (
    cert_error_reason,
    is_cert_error,
    login_name,
    network_reason,
    read_error_body,
    registry_errors,
    unreachable,
)

# Re-exported: callers that use a session directly (berth login) map statuses with it.
from berth.remotes.errors import raise_for_status as raise_for_status
from berth.remotes.hosts import RegistryHost

log = logging.getLogger(__name__)

MAX_AUTH_ROUNDS = 2
MAX_REDIRECTS = 10
MAX_TOKEN_RESPONSE = 1 << 20
READ_CHUNK = 1 << 20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class ReadableBody(Protocol):
    """A request body source (any binary file qualifies)."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Body = bytes | Callable[[], ReadableBody] | None  # a callable is re-opened for every attempt


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` more attempts after the first; the n-th waits a random time in
    [0, min(backoff_max, backoff_base * 2**n)] (full jitter spreads out herds of clients)."""

    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max)
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))


class RegistrySession:
    """Shared HTTP machinery for one resolver; thread-safe.

    ``sleep`` and ``clock`` are injectable so tests can keep retries instant.
    """

    def __init__(
        self,
        authorizer: Authorizer,
        *,
        user_agent: str = "berth/0.1",
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authorizer = authorizer
        self.retry = retry or RetryPolicy()
        self._headers = {"User-Agent": user_agent, **(headers or {})}
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._sleep, self._clock = sleep, clock
        # maxsize: connections kept per host; enough for parallel layer downloads.
        self._pool = urllib3.PoolManager(num_pools=32, maxsize=16, blocksize=READ_CHUNK)
        self._lock = threading.Lock()
        self._contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        self._plain: set[str] = set()  # http_fallback hosts found to speak plain HTTP

    def close(self) -> None:
        """Close pooled connections (responses still being read keep theirs)."""
        self._pool.clear()

    def sleep(self, seconds: float) -> None:
        """Wait between attempts (the injected ``sleep``: tests make it instant)."""
        self._sleep(seconds)

    # -- URLs and TLS -----------------------------------------------------------------------

    def base_url(self, host: RegistryHost) -> str:
        """The API root URL of ``host``, over HTTP if it turned out not to speak TLS."""
        with self._lock:
            plain = host.host in self._plain
        scheme = "http" if host.http_fallback and plain else host.scheme
        return f"{scheme}://{host.host}{host.path}"

    def _ssl_context(self, host: RegistryHost | None) -> ssl.SSLContext:
        key: tuple[object, ...] = (
            (host.ca, host.skip_verify, host.client) if host is not None else ()
        )
        with self._lock:
            ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        ctx = ssl.create_default_context()
        if host is not None:
            try:
                for ca in host.ca:
                    ctx.load_verify_locations(cafile=ca)
                if host.client is not None:
                    ctx.load_cert_chain(host.client[0], host.client[1] or None)
            except (OSError, ssl.SSLError) as err:
                raise errdefs.InvalidArgument(
                    f"TLS settings for registry {host.host}: cannot load {err}"
                ) from err
            if host.skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        with self._lock:
            return self._contexts.setdefault(key, ctx)

    def _pool_for(self, url: str, host: RegistryHost | None) -> HTTPConnectionPool:
        kwargs: dict[str, object] = {}
        if url.startswith("https:"):
            kwargs["ssl_context"] = self._ssl_context(host)
            if host is not None and host.skip_verify:
                kwargs["cert_reqs"] = "CERT_NONE"
                kwargs["assert_hostname"] = False
        return self._pool.connection_from_url(url, pool_kwargs=kwargs)

    # -- one request ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        host: RegistryHost,
        url: str,
        *,
        scopes: Iterable[str] = (),
        target: str = "",
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """Send ``method url`` to ``host`` (``url``: absolute, or a path under its API root).

        Returns the final response for any status the caller must judge (2xx, 3xx that were
        not followed, 4xx other than a final 401); its body is unread when ``stream`` (the
        caller reads and releases it), else preloaded into ``.data``. ``target`` names what is
        asked for in error messages (``host/repo:tag``). ``retry=False`` makes one attempt
        (for requests that are not safe to repeat on their own, like an upload's PATCH).
        Raises Unavailable (unreachable, 429/5xx after retries), FailedPrecondition (401).
        """
        relative = not url.startswith(("http://", "https://"))
        scopes = tuple(scopes)
        max_retries = self.retry.max_retries if retry else 0
        attempt = 0
        while True:
            full = self.base_url(host) + url if relative else url
            try:
                resp = self._authorized(method, host, full, scopes, target, headers, body)
            except _Downgraded:
                continue  # base_url() now gives the plain HTTP address
            except Urllib3Error as err:
                if isinstance(err, Urllib3SSLError) and is_cert_error(err):
                    reason = cert_error_reason(err)
                    raise errdefs.FailedPrecondition(
                        f"registry {host.host}: TLS certificate not trusted ({reason}); "
                        f"add its CA with `ca` in certs.d/{host.host}/hosts.toml"
                    ) from err
                if attempt >= max_retries:
                    raise unreachable(host.host, err) from err
                log.debug("%s %s failed (%s); retrying", method, url, err)
                self._sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if _transient(resp.status):
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                if attempt >= max_retries:
                    detail = registry_errors(read_error_body(resp))
                    raise errdefs.Unavailable(
                        f"registry {host.host} answered HTTP {resp.status} to {method} "
                        f"{target or url} {attempt + 1} times"
                        + (f" ({detail})" if detail else "")
                        + "; try again later"
                    )
                read_error_body(resp)
                self._sleep(self.retry.delay(attempt, retry_after))
                attempt += 1
                continue
            if not stream:
                self._preload(resp, host)
            return resp

    def _preload(self, resp: urllib3.BaseHTTPResponse, host: RegistryHost) -> None:
        try:
            resp.read(cache_content=True)
        except Urllib3Error as err:
            resp.close()
            raise unreachable(host.host, err) from err
        finally:
            resp.release_conn()

    def _authorized(
        self,
        method: str,
        host: RegistryHost,
        url: str,
        scopes: tuple[str, ...],
        target: str,
        headers: Mapping[str, str] | None,
        body: Body,
    ) -> urllib3.BaseHTTPResponse:
        prepared = Prepared()
        for _round in range(MAX_AUTH_ROUNDS + 1):
            prepared = self._prepare(host, scopes, target)
            auth = {"Authorization": prepared.header} if prepared.header else None
            resp = self._send(method, host, url, headers=headers, body=body, private=auth)
            if resp.status != 401:
                return resp
            challenges = resp.headers.getlist("WWW-Authenticate")
            read_error_body(resp)
            extra = self.authorizer.challenged(host.host, challenges, prepared)
            if extra is None:
                break
            scopes = (*scopes, *extra)
        basic = prepared.header is not None and prepared.header.startswith("Basic ")
        raise self._unauthorized(host, target, scopes, rejected=basic)

    def _prepare(self, host: RegistryHost, scopes: tuple[str, ...], target: str) -> Prepared:
        prepared = self.authorizer.prepare(host.host, scopes, self._clock())
        request = prepared.token_request
        if request is None or prepared.key is None:
            return prepared
        status, body = self._fetch_token(host, request)
        if status in (401, 403):
            raise self._unauthorized(host, target, scopes, rejected=True)
        if status != 200:
            raise errdefs.Unavailable(
                f"the token server for registry {host.host} answered HTTP {status}"
                f" ({registry_errors(body) or 'no detail'}); try again later"
            )
        header = self.authorizer.token_received(prepared.key, body, self._clock())
        return Prepared(header, None, prepared.key, prepared.scopes)

    def _fetch_token(self, host: RegistryHost, request: TokenRequest) -> tuple[int, bytes]:
        """Perform a token request (retried like any other); its status and bounded body."""
        for attempt in range(self.retry.max_retries + 1):
            try:
                resp = self._send(
                    request.method,
                    host,
                    request.url,
                    headers={k: v for k, v in request.headers.items() if k != "Authorization"},
                    body=request.body,
                    private=request.headers,
                    private_origin=request.url,
                )
                try:
                    body = resp.read(MAX_TOKEN_RESPONSE + 1)
                finally:
                    resp.close()
                    resp.release_conn()
            except Urllib3Error as err:
                if attempt >= self.retry.max_retries:
                    raise errdefs.Unavailable(
                        f"the token server for registry {host.host} "
                        f"({urlsplit(request.url).netloc}) is unreachable: {network_reason(err)}"
                    ) from err
                self._sleep(self.retry.delay(attempt))
                continue
            if _transient(resp.status) and attempt < self.retry.max_retries:
                self._sleep(
                    self.retry.delay(attempt, _retry_after(resp.headers.get("Retry-After")))
                )
                continue
            if len(body) > MAX_TOKEN_RESPONSE:
                raise errdefs.Unavailable(
                    f"the token server for registry {host.host} sent more than "
                    f"{MAX_TOKEN_RESPONSE} bytes"
                )
            return resp.status, body
        raise AssertionError("not reached: the last attempt returns or raises")

    def _send(
        self,
        method: str,
        host: RegistryHost,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        private: Mapping[str, str] | None = None,
        private_origin: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One exchange, following redirects for GET and HEAD.

        ``private`` headers (credentials) go only to ``private_origin`` (default: the
        registry); the host's configured headers and TLS settings only to the registry itself.
        Anything a redirect leads elsewhere gets neither.
        """
        registry_origin = self.base_url(host)
        private_origin = private_origin or registry_origin
        for _hop in range(MAX_REDIRECTS + 1):
            own = _same_origin(url, registry_origin)
            send_headers = dict(self._headers)
            if own:
                send_headers.update({k: ", ".join(v) for k, v in host.headers.items()})
            if private and _same_origin(url, private_origin):
                send_headers.update(private)
            send_headers.update(headers or {})
            data = body() if callable(body) else body
            try:
                resp = self._urlopen(method, url, host if own else None, send_headers, data)
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if resp.status not in REDIRECT_STATUSES or method not in ("GET", "HEAD"):
                return resp
            location = resp.headers.get("Location")
            if not location:
                return resp
            read_error_body(resp)
            url = urljoin(url, location)
        raise errdefs.Unavailable(f"registry {host.host}: more than {MAX_REDIRECTS} redirects")

    def _urlopen(
        self,
        method: str,
        url: str,
        tls_host: RegistryHost | None,
        headers: dict[str, str],
        data: bytes | ReadableBody | None,
    ) -> urllib3.BaseHTTPResponse:
        """One request to ``url``, with ``tls_host``'s TLS settings (None: the system's)."""
        try:
            return self._pool_for(url, tls_host).urlopen(
                method,
                parse_url(url).request_uri,  # origin-form: path and query only
                # urllib3 only calls read() on a file-like body; its annotation wants IO.
                body=cast("bytes | IO[bytes] | None", data),
                headers=headers,
                redirect=False,
                retries=False,
                timeout=self._timeout,
                preload_content=False,
                release_conn=False,
            )
        except Urllib3SSLError as err:
            fallback = tls_host is not None and tls_host.http_fallback
            if fallback and url.startswith("https:") and not is_cert_error(err):
                # A loopback registry that does not speak TLS: HTTP from now on.
                assert tls_host is not None
                with self._lock:
                    self._plain.add(tls_host.host)
                raise _Downgraded from err
            raise

    def _unauthorized(
        self,
        host: RegistryHost,
        target: str,
        scopes: Iterable[str],
        *,
        rejected: bool = False,
    ) -> errdefs.FailedPrecondition:
        """``rejected``: the credentials themselves were refused (by the token server, or as
        Basic auth), rather than found lacking for this repository."""
        name = login_name(host.host)
        what = target or host.host
        creds = self.authorizer.credentials_for(host.host)
        action = "push to" if any(s.endswith("push") for s in scopes) else "pull"
        if creds is None:
            return errdefs.FailedPrecondition(
                f"unauthorized: authentication required for {what} (or it does not exist): "
                f"run `berth login {name}`"
            )
        who = f"user {creds[0]!r}" if creds[0] else "the saved identity token"
        if rejected:
            return errdefs.FailedPrecondition(
                f"unauthorized: registry {host.host} rejected the credentials of {who} "
                f"for {what}: run `berth login {name}` again"
            )
        return errdefs.FailedPrecondition(
            f"unauthorized: {who} may not {action} {what} (or it does not exist): "
            f"check the name, or run `berth login {name}` with an account that has access"
        )


class _Downgraded(Exception):
    """Internal: the host turned out to speak plain HTTP; send the request again."""


def _transient(status: int) -> bool:
    """429 and 5xx are worth retrying, except 501/505, which will not change."""
    return status == 429 or (status >= 500 and status not in (501, 505))


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
