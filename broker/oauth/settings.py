"""The `oauth` block: which authorization servers the broker trusts, what it calls itself, and who a token is.

Where it comes from (the first that is set): `MCP_BROKER_OAUTH` (the block as JSON, or the path of a JSON
file holding it), else the keys file's top-level `oauth` (`MCP_BROKER_KEYS_FILE`, beside `keys`). The
shorthands `MCP_BROKER_OAUTH_ISSUERS` (comma separated issuer URLs), `MCP_BROKER_OAUTH_RESOURCE` and
`MCP_BROKER_OAUTH_SCOPES` (required scopes, space or comma separated) fill in or override the block, so a
platform's environment alone can turn OAuth on.

Who a token is: `rules` are tried in order; the first whose `match` holds names a `profile` (the same fields
as a key: `allow`, `rate_per_s`, `burst`, `max_in_flight`, `max_connections`, `admin`). A `match` maps a
claim (a dotted path reaches nested claims: `realm_access.roles`) to a glob or a list of globs; a claim that
is a list (`groups`) or a space-separated `scope` matches when any of its items does; every claim named
must match. Without rules every valid token gets the `default` profile (everything, no admin right). The
principal's id is `oauth:<profile>:<sub>@<issuer URL>`: sessions, rates and caps are per person, never
shared by everyone of a profile.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from broker.schemas import PrincipalLimitsSchema, first_error

# Asymmetric only: `none` and the HS* family (a shared secret, which a public JWKS must never be) are refused.
SAFE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_PROFILE = "default"
MIN_JWKS_CACHE_S = 10.0  # below this every few requests would wait on a JWKS (and metadata) fetch
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_URL = validate.URL(schemes={"http", "https"}, require_tld=False)


class OAuthConfigError(Exception):
    """The `oauth` block cannot be used (broker.security raises it as its own KeysConfigError)."""


class IntrospectionSchema(Schema):
    class Meta:
        unknown = "raise"

    endpoint = fields.String(required=True, validate=_URL)
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(load_default="")
    client_secret_env = fields.String(load_default="")  # the variable that holds the secret (kept out of files)


class IssuerSchema(Schema):
    class Meta:
        unknown = "raise"

    issuer = fields.String(required=True, validate=_URL)
    jwks_uri = fields.String(load_default=None, validate=_URL)  # else the issuer's metadata says
    algorithms = fields.List(fields.String(validate=validate.OneOf(SAFE_ALGORITHMS)), load_default=None)
    introspection = fields.Nested(IntrospectionSchema, load_default=None)


class RuleSchema(Schema):
    class Meta:
        unknown = "raise"

    match = fields.Dict(keys=fields.String(validate=validate.Length(min=1)),
                        values=fields.Raw(), required=True)
    profile = fields.String(required=True)


class OAuthSchema(Schema):
    class Meta:
        unknown = "raise"

    issuers = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1))
    resource = fields.String(load_default=None, validate=_URL)
    audiences = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    scopes_required = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    scopes_supported = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None)
    leeway_s = fields.Float(load_default=30.0, validate=validate.Range(min=0, max=300))
    http_timeout_s = fields.Float(load_default=5.0, validate=validate.Range(min=0.1, max=60))
    jwks_cache_s = fields.Float(load_default=900.0, validate=validate.Range(min=MIN_JWKS_CACHE_S))
    jwks_refetch_s = fields.Float(load_default=30.0, validate=validate.Range(min=0))
    introspection_cache_s = fields.Float(load_default=60.0, validate=validate.Range(min=0, max=3600))
    profiles = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}$")),
                           values=fields.Nested(PrincipalLimitsSchema), load_default=dict)
    rules = fields.List(fields.Nested(RuleSchema), load_default=list)

    @validates_schema
    def _rules_name_profiles(self, data: dict[str, Any], **_: Any) -> None:
        for index, rule in enumerate(data.get("rules") or []):
            if rule["profile"] not in (data.get("profiles") or {}):
                raise ValidationError(f"rule {index + 1} names the profile {rule['profile']!r}, which "
                                      "`profiles` does not define", "rules")
            for claim, globs in rule["match"].items():
                if not _globs(globs):
                    raise ValidationError(f"rule {index + 1}: match.{claim} must be a string or a list of "
                                          "strings", "rules")


@dataclass(frozen=True)
class Introspection:
    endpoint: str
    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class IssuerSettings:
    issuer: str
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = SAFE_ALGORITHMS
    introspection: Introspection | None = None


@dataclass(frozen=True)
class Rule:
    match: tuple[tuple[str, tuple[str, ...]], ...]
    profile: str

    def matches(self, claims: Mapping[str, Any]) -> bool:
        return all(any(fnmatch.fnmatchcase(value, glob) for value in claim_values(claims, claim) for glob in globs)
                   for claim, globs in self.match)


@dataclass(frozen=True)
class OAuthSettings:
    issuers: tuple[IssuerSettings, ...]
    resource: str | None = None  # the broker's public base URL; None: the request's scheme and host
    audiences: tuple[str, ...] = ()
    scopes_required: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    leeway_s: float = 30.0
    http_timeout_s: float = 5.0
    jwks_cache_s: float = 900.0
    jwks_refetch_s: float = 30.0
    introspection_cache_s: float = 60.0
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → a key's fields (no id, no hash)
    rules: tuple[Rule, ...] = ()

    def issuer(self, iss: str) -> IssuerSettings | None:
        return next((i for i in self.issuers if i.issuer == iss), None)

    def profile_for(self, claims: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The first matching rule's profile (name, fields); `default` (everything, no admin right) when there
        are no rules; None when no rule matches."""
        if not self.rules:
            return DEFAULT_PROFILE, self.profiles.get(DEFAULT_PROFILE, {"allow": ["*"], "admin": False})
        name = next((r.profile for r in self.rules if r.matches(claims)), None)
        return None if name is None else (name, self.profiles[name])


