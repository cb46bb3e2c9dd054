"""A bearer token → the principal it stands for, or a refusal in RFC 6750's terms.

A JWT (three dot-separated parts whose header names an `alg`) is verified locally with PyJWT: the `alg`
must be one the issuer may use (asymmetric only: never `none`, never HS*, whatever the header says); the
`iss` must be a configured issuer (looked up before any key is fetched, so a stranger's token costs no
HTTP request); the signature must verify with a key of that issuer's JWKS (`kid` matched, key type fit to
the `alg`); `exp` (required), `nbf` and `iat` hold within `leeway_s`; and the `aud` must name this broker
(RFC 8707: a token minted for another resource is refused, so a server the user also connected cannot
replay it here). Any other token is introspected (RFC 7662) when an issuer has an introspection endpoint:
with several, the token is shown to each in the configured order until one says it is active (so an
issuer listed earlier sees the opaque tokens of the ones after it: list the one most tokens come from
first, and configure introspection only for issuers that issue opaque tokens). The answer must name an
`aud` that is this broker, exactly as a JWT's must (an answer without one is refused).

Then the scopes `scopes_required` names must all be granted (403 `insufficient_scope` otherwise), and the
settings' rules map the claims to a profile (403 when no rule matches: the token is genuine but this
broker has nothing for it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import jwt

from broker.oauth.introspection import Introspector
from broker.oauth.issuers import IssuerKeys, IssuerUnavailable
from broker.oauth.settings import OAuthSettings, principal_id, token_scopes
from broker.security import Principal, principal_of

__all__ = ["IssuerUnavailable", "TokenRejected", "TokenVerifier"]

# PyJWT's refusal → what the client is told (the class names are stable API)
REASONS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "the token has expired",
    jwt.ImmatureSignatureError: "the token is not valid yet (nbf/iat in the future)",
    jwt.InvalidAudienceError: "the token's audience (aud) is not this broker",
    jwt.InvalidIssuerError: "the token's issuer does not match",
    jwt.MissingRequiredClaimError: "the token lacks a required claim",
}


class TokenRejected(Exception):
    """The token cannot be used: `error` is RFC 6750's (`invalid_token` → 401, `insufficient_scope` → 403)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description
        self.http_status = 403 if error == "insufficient_scope" else 401


def is_jwt(token: str) -> bool:
    if token.count(".") != 2:
        return False
    try:
        return isinstance(jwt.get_unverified_header(token).get("alg"), str)
    except jwt.PyJWTError:
        return False


@dataclass
class TokenVerifier:
    """The settings plus each issuer's cached keys and introspection: one per web process."""

    settings: OAuthSettings
    issuers: dict[str, IssuerKeys] = field(default_factory=dict)
    introspectors: list[Introspector] = field(default_factory=list)

    @classmethod
    def build(cls, settings: OAuthSettings) -> TokenVerifier:
        issuers = {i.issuer: IssuerKeys(i, settings.http_timeout_s, settings.jwks_cache_s, settings.jwks_refetch_s)
                   for i in settings.issuers}
        introspectors = [Introspector(i.issuer, i.introspection, settings.http_timeout_s,
                                      settings.introspection_cache_s)
                         for i in settings.issuers if i.introspection is not None]
        return cls(settings, issuers, introspectors)

    def verify(self, token: str, audiences: Collection[str]) -> Principal:
        """The token's principal; `TokenRejected` or `IssuerUnavailable` otherwise."""
        claims = self._jwt_claims(token, audiences) if is_jwt(token) else self._introspected(token, audiences)
        who = claims.get("sub") or claims.get("client_id")
        if not isinstance(who, (str, int)) or isinstance(who, bool):
            raise TokenRejected("invalid_token", "the token names no subject (neither `sub` nor `client_id`): "
                                                 "the broker cannot tell whose sessions and limits it uses")
        missing = [s for s in self.settings.scopes_required if s not in token_scopes(claims)]
        if missing:
            raise TokenRejected("insufficient_scope", f"the token lacks the scope {' '.join(missing)}")
        profile = self.settings.profile_for(claims)
        if profile is None:
            raise TokenRejected("insufficient_scope", "no rule of this broker maps the token's claims to a profile")
        name, fields = profile
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
        return replace(principal_of({**fields, "id": principal_id(name, claims)}, 0), expires_at=expires_at)

    def _jwt_claims(self, token: str, audiences: Collection[str]) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        try:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise TokenRejected("invalid_token", "the token's payload is not a JSON object") from None
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRejected("invalid_token", f"the token's issuer {str(iss)[:200]!r} is not trusted here")
        if alg not in issuer.settings.algorithms:
            raise TokenRejected("invalid_token", f"the signing algorithm {str(alg)[:20]!r} is not accepted")
        keys = issuer.keys_for(kid if isinstance(kid, str) else None, alg)
        if not keys:
            raise TokenRejected("invalid_token", "the token's signing key (kid) is not one of its issuer's keys")
        for jwk in keys:
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                continue  # a key the issuer publishes but that cannot verify this algorithm
            try:
                return jwt.decode(token, key, algorithms=[alg], audience=list(audiences), issuer=iss,
                                  leeway=self.settings.leeway_s, options={"require": ["exp", "iss", "aud"]})
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as err:
                reason = next((text for kind, text in REASONS.items() if isinstance(err, kind)), "")
                raise TokenRejected("invalid_token", f"{reason or 'the token is not valid'}: {err}") from None
        raise TokenRejected("invalid_token", "the token's signature does not verify")

    def _introspected(self, token: str, audiences: Collection[str]) -> dict[str, Any]:
        if not self.introspectors:
            raise TokenRejected("invalid_token", "the token is not a JWT, and no issuer has an introspection "
                                                 "endpoint configured for opaque tokens")
        for introspector in self.introspectors:  # in order, until one recognises the token
            claims = introspector.introspect(token)
            if claims is None:
                continue
            aud = claims.get("aud")
            granted = {a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)}
            if not granted & set(audiences):
                raise TokenRejected("invalid_token", "the token's audience (aud) is not this broker"
                                                     + ("" if granted else " (introspection named no aud)"))
            return claims
        raise TokenRejected("invalid_token", "the token is not active (introspection)")
