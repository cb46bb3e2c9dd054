"""The modern era's `requestState` the broker hands out with an `input_required` result: sealed, bound, single-use.

The token names a suspended call (its id and the backend's questions), so whoever presents it answers that
call's questions and receives its result. Before this module it was an HMAC over plain JSON bound to nothing:
Alice retried Bob's token, answered his question and read his result, and a token could be replayed until it
expired. Now:

- it is sealed with the SDK's own codec (`mcp.server.request_state.AESGCMRequestStateCodec`: AES-256-GCM under
  a key derived with HKDF, so the client can neither read nor alter it);
- it binds the API key that caused it (principal), the method, the target (tool or prompt name, resource
  URI, as the client named it, on the endpoint it used) and a digest of the arguments, like the SDK's
  `RequestStateBoundary`; a modern-era request has no session, and the call id inside stands for it;
- it expires (the server's `timeout_s`), and it is single-use: the retry that hands over the answers
  consumes its nonce with a Redis `SET NX`, so a second use (by anyone, on any web process) is refused.

The SDK's `RequestStateBoundary` itself is middleware for an SDK `Server`; the broker is not one, so it uses
the codec and applies the same claims checks here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from typing import Any

import redis
from mcp.server.request_state import AESGCMRequestStateCodec, InvalidRequestState

from broker import keys

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 32  # what the SDK's codec requires of a key


class RequestStateRefused(Exception):
    """The token is not one this broker issued for this request and caller, has expired, or was used."""


def request_binding(method: str, params: dict[str, Any], scope: str | None) -> dict[str, str]:
    """What a token is bound to besides its caller: the method, the target as the client named it (the
    resource's URI, else the tool's or prompt's name), the endpoint, and a digest of the arguments."""
    target = params.get("uri") if method == "resources/read" else params.get("name")
    arguments = params.get("arguments") if method != "resources/read" else None
    digest = hashlib.sha256(json.dumps(arguments or {}, sort_keys=True, separators=(",", ":")).encode()).digest()
    return {"method": method, "target": target if isinstance(target, str) else "", "scope": scope or "",
            "args": base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")}


class RequestStateSeal:
    """Seal and open `requestState` tokens; any web process that shares the key opens any other's."""

    def __init__(self, r: redis.Redis, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"MCP_BROKER_STATE_KEY must be at least {MIN_KEY_BYTES} bytes of secret randomness "
                             f"(it is {len(key)}); e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
        self._r = r
        self._codec = AESGCMRequestStateCodec([key])

    def seal(self, state: dict[str, Any], principal: str, binding: dict[str, str], ttl_s: float) -> str:
        claims = {**state, **binding, "principal": principal, "nonce": uuid.uuid4().hex,
                  "expires": time.time() + ttl_s}
        return self._codec.seal(json.dumps(claims, separators=(",", ":")).encode())

    def open(self, token: Any, principal: str, binding: dict[str, str]) -> dict[str, Any]:
        """The state a token carries, if it was issued to `principal` for this very request and is unexpired."""
        if not isinstance(token, str):
            raise RequestStateRefused("not a string")
        try:
            claims = json.loads(self._codec.unseal(token))
        except (InvalidRequestState, ValueError) as err:
            raise RequestStateRefused(f"not sealed by this broker ({err})") from None
        if not isinstance(claims, dict) or not isinstance(claims.get("expires"), (int, float)):
            raise RequestStateRefused("malformed")
        if not claims["expires"] > time.time():
            raise RequestStateRefused("expired")
        if claims.get("principal") != principal:
            raise RequestStateRefused(f"issued to another key, presented by {principal!r}")
        if any(claims.get(name) != value for name, value in binding.items()):
            raise RequestStateRefused("issued for another request (method, target, endpoint or arguments)")
        return claims

    def consume(self, claims: dict[str, Any]) -> None:
        """Mark the token used (once, on any web process); RequestStateRefused if it was used before."""
        ttl_ms = max(1000, int((float(claims["expires"]) - time.time()) * 1000) + 60_000)
        if not self._r.set(keys.request_state_used(str(claims["nonce"])), "1", nx=True, px=ttl_ms):
            raise RequestStateRefused("already used")

    def unconsume(self, claims: dict[str, Any]) -> None:
        """Undo `consume` when the retry that consumed the token was refused for another reason (a limit):
        the answers never reached the call, so the token may be used once more."""
        self._r.delete(keys.request_state_used(str(claims["nonce"])))