def principal_id(profile: str, claims: Mapping[str, Any]) -> str:
    """`oauth:<profile>:<sub>@<issuer URL>`: per person (sessions, rates, caps), never per profile. The whole
    issuer URL, not its host: two Keycloak realms on one host are two user bases (`alice` of one is not
    `alice` of the other). A token naming neither `sub` nor `client_id` is refused before this
    (`TokenVerifier.verify`): a placeholder would merge everyone like it into one principal."""
    return f"oauth:{profile}:{claims.get('sub') or claims.get('client_id')}@{claims.get('iss')}"


def insecure_issuers(settings: OAuthSettings) -> list[str]:
    """The issuers reached over plain `http://` off this machine: their keys, metadata and introspection
    answers could be rewritten on the way (a forged JWKS makes any token pass). Warned about at start and
    by `check-config`; loopback is fine (a test or a sidecar)."""
    urls = [u for i in settings.issuers
            for u in (i.issuer, i.jwks_uri, i.introspection.endpoint if i.introspection else None) if u]
    return [u for u in dict.fromkeys(urls)
            if urlsplit(u).scheme == "http" and (urlsplit(u).hostname or "") not in LOOPBACK_NAMES
            and not (urlsplit(u).hostname or "").startswith("127.")]


def _globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """A claim's values as strings: a list's items, a `scope`/`scp` string's words, else the value itself."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    if isinstance(node, list):
        return [str(v) for v in node if isinstance(v, (str, int, float, bool))]
    if isinstance(node, str) and path in ("scope", "scp"):
        return node.split()
    return [] if isinstance(node, (dict, type(None))) else [str(node)]


def token_scopes(claims: Mapping[str, Any]) -> set[str]:
    return set(claim_values(claims, "scope")) | set(claim_values(claims, "scp"))


def _raw_block(env: Mapping[str, str], keys_file_block: dict[str, Any] | None) -> dict[str, Any] | None:
    text = env.get("MCP_BROKER_OAUTH", "").strip()
    if text:
        if not text.startswith(("{", "[")):  # else the path of a file that holds it
            try:
                text = Path(text).read_text()
            except OSError as err:
                raise OAuthConfigError(f"MCP_BROKER_OAUTH {text}: cannot read the file: {err.strerror}") from None
        try:
            block = json.loads(text)
        except ValueError as err:
            raise OAuthConfigError(f"MCP_BROKER_OAUTH: not valid JSON: {err}") from None
        if not isinstance(block, dict):
            raise OAuthConfigError("MCP_BROKER_OAUTH: expected a JSON object (the `oauth` block)")
    else:
        block = dict(keys_file_block) if keys_file_block is not None else None
    shorthand = {
        "issuers": [u.strip() for u in env.get("MCP_BROKER_OAUTH_ISSUERS", "").split(",") if u.strip()],
        "resource": env.get("MCP_BROKER_OAUTH_RESOURCE", "").strip(),
        "scopes_required": [s for s in re.split(r"[\s,]+", env.get("MCP_BROKER_OAUTH_SCOPES", "")) if s],
    }
    for name, value in shorthand.items():
        if value:
            block = {**(block or {}), name: value}
    return block


def _issuer(raw: Any, env: Mapping[str, str]) -> IssuerSettings:
    """One `issuers` entry (a bare URL or an object). An introspection secret named by variable
    (`client_secret_env`) is read now, so a missing one stops the start instead of failing every token."""
    loaded = IssuerSchema().load({"issuer": raw} if isinstance(raw, str) else raw)
    intro, introspection = loaded["introspection"], None
    if intro is not None:
        secret = intro["client_secret"]
        if intro["client_secret_env"]:
            secret = env.get(intro["client_secret_env"], "")
            if not secret:
                raise OAuthConfigError(f"oauth: issuer {loaded['issuer']}: the variable "
                                      f"{intro['client_secret_env']} (client_secret_env) is not set")
        introspection = Introspection(intro["endpoint"], intro["client_id"], secret)
    algorithms = tuple(loaded["algorithms"] or SAFE_ALGORITHMS)
    return IssuerSettings(loaded["issuer"], loaded["jwks_uri"], algorithms, introspection)


def load_oauth(env: Mapping[str, str], keys_file_block: dict[str, Any] | None = None) -> OAuthSettings | None:
    """The OAuth settings, or None when OAuth is off. A block that does not validate stops the start
    (`OAuthConfigError`, raised by `load_keyring` as its `KeysConfigError`), like a bad keys file."""
    block = _raw_block(env, keys_file_block)
    if block is None:
        return None
    try:
        loaded = OAuthSchema().load(block)
        issuers = tuple(_issuer(raw, env) for raw in loaded["issuers"])
    except ValidationError as err:
        raise OAuthConfigError(f"oauth: {first_error(err)}") from None
    profiles = dict(loaded["profiles"])
    rules = tuple(Rule(tuple((claim, _globs(globs)) for claim, globs in r["match"].items()), r["profile"])
                  for r in loaded["rules"])
    supported = loaded["scopes_supported"]
    if supported is None:
        supported = list(dict.fromkeys([*loaded["scopes_required"],
                                        *(g for r in rules for c, gs in r.match if c in ("scope", "scp")
                                          for g in gs if not set(g) & set("*?["))]))
    return OAuthSettings(
        issuers=issuers, resource=(loaded["resource"] or "").rstrip("/") or None,
        audiences=tuple(loaded["audiences"]), scopes_required=tuple(loaded["scopes_required"]),
        scopes_supported=tuple(supported), leeway_s=loaded["leeway_s"], http_timeout_s=loaded["http_timeout_s"],
        jwks_cache_s=loaded["jwks_cache_s"], jwks_refetch_s=loaded["jwks_refetch_s"],
        introspection_cache_s=loaded["introspection_cache_s"], profiles=profiles, rules=rules)
