"""Who may call what, and how fast: API keys, allow-lists, rate limits.

Keys come from `MCP_BROKER_API_KEYS` (plain keys, e.g. from a platform's
secret store) and/or a keys file (`MCP_BROKER_KEYS_FILE`, validated by a
schema) that holds only sha256 hashes. Either way only hashes are kept in
memory, and a key is never logged: a principal is known by its id. Each key
may carry an allow-list of patterns `<server glob><separator><name glob>` (`time__*`),
a rate (token bucket in Redis, so it holds across web processes) and caps on
calls in flight and open connections (per key, across web processes: `broker.leases`).

An allow pattern is split at its first separator and its two halves are matched against the server and
the item (tool, prompt) separately, never as one glob over the joined `server__tool` string: a glob over
the joined name is ambiguous because `*` crosses the separator (`echo__*` matched `echo___x`, the tool `x`
of a server named `echo_`), and tool names come from backends, which may put the separator in them, so
no check of the config alone could make whole-name globs safe. The config refuses server names that
would make the split of a pattern itself ambiguous (`broker.config`).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from broker import keys
from broker.config import DEFAULT_SEPARATOR
from broker.oauth.settings import OAuthConfigError, OAuthSettings, load_oauth
from broker.schemas import KeysFileSchema, first_error

if TYPE_CHECKING:  # gunicorn.conf.py loads keys in the gunicorn master, before gevent patches: no redis there
    import redis


class KeysConfigError(Exception):
    """The keys file or variable cannot be used."""


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the anonymous one when no keys are configured)."""

    id: str
    allow: tuple[str, ...] = ("*",)
    rate_per_s: float = 0.0  # 0 = unlimited
    burst: int = 0
    max_in_flight: int = 0  # per key, across web processes and transports; 0 = unlimited
    admin: bool = False
    max_connections: int = 0  # open sockets/requests per key, across web processes; 0 = unlimited
    results: str | None = None  # shaped|raw: how its MCP results come unless the endpoint is asked otherwise
    result_format: str | None = None  # raw|compact|toon for its shaped results, over the servers' setting
    catalog_mode: str | None = None  # the key's `tools` setting: full or search (broker.context.modes)
    pin: tuple[str, ...] = ()  # allow-style patterns of tools listed in either catalog mode
    expires_at: float | None = None  # an OAuth token's `exp` (epoch s): a WebSocket it opened closes then

    def may(self, server: str, name: str, separator: str = DEFAULT_SEPARATOR) -> bool:
        """Whether the key may use item `name` (a tool or prompt, as its backend names it) of `server`."""
        if len(server) + len(name) > _MAY_CACHED_CHARS:  # an odd name: not worth a place in the cache
            return _may(self.allow, separator, server, name)
        return _may_cached(self.allow, separator, server, name)

    def may_use_server(self, server: str, separator: str = DEFAULT_SEPARATOR) -> bool:
        """Whether the key may use all of `server` (its resources, templates and resource completions
        have no tool name to match, so they need a pattern that allows every item of the server)."""
        return any(fnmatch.fnmatchcase(server, server_glob) and not name_glob.strip("*")
                   for server_glob, name_glob in (split_pattern(p, separator) for p in self.allow))


def _may(allow: tuple[str, ...], separator: str, server: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(server, server_glob) and fnmatch.fnmatchcase(name, name_glob)
               for server_glob, name_glob in (split_pattern(p, separator) for p in allow))


# Every call asks (admission, per call and per listing): the globs matched anew were ~3 % of the web's CPU
# per call over WebSocket (py-spy, 64 in flight). The answer depends on nothing but these arguments.
_MAY_CACHED_CHARS = 512
_may_cached = functools.lru_cache(maxsize=8192)(_may)


def split_pattern(pattern: str, separator: str = DEFAULT_SEPARATOR) -> tuple[str, str]:
    """(server glob, item glob) of an allow pattern: split at the first separator; a pattern without one
    names whole servers (`*` = everything, `time` = every item of the server `time`)."""
    server, sep, name = pattern.partition(separator)
    return (server, name) if sep else (pattern, "*")


ANONYMOUS = Principal(id="anonymous", admin=True)


