"""The shared result cache: opt-in per tool, shared by every client and web process.

Key = sha256 of (server, tool, canonical JSON arguments), so equal calls hit
whatever the argument order. The web process answers hits itself, without
touching Celery; workers write successful results (never `isError` ones) with
the tool's TTL from the server's `broker.cache` map. Hit and miss counters per
tool live in one Redis hash, for metrics and the status page.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from broker import keys
from broker.config import BrokerConfig

BYPASS_META_KEY = "cache"  # `_meta: {"cache": false}` skips the lookup (the fresh result is still stored)


def canonical(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(server: str, tool: str, arguments: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{server}\0{tool}\0{canonical(arguments)}".encode()).hexdigest()
    return keys.cache_entry(digest)


def cacheable(result: dict[str, Any]) -> bool:
    return not result.get("isError")


def store_result(
    r: redis.Redis, server: str, tool: str, arguments: dict[str, Any], result: dict[str, Any], ttl_s: float
) -> bool:
    """Worker-side: keep a successful result for `ttl_s` seconds (errors are never cached)."""
    if ttl_s <= 0 or not cacheable(result):
        return False
    r.set(cache_key(server, tool, arguments), json.dumps(result, separators=(",", ":")), px=int(ttl_s * 1000))
    return True


_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('HINCRBY', KEYS[2], ARGV[1] .. ':hits', 1)
  return {v, redis.call('PTTL', KEYS[1])}
end
redis.call('HINCRBY', KEYS[2], ARGV[1] .. ':misses', 1)
return false
"""


class ResultCache:
    def __init__(self, r: redis.Redis, config: BrokerConfig) -> None:
        self._r = r
        self.config = config
        self._lookup = r.register_script(_LOOKUP)

    def ttl(self, server: str, tool: str) -> float:
        """The operator's TTL for this tool in seconds; 0 = never cached."""
        spec = self.config.servers.get(server)
        return float(spec.settings.cache.get(tool, 0)) if spec else 0.0

    def lookup(self, server: str, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """(cached result, remaining ms), counting a hit or a miss; one round trip."""
        name = f"{server}{self.config.separator}{tool}"
        found = self._lookup(keys=[cache_key(server, tool, arguments), keys.CACHE_STATS], args=[name])
        if not found:
            return None
        return json.loads(found[0]), int(found[1])

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for field, count in self._r.hgetall(keys.CACHE_STATS).items():
            tool, _, kind = field.rpartition(":")
            out.setdefault(tool, {"hits": 0, "misses": 0})[kind] = int(count)
        return out
