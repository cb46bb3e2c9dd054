"""RFC 7662 token introspection, for opaque (non-JWT) access tokens.

The broker asks the issuer's introspection endpoint (client credentials, HTTP Basic) whether a token is
active, and keeps a positive answer for at most `introspection_cache_s` (default 60 s) and never past the
token's own `exp`: a client sends its token on every request, and one POST to the authorization server per
MCP message would make the server the broker's bottleneck. The cache is keyed by the token's sha256 (the
token itself is never kept) and bounded (`MAX_CACHED`, oldest dropped first), so a flood of distinct
tokens costs memory only up to the bound. "Not active" answers are cached too, but only `INACTIVE_CACHE_S`
(5 s) and in a bound of their own: a client retrying a random bearer costs one POST per 5 s, not one per
request, while a token issued a moment ago is refused for seconds at most. After a failed POST the
endpoint is not asked again for `FAILURE_BACKOFF_S` (the guard the JWKS fetches use): an authorization
server that is down costs each request a 503 at once, not a timeout.

The answer's own `iss` is ignored: the claims' issuer is always the one whose endpoint answered (an
introspection endpoint speaks for its own issuer only, and the principal's id is built from it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from broker.oauth.issuers import FAILURE_BACKOFF_S, IssuerUnavailable, http_json
from broker.oauth.settings import Introspection

MAX_CACHED = 10_000
INACTIVE_CACHE_S = 5.0


@dataclass
class Introspector:
    """One issuer's introspection endpoint, with its bounded cache of active tokens."""

    issuer: str
    endpoint: Introspection
    timeout_s: float
    cache_s: float
    _cache: OrderedDict[str, tuple[float, dict[str, Any]]] = field(default_factory=OrderedDict)
    _inactive: OrderedDict[str, float] = field(default_factory=OrderedDict)  # digest → until
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failed_at: float = float("-inf")
    _failure: str = ""

    def introspect(self, token: str) -> dict[str, Any] | None:
        """The token's claims when the issuer says it is active; None when it is not."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                return cached[1]
            self._cache.pop(digest, None)
            if self._inactive.get(digest, 0.0) > now:
                return None
            self._inactive.pop(digest, None)
        if time.monotonic() - self._failed_at < FAILURE_BACKOFF_S:
            raise IssuerUnavailable(self._failure)
        try:
            answer = self._ask(token)
        except IssuerUnavailable as err:
            self._failed_at, self._failure = time.monotonic(), str(err)
            raise
        if answer.get("active") is not True:
            with self._lock:
                self._inactive[digest] = now + min(self.cache_s, INACTIVE_CACHE_S)
                while len(self._inactive) > MAX_CACHED:
                    self._inactive.popitem(last=False)
            return None
        claims = {**answer, "iss": self.issuer}
        until = now + self.cache_s
        if isinstance(claims.get("exp"), (int, float)):
            until = min(until, float(claims["exp"]))
        with self._lock:
            self._cache[digest] = (until, claims)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return claims

    def _ask(self, token: str) -> dict[str, Any]:
        answer = http_json(self.endpoint.endpoint, self.timeout_s, form={"token": token,
                                                                         "token_type_hint": "access_token"},
                           basic=(self.endpoint.client_id, self.endpoint.client_secret))
        if "active" not in answer:
            raise IssuerUnavailable(f"{self.endpoint.endpoint} answered without `active` (not RFC 7662)")
        return answer