@dataclass
class KeyRing:
    """The configured keys, by hash."""

    principals: dict[str, Principal] = field(default_factory=dict)
    defaults: Principal = ANONYMOUS
    oauth: OAuthSettings | None = None  # bearer tokens of trusted issuers too (broker.oauth)

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate (with a key, or a token when OAuth is configured)."""
        return bool(self.principals) or self.oauth is not None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <key>` header; None if keys are on and it is wrong."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hash_key(authorization[7:].strip())
        for known, principal in self.principals.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def principal_of(entry: dict[str, Any], index: int) -> Principal:
    allow = entry.get("allow")
    return Principal(
        id=entry.get("id") or f"key{index}",
        allow=("*",) if allow is None else tuple(allow),  # an empty list allows nothing, never everything
        rate_per_s=float(entry.get("rate_per_s") or 0),
        burst=int(entry.get("burst") or max(1, int(entry.get("rate_per_s") or 0))),
        max_in_flight=int(entry.get("max_in_flight") or 0),
        max_connections=int(entry.get("max_connections") or 0),
        admin=bool(entry.get("admin", False)),
        results=entry.get("results"),
        result_format=entry.get("result_format"),
        catalog_mode=entry.get("tools"),
        pin=tuple(entry.get("pin") or ()),
    )


def load_keyring(env: dict[str, str] | None = None) -> KeyRing:
    """Keys from the environment: `MCP_BROKER_API_KEYS` ("key" or "id:key" or "id:key:pattern|pattern", comma
    separated) and `MCP_BROKER_KEYS_FILE` (JSON: {"keys": [{"id", "hash", "allow", "rate_per_s", ...}]}).

    A setting that is present but yields no usable key (`","`, `{"keys": []}`) is an error, not "no keys":
    no keys means anonymous admin access, and an operator who set a key variable meant the opposite.
    `id:key:` (an empty pattern list) allows nothing. The `oauth` block (the keys file's, or
    `MCP_BROKER_OAUTH`) is loaded too (broker.oauth.settings): a ring with only OAuth is enabled."""
    env = dict(os.environ) if env is None else env
    ring = KeyRing()
    variable = env.get("MCP_BROKER_API_KEYS", "")
    for index, raw in enumerate(k.strip() for k in variable.split(",")):
        if not raw:
            continue
        parts = raw.split(":", 2)
        key_id, key = ("", raw) if len(parts) == 1 else (parts[0], parts[1])
        allow = [p for p in parts[2].split("|") if p] if len(parts) == 3 else None  # `id:key:` → []
        if not key:
            raise KeysConfigError(f"MCP_BROKER_API_KEYS entry {index + 1}: empty key")
        entry = {"id": key_id or f"env{index + 1}", "admin": key_id == "admin", "allow": allow}
        ring.principals[hash_key(key)] = principal_of(entry, index)
    if variable and not ring.principals:
        raise KeysConfigError("MCP_BROKER_API_KEYS is set but holds no key (expected `key`, `id:key` or "
                              "`id:key:pattern|pattern`, comma separated); unset it to run without keys on "
                              "loopback only")
    path = env.get("MCP_BROKER_KEYS_FILE")
    oauth_block: dict[str, Any] | None = None
    if path:
        try:
            data = json.loads(Path(path).read_text())
            loaded = KeysFileSchema().load(data)
        except OSError as err:
            raise KeysConfigError(f"MCP_BROKER_KEYS_FILE {path}: cannot read the keys file: {err.strerror}") from None
        except ValueError as err:
            raise KeysConfigError(f"MCP_BROKER_KEYS_FILE {path}: not valid JSON: {err}") from None
        except ValidationError as err:
            raise KeysConfigError(f"MCP_BROKER_KEYS_FILE {path}: invalid keys file: {first_error(err)}") from None
        oauth_block = loaded["oauth"]
        if not loaded["keys"] and oauth_block is None:
            raise KeysConfigError(f"MCP_BROKER_KEYS_FILE {path}: the keys file holds no key; add one or unset "
                                  "MCP_BROKER_KEYS_FILE to run without keys on loopback only")
        for index, entry in enumerate(loaded["keys"]):
            ring.principals[entry["hash"]] = principal_of(entry, index)
    try:
        ring.oauth = load_oauth(env, oauth_block)
    except OAuthConfigError as err:
        raise KeysConfigError(str(err)) from None
    return ring


_TOKEN_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return math.ceil((1 - tokens) / rate * 1000)
"""


class RateLimiter:
    """Token buckets in Redis: one per key id, shared by every web process."""

    def __init__(self, r: redis.Redis) -> None:
        self._script = r.register_script(_TOKEN_BUCKET)

    def acquire(self, principal: Principal) -> int:
        """0 when the call may go; otherwise the milliseconds after which it may be retried."""
        if principal.rate_per_s <= 0:
            return 0
        return int(self._script(keys=[keys.rate(principal.id)],
                                args=[principal.rate_per_s, max(1, principal.burst), time.time()]))
