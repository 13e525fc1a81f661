"""Registry authentication without I/O: challenges in, requests to make and headers out.

The protocol (the distribution spec's token auth, and plain Basic):

1. A request without (or with insufficient) credentials gets ``401`` and one or more
   ``WWW-Authenticate`` challenges: ``Bearer realm="https://auth/token",service="reg",
   scope="repository:x/y:pull"`` or ``Basic realm="..."``.
2. Bearer: ask the realm for a token for (service, scopes): ``GET realm?service=&scope=...``
   with Basic credentials if we have a user and password (anonymous otherwise), or, for an
   identity (refresh) token, ``POST realm`` with an OAuth2 ``grant_type=refresh_token`` form.
   The answer is JSON ``{"token" | "access_token", "expires_in", "refresh_token"}``.
3. Retry with ``Authorization: Bearer <token>`` (or ``Basic <base64 user:pass>``).

:class:`Authorizer` keeps, per registry host, the last challenge and a token cache keyed by
scope, so that after the first 401 every later request is authorized up front. It never does
I/O: :meth:`Authorizer.prepare` answers with a header, or with the :class:`TokenRequest` the
caller must perform and feed back through :meth:`Authorizer.token_received`.

Decision: with a user and password we fetch tokens by ``GET`` with Basic credentials (what the
docker CLI does and every token server supports) rather than containerd's OAuth ``POST``
password grant with a fallback to ``GET``, which costs a failed round trip on servers without
the OAuth endpoint. Identity tokens can only travel by ``POST`` and do.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from berth import errdefs
from berth.remotes.remotes import Credentials

DEFAULT_CLIENT_ID = "berth"
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds; the spec's default and its minimum
EXPIRY_MARGIN = 5.0  # refresh a little early so a token does not expire in flight


# -- challenges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lower-case ``scheme`` and lower-case param names."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def token(self, allowed: frozenset[str] = _TCHAR) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in allowed:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string (the opening quote is current); backslash escapes one character.
        An unterminated string ends at the end of the header (lenient, like Go's parser)."""
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                break
            else:
                out.append(c)
        return "".join(out)


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values, in order.

    One value may hold several challenges (``Bearer realm="a", Basic realm="b"``); quoted
    values may contain commas and escaped quotes. Malformed parts are skipped, never raised:
    a registry's odd header must not hide the challenge we can use.
    """
    challenges: list[Challenge] = []
    for header in headers:
        s = _Scanner(header)
        while True:
            s.skip(" \t,")
            scheme = s.token()
            if not scheme:
                if s.peek() == "":
                    break
                s.pos += 1  # garbage: skip one character and resynchronize
                continue
            params: dict[str, str] = {}
            while True:
                s.skip(" \t")
                save = s.pos
                name = s.token()
                s.skip(" \t")
                if name and s.peek() == "=":
                    s.pos += 1
                    if not params and s.peek() in ("=", ",", ""):  # token68 padding: "abc=="
                        params["token68"] = name + "=" + s.token(frozenset("="))
                        break
                    s.skip(" \t")
                    params[name.lower()] = s.quoted() if s.peek() == '"' else s.token()
                elif name and not params and s.peek() in (",", ""):
                    params["token68"] = name  # e.g. "Negotiate abc"
                    break
                else:
                    s.pos = save  # no param here: what follows is the next challenge
                    break
                s.skip(" \t")
                if s.peek() != ",":
                    break
                s.pos += 1
            challenges.append(Challenge(scheme.lower(), params))
    return challenges


# -- scopes ----------------------------------------------------------------------------------


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<name>:<actions>``, e.g. ``repository:library/busybox:pull``."""
    return f"repository:{repository}:{','.join(actions)}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes in canonical form: one per resource with its actions united and sorted.

    ``repository:a:pull`` + ``repository:a:push`` is ``repository:a:pull,push``. A scope that
    is not ``type:name:actions`` is kept verbatim (servers may invent their own).
    """
    merged: dict[tuple[str, str], set[str]] = {}
    verbatim: set[str] = set()
    for scope in scopes:
        for part in scope.split():
            kind, sep, rest = part.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep and sep2 and kind and name):
                verbatim.add(part)
                continue
            merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    out = [f"{k}:{n}:{','.join(sorted(a))}" for (k, n), a in merged.items()]
    return tuple(sorted(out + sorted(verbatim)))


# -- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """An HTTP request the caller must make to get a bearer token."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None

    @property
    def carries_credentials(self) -> bool:
        """Whether it sends a secret: Basic credentials, or a refresh token in its body."""
        return "Authorization" in self.headers or self.body is not None


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the caller's clock (the ``now`` it passed in)
    refresh_token: str = ""


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value for Basic credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def token_request(
    challenge: Challenge,
    scopes: Iterable[str],
    credentials: tuple[str, str] | None,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
) -> TokenRequest:
    """The request that asks ``challenge``'s realm for a token covering ``scopes``.

    ``credentials`` is (username, secret); an empty username means the secret is an identity
    (refresh) token. InvalidArgument when the challenge has no usable realm.
    """
    realm = challenge.params.get("realm", "")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errdefs.InvalidArgument(
            f"the registry's bearer challenge has no usable token realm ({realm!r})"
        )
    service = challenge.params.get("service", "")
    scope_list = list(merge_scopes(scopes))
    if credentials is not None and not credentials[0] and credentials[1]:
        form = {"grant_type": "refresh_token", "refresh_token": credentials[1]}
        form.update({"service": service, "client_id": client_id})
        if scope_list:
            form["scope"] = " ".join(scope_list)
        return TokenRequest(
            "POST",
            realm,
            {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            urlencode(form).encode(),
        )
    query: list[tuple[str, str]] = [("service", service)] if service else []
    query += [("scope", s) for s in scope_list]
    url = realm
    if query:
        url += ("&" if parts.query else "?") + urlencode(query)
    headers = {}
    if credentials is not None and credentials[1]:
        headers["Authorization"] = basic_authorization(*credentials)
    return TokenRequest("GET", url, headers)


def parse_token_response(body: bytes, now: float) -> Token:
    """The token in a token server's 200 answer (``token`` or ``access_token``).

    ``expires_in`` below the spec's minimum of 60 s (or absent) counts as 60 s; the expiry is
    measured from ``now`` (when the answer arrived), never from the server's ``issued_at``, so
    clock skew cannot make a fresh token look stale. Unavailable if the answer has no token.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errdefs.Unavailable(f"the token server answered with invalid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise errdefs.Unavailable("the token server answered with JSON that is not an object")
    value = doc.get("access_token") or doc.get("token")
    if not isinstance(value, str) or not value:
        raise errdefs.Unavailable("the token server's answer does not contain a token")
    expires_in = doc.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = max(float(expires_in), DEFAULT_TOKEN_LIFETIME)
    refresh = doc.get("refresh_token")
    return Token(value, now + lifetime, refresh if isinstance(refresh, str) else "")


TokenKey = tuple[str, str, str, tuple[str, ...]]  # (host, realm, service, scopes)


class TokenCache:
    """Tokens by (host, realm, service, scopes), until shortly before they expire."""

    def __init__(self, margin: float = EXPIRY_MARGIN) -> None:
        self._margin = margin
        self._tokens: dict[TokenKey, Token] = {}

    def get(self, key: TokenKey, now: float) -> Token | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_at - self._margin <= now:
            del self._tokens[key]
            return None
        return token

    def put(self, key: TokenKey, token: Token) -> None:
        self._tokens[key] = token

    def discard(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)


# -- the per-host state machine --------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """How to authorize one request: send ``header`` (None: anonymous), or first perform
    ``token_request`` and hand its 200 answer to :meth:`Authorizer.token_received`. ``key``
    names the bearer token used or asked for; ``scopes`` are the scopes it covers."""

    header: str | None = None
    token_request: TokenRequest | None = None
    key: TokenKey | None = None
    scopes: tuple[str, ...] = ()


class Authorizer:
    """Challenges and tokens per host that sent a challenge (a registry, or a host it
    redirected to: each answered with its own credentials only); thread-safe; no I/O.

    Per host it remembers the last challenge's scheme, realm and service (not its scope: that
    belongs to the one request that got it), and caches bearer tokens by scope. The credentials
    callback is asked once per host for the life of the authorizer.

    A request's life: ``prepare`` → (perform ``token_request``, ``token_received``) → send →
    on 401 ``challenged`` says whether, and with which extra scopes, to go round once more.
    """

    def __init__(
        self, credentials: Credentials | None = None, *, client_id: str = DEFAULT_CLIENT_ID
    ) -> None:
        self._credentials = credentials
        self._client_id = client_id
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._creds: dict[str, tuple[str, str] | None] = {}
        self._tokens = TokenCache()

    def credentials_for(self, host: str) -> tuple[str, str] | None:
        """The usable credentials for ``host``, or None (anonymous)."""
        with self._lock:
            if host in self._creds:
                return self._creds[host]
        found = self._credentials(host) if self._credentials is not None else None
        if found is not None and not found[1]:
            found = None  # a username without a secret cannot authenticate anything
        with self._lock:
            self._creds[host] = found
        return found

    def prepare(self, host: str, scopes: Iterable[str], now: float) -> Prepared:
        """How to authorize the next request to ``host`` that needs ``scopes``."""
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return Prepared()
        creds = self.credentials_for(host)
        if challenge.scheme == "basic":
            if creds is None or not creds[0]:
                return Prepared()
            return Prepared(header=basic_authorization(*creds))
        wanted = merge_scopes(scopes)
        key: TokenKey = (
            host,
            challenge.params.get("realm", ""),
            challenge.params.get("service", ""),
            wanted,
        )
        with self._lock:
            token = self._tokens.get(key, now)
        if token is not None:
            return Prepared(header=f"Bearer {token.value}", key=key, scopes=wanted)
        request = token_request(challenge, wanted, creds, client_id=self._client_id)
        return Prepared(token_request=request, key=key, scopes=wanted)

    def token_received(self, key: TokenKey, body: bytes, now: float) -> str:
        """Cache the token in a token server's 200 answer; the header to send."""
        token = parse_token_response(body, now)
        with self._lock:
            self._tokens.put(key, token)
        return f"Bearer {token.value}"

    def challenged(
        self, host: str, www_authenticate: Iterable[str], sent: Prepared
    ) -> tuple[str, ...] | None:
        """Record a 401's challenges; the scopes to add before trying once more, or None when
        another try cannot help.

        It cannot when no challenge is Bearer or Basic, when Basic is asked for and we have no
        user and password, when the Basic credentials we sent were refused, or when a token
        already covered every scope the server names.
        """
        usable = [c for c in parse_challenges(www_authenticate) if c.scheme in _SCHEMES]
        if not usable:
            return None
        challenge = min(usable, key=lambda c: _SCHEMES.index(c.scheme))  # bearer first
        stored = Challenge(
            challenge.scheme, {k: v for k, v in challenge.params.items() if k != "scope"}
        )
        extra = merge_scopes([challenge.params.get("scope", "")])
        with self._lock:
            self._challenges[host] = stored
            if sent.key is not None:
                self._tokens.discard(sent.key)
        if sent.header is None and sent.token_request is None:  # we had sent nothing
            if challenge.scheme == "basic":
                creds = self.credentials_for(host)
                return () if creds is not None and creds[0] else None
            return extra
        if challenge.scheme == "bearer" and sent.key is not None:
            # A token that expired or was revoked early is worth replacing once; a token the
            # server calls too small is worth widening only if it names a scope we lacked.
            if challenge.params.get("error") == "insufficient_scope":
                return extra if merge_scopes([*sent.scopes, *extra]) != sent.scopes else None
            return extra
        if challenge.scheme == "bearer" and sent.header is not None:
            return extra  # we sent Basic, the server now wants a token
        return None


_SCHEMES = ("bearer", "basic")
