"""The streaming server's tokens: what a CRI Exec, Attach or PortForward call asked for, kept
under a random token until the client connects to the URL that names it.

As the kubelet's streaming library (which containerd's CRI serves through) keeps them: a token
is 8 random bytes in URL-safe base64 (11 characters), good once, for one minute, and at most
1000 are waiting at a time (more is ResourceExhausted: a client that never connects cannot make
berthd hold an unbounded number of requests).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from berth import errdefs

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000
TOKEN_BYTES = 8


@dataclass(frozen=True)
class Pending:
    kind: str  # "exec", "attach" or "portforward"
    request: Any  # the CRI request message
    expires: float


class Tokens:
    def __init__(self, ttl: float = TOKEN_TTL, max_in_flight: int = MAX_IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._pending:
            token, first = next(iter(self._pending.items()))
            if first.expires > now:
                return
            del self._pending[token]

    def insert(self, kind: str, request: Any) -> str:
        now = self._clock()
        with self._lock:
            self._expire(now)
            if len(self._pending) >= self.max_in_flight:
                raise errdefs.ResourceExhausted(
                    "maximum number of in-flight requests exceeded: "
                    f"{self.max_in_flight} streaming requests wait for their clients")
            while True:
                token = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)) \
                    .rstrip(b"=").decode()
                if token not in self._pending:
                    break
            self._pending[token] = Pending(kind, request, now + self.ttl)
        return token

    def consume(self, token: str) -> Pending | None:
        """The request behind ``token``, once; None when unknown, used or expired."""
        with self._lock:
            pending = self._pending.pop(token, None)
        if pending is None or pending.expires <= self._clock():
            return None
        return pending

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._pending)
