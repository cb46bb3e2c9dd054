"""RFC 7662 token introspection, for opaque (non-JWT) access tokens.

The broker asks the issuer's introspection endpoint (client credentials, HTTP Basic) whether a token is
active, and keeps a positive answer for at most `introspection_cache_s` (default 60 s) and never past the
token's own `exp`: a client sends its token on every request, and one POST to the authorization server per
MCP message would make the server the broker's bottleneck. The cache is keyed by the token's sha256 (the
token itself is never kept) and bounded (`MAX_CACHED`, oldest dropped first), so a flood of distinct
tokens costs memory only up to the bound. Negative answers are not cached: a token that becomes active
(issued a moment ago) is not refused for a minute.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from broker.oauth.issuers import IssuerUnavailable, http_json
from broker.oauth.settings import Introspection

MAX_CACHED = 10_000


@dataclass
class Introspector:
    """One issuer's introspection endpoint, with its bounded cache of active tokens."""

    issuer: str
    endpoint: Introspection
    timeout_s: float
    cache_s: float
    _cache: OrderedDict[str, tuple[float, dict[str, Any]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def introspect(self, token: str) -> dict[str, Any] | None:
        """The token's claims when the issuer says it is active; None when it is not."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                return cached[1]
            self._cache.pop(digest, None)
        answer = http_json(self.endpoint.endpoint, self.timeout_s, form={"token": token,
                                                                         "token_type_hint": "access_token"},
                           basic=(self.endpoint.client_id, self.endpoint.client_secret))
        if "active" not in answer:
            raise IssuerUnavailable(f"{self.endpoint.endpoint} answered without `active` (not RFC 7662)")
        if answer.get("active") is not True:
            return None
        claims = {"iss": self.issuer, **answer}
        until = now + self.cache_s
        if isinstance(claims.get("exp"), (int, float)):
            until = min(until, float(claims["exp"]))
        with self._lock:
            self._cache[digest] = (until, claims)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return claims
