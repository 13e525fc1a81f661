"""HTTP to registries: one shared urllib3 pool, TLS per host, auth, redirects, retries, errors.

:class:`RegistrySession` is what every resolver, fetcher and pusher of one resolver share. A
call to :meth:`RegistrySession.request` returns the final response of one logical request:

* authorization is added up front when the host's scheme is known, and a 401 is answered by
  the :class:`~berth.remotes.auth.Authorizer` (token fetched, request sent again) at most
  ``MAX_AUTH_ROUNDS`` times; a 401 that remains becomes ``FailedPrecondition`` saying to
  ``berth login``;
* credentials are chosen by the host that asks for them: a 401 is the challenge of the host
  that sent it, and only that host's credentials answer it (a registry's never go to a host it
  redirects to, nor to a token realm such a host names: the CVE-2020-15157 class);
* ``GET``/``HEAD`` follow redirects, never from HTTPS to plain HTTP; each hop carries only the
  ``Authorization`` issued for its own origin (the registry's configured headers and TLS
  settings stay with the registry), so signed storage URLs and storage hosts with their own
  token challenge work, and credentials do not leak;
* response bodies read into memory are bounded: a preloaded answer (push, login) over
  ``MAX_RESPONSE_BODY`` or a token response over ``MAX_TOKEN_RESPONSE`` is a
  ``ResourceExhausted`` naming the limit; an error body only lends its first
  ``MAX_ERROR_BODY`` bytes to the message (its status is the error);
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
from urllib.parse import urlsplit

import urllib3
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import parse_url

from berth import errdefs
from berth.remotes.auth import Authorizer, Prepared, TokenRequest
from berth.remotes.errors import (
    RedirectedUnauthorized,
    cert_error_reason,
    is_cert_error,
    login_name,
    network_reason,
    read_error_body,
    registry_errors,
    too_large,
    unreachable,
)

# Re-exported: callers that use a session directly (berth login) map statuses with it.
from berth.remotes.errors import raise_for_status as raise_for_status
from berth.remotes.hosts import RegistryHost
from berth.remotes.origins import (
    authority,
    check_no_downgrade,
    display,
    follow_redirect,
    same_origin,
)

log = logging.getLogger(__name__)

MAX_AUTH_ROUNDS = 2
MAX_REDIRECTS = 10
MAX_TOKEN_RESPONSE = 1 << 20
# Bodies of answers we preload (push, login, HEAD): none carries content Berth needs, so a
# registry's {"errors": ...} detail is the most they should hold. Manifests are fetched
# streamed and bounded by MAX_MANIFEST_SIZE; blobs by their descriptor's size.
MAX_RESPONSE_BODY = 1 << 20
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
        caller reads and releases it), else preloaded into ``.data`` (at most
        ``MAX_RESPONSE_BODY`` bytes, else ResourceExhausted). ``target`` names what is asked
        for in error messages (``host/repo:tag``). ``retry=False`` makes one attempt (for
        requests that are not safe to repeat on their own, like an upload's PATCH). An
        absolute ``url`` (an upload ``Location``) must not leave the registry's HTTPS for
        plain HTTP. Raises Unavailable (unreachable, 429/5xx after retries),
        FailedPrecondition (401, a downgrade), ResourceExhausted (a body over its bound).
        """
        relative = not url.startswith(("http://", "https://"))
        if not relative:
            # A Location the registry gave (uploads go there with the blob and credentials).
            check_no_downgrade(self.base_url(host), url, "pointed the request to")
        scopes = tuple(scopes)
        max_retries = self.retry.max_retries if retry else 0
        attempt = 0
        while True:
            full = self.base_url(host) + url if relative else url
            try:
                resp, final = self._authorized(method, host, full, scopes, target, headers, body)
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
                log.debug("%s %s failed (%s); retrying", method, display(full), err)
                self._sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if _transient(resp.status):
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                if attempt >= max_retries:
                    detail = registry_errors(read_error_body(resp))
                    raise errdefs.Unavailable(
                        f"registry {host.host} answered HTTP {resp.status} to {method} "
                        f"{target or display(full)} {attempt + 1} times"
                        + (f" ({detail})" if detail else "")
                        + "; try again later"
                    )
                read_error_body(resp)
                self._sleep(self.retry.delay(attempt, retry_after))
                attempt += 1
                continue
            if stream:
                return resp
            return self._preload(resp, method, host, final, target)

    def _preload(
        self,
        resp: urllib3.BaseHTTPResponse,
        method: str,
        host: RegistryHost,
        url: str,
        target: str,
    ) -> urllib3.BaseHTTPResponse:
        """``resp`` with its body read into memory, at most MAX_RESPONSE_BODY bytes of it.

        The body is read with that bound, never whole: a registry (or a host it redirected
        to) must not be able to fill our memory with the answer to a push or a login. An
        error status keeps only the first MAX_ERROR_BODY bytes (the status is the error the
        caller raises; the body only adds the registry's words to it).
        """
        server = self._auth_host(host, url)
        source = self._who(host, server)
        if not 200 <= resp.status < 300:
            return self._complete(resp, read_error_body(resp), method, url)

        def refuse() -> errdefs.ResourceExhausted:
            resp.close()  # not drained: what follows may be endless
            return too_large(
                f"the answer to {method} {target or display(url)}", source, MAX_RESPONSE_BODY
            )

        try:
            # A HEAD's Content-Length announces the resource's size; it has no body.
            length = resp.headers.get("Content-Length", "")
            if method != "HEAD" and length.isdigit() and int(length) > MAX_RESPONSE_BODY:
                raise refuse()
            try:
                data = resp.read(MAX_RESPONSE_BODY + 1)
            except Urllib3Error as err:
                resp.close()
                raise unreachable(server, err) from err
            if len(data) > MAX_RESPONSE_BODY:
                raise refuse()
        finally:
            resp.release_conn()
        return self._complete(resp, data, method, url)

    @staticmethod
    def _complete(
        resp: urllib3.BaseHTTPResponse, data: bytes, method: str, url: str
    ) -> urllib3.BaseHTTPResponse:
        """A closed copy of ``resp`` whose ``.data`` is ``data`` (read_error_body and
        raise_for_status quote the registry's errors from it)."""
        return urllib3.HTTPResponse(
            body=data,
            headers=resp.headers,
            status=resp.status,
            reason=resp.reason,
            preload_content=False,
            decode_content=False,
            request_method=method,
            request_url=url,
        )

    def _auth_host(self, host: RegistryHost, url: str) -> str:
        """The host whose challenges and credentials apply to a request to ``url``: the
        registry's own name (as its credentials are stored) for its own origin, else the host
        ``url`` names, so a host the registry redirects to gets its own credentials, if any,
        never the registry's."""
        if same_origin(url, self.base_url(host)):
            return host.host
        return authority(url)

    def _authorized(
        self,
        method: str,
        host: RegistryHost,
        url: str,
        scopes: tuple[str, ...],
        target: str,
        headers: Mapping[str, str] | None,
        body: Body,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """The final response to ``method url`` and the URL that gave it, after answering
        401s: each is the challenge of the host that sent it, answered for that host alone."""
        extra: dict[str, tuple[str, ...]] = {}  # scopes each challenger asked for on top
        sent: dict[str, Prepared] = {}  # this round: what each host was sent

        def authorization(hop: str) -> str | None:
            key = self._auth_host(host, hop)
            if key not in sent:
                wanted = (*scopes, *extra.get(key, ()))
                sent[key] = self._prepare(host, key, wanted, target)
            return sent[key].header

        challenger = host.host
        for _round in range(MAX_AUTH_ROUNDS + 1):
            sent.clear()
            resp, final = self._send(
                method, host, url, headers=headers, body=body, authorization=authorization
            )
            if resp.status != 401:
                return resp, final
            challenger = self._auth_host(host, final)
            challenges = resp.headers.getlist("WWW-Authenticate")
            read_error_body(resp)
            more = self.authorizer.challenged(
                challenger, challenges, sent.get(challenger, Prepared())
            )
            if more is None:
                break
            extra[challenger] = (*extra.get(challenger, ()), *more)
        header = sent.get(challenger, Prepared()).header
        basic = header is not None and header.startswith("Basic ")
        wanted = (*scopes, *extra.get(challenger, ()))
        raise self._unauthorized(host, target, wanted, rejected=basic, challenger=challenger)

    def _prepare(
        self, host: RegistryHost, key: str, scopes: tuple[str, ...], target: str
    ) -> Prepared:
        """How to authorize a request to ``key`` (the registry, or a host it redirected to),
        fetching a token first when that host's challenge asks for one."""
        prepared = self.authorizer.prepare(key, scopes, self._clock())
        request = prepared.token_request
        if request is None or prepared.key is None:
            return prepared
        status, body = self._fetch_token(host, key, request)
        if status in (401, 403):
            raise self._unauthorized(host, target, scopes, rejected=True, challenger=key)
        if status != 200:
            raise errdefs.Unavailable(
                f"the token server for {self._who(host, key)} answered HTTP {status}"
                f" ({registry_errors(body) or 'no detail'}); try again later"
            )
        header = self.authorizer.token_received(prepared.key, body, self._clock())
        return Prepared(header, None, prepared.key, prepared.scopes)

    @staticmethod
    def _who(host: RegistryHost, key: str) -> str:
        """How errors name ``key``: the registry, or a host it redirected to."""
        if key == host.host:
            return f"registry {host.host}"
        return f"{key} (where registry {host.host} redirected)"

    def _fetch_token(
        self, host: RegistryHost, key: str, request: TokenRequest
    ) -> tuple[int, bytes]:
        """Perform a token request (retried like any other); its status and bounded body.

        Its ``Authorization`` (the credentials of ``key``, whose challenge named this realm)
        goes to the realm's own origin only, not along any redirect the realm answers with.
        """
        credentials = request.headers.get("Authorization")
        server = f"token server {authority(request.url)} (for {self._who(host, key)})"
        over_tls = urlsplit(self.base_url(host)).scheme == "https"
        if request.carries_credentials and over_tls and urlsplit(request.url).scheme != "https":
            # As a redirect from HTTPS to HTTP is refused: the credentials given for a registry
            # reached over TLS never travel in clear text, wherever its challenge points.
            raise errdefs.FailedPrecondition(
                f"{self._who(host, key)} names a token server over plain HTTP "
                f"({authority(request.url)}); refusing to send credentials there in clear text")

        def authorization(hop: str) -> str | None:
            return credentials if same_origin(hop, request.url) else None

        for attempt in range(self.retry.max_retries + 1):
            try:
                resp, _final = self._send(
                    request.method,
                    host,
                    request.url,
                    headers={k: v for k, v in request.headers.items() if k != "Authorization"},
                    body=request.body,
                    authorization=authorization,
                )
                try:
                    length = resp.headers.get("Content-Length", "")
                    if length.isdigit() and int(length) > MAX_TOKEN_RESPONSE:
                        raise too_large("the token response", server, MAX_TOKEN_RESPONSE)
                    body = resp.read(MAX_TOKEN_RESPONSE + 1)
                finally:
                    resp.close()
                    resp.release_conn()
            except Urllib3Error as err:
                if attempt >= self.retry.max_retries:
                    raise errdefs.Unavailable(
                        f"the {server} is unreachable: {network_reason(err)}"
                    ) from err
                self._sleep(self.retry.delay(attempt))
                continue
            if len(body) > MAX_TOKEN_RESPONSE:
                raise too_large("the token response", server, MAX_TOKEN_RESPONSE)
            if _transient(resp.status) and attempt < self.retry.max_retries:
                self._sleep(
                    self.retry.delay(attempt, _retry_after(resp.headers.get("Retry-After")))
                )
                continue
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
        authorization: Callable[[str], str | None] | None = None,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """One exchange, following redirects for GET and HEAD; the response and its URL.

        ``authorization(url)`` gives each hop's ``Authorization`` (None: none), so a hop gets
        only what was issued for its own host. The registry's configured headers and TLS
        settings go to the registry's origin only. A redirect from HTTPS to plain HTTP is
        refused (FailedPrecondition) before the plain-HTTP host is contacted.
        """
        registry_origin = self.base_url(host)
        for _hop in range(MAX_REDIRECTS + 1):
            own = same_origin(url, registry_origin)
            send_headers = dict(self._headers)
            if own:
                send_headers.update({k: ", ".join(v) for k, v in host.headers.items()})
            send_headers.update(headers or {})
            credential = authorization(url) if authorization is not None else None
            if credential:
                send_headers["Authorization"] = credential
            data = body() if callable(body) else body
            try:
                resp = self._urlopen(method, url, host if own else None, send_headers, data)
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if resp.status not in REDIRECT_STATUSES or method not in ("GET", "HEAD"):
                return resp, url
            location = resp.headers.get("Location")
            if not location:
                return resp, url
            read_error_body(resp)
            url = follow_redirect(url, location)
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
        challenger: str | None = None,
    ) -> errdefs.FailedPrecondition:
        """``rejected``: the credentials themselves were refused (by the token server, or as
        Basic auth), rather than found lacking for this repository. ``challenger``: the host
        that asked (the registry when None or its own name)."""
        name = login_name(host.host)
        what = target or host.host
        if challenger is not None and challenger != host.host:
            # Not the registry's own question: its credentials were never offered, by design.
            answer = "refused what it was given" if rejected else "asks for authentication"
            return RedirectedUnauthorized(
                f"unauthorized: {what}: registry {host.host} redirected the request to "
                f"{challenger}, which {answer}; Berth sends the credentials for "
                f"{host.host} to {host.host} only"
            )
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
