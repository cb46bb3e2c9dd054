"""The shared result cache: opt-in per tool, shared by every client and web process.

Key = sha256 of (server, tool, canonical JSON arguments), so equal calls hit
whatever the argument order. The web process answers hits itself, without
touching Celery; workers write successful results (never `isError` ones) with
the tool's TTL from the server's `broker.cache` map. Hit and miss counters per
tool live in one Redis hash, for metrics and the status page.

A web process also keeps what Redis just told it for up to `local_ttl_s`
(default 1 s, never past the entry's own expiry): a hot key is then answered
from memory with no Redis round trip, the cost that dominated a cached call
(it halved cached latency and doubled cached calls/s in `make bench`). Hits
served from memory are counted locally and added to the Redis counters in
the background within a second. The one visible effect: a `_meta.cache:
false` refresh made through ANOTHER web process reaches this one within
`local_ttl_s` (a refresh through this process drops the local copy at once).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from typing import Any

import redis

from broker import keys, wire
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
    r.set(cache_key(server, tool, arguments), wire.dumps(result), px=int(ttl_s * 1000))
    return True


READ_RESOURCE = "resources/read"  # the cache's "tool" name for a backend's resource reads ({"uri": ...})


def store_directed(r: redis.Redis, server: str, tool: str, arguments: dict[str, Any], result: dict[str, Any]) -> bool:
    """Worker-side, the modern era's cache directives: a result the backend marked `cacheScope: "public"` with
    `ttlMs > 0` may be served to anyone, so it is kept that long; a "private" one is not kept (it may not be
    shared across clients, and per-session caching is not worth a round trip)."""
    ttl_ms = result.get("ttlMs")
    if result.get("cacheScope") != "public" or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        return False
    return store_result(r, server, tool, arguments, result, ttl_ms / 1000)


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
    LOCAL_MAX_ENTRIES = 10_000  # past this, the local copies are dropped wholesale (they refill from Redis)
    FLUSH_INTERVAL_S = 0.5

    def __init__(self, r: redis.Redis, config: BrokerConfig, local_ttl_s: float = 1.0) -> None:
        self._r = r
        self.config = config
        self._lookup = r.register_script(_LOOKUP)
        self.local_ttl_s = local_ttl_s
        self._local: dict[str, tuple[float, float, str]] = {}  # key → (local expiry, entry expiry, JSON)
        self._local_hits: Counter[str] = Counter()
        self._flusher: threading.Thread | None = None
        self._lock = threading.Lock()

    def ttl(self, server: str, tool: str) -> float:
        """The operator's TTL for this tool in seconds; 0 = never cached."""
        spec = self.config.servers.get(server)
        return float(spec.settings.cache.get(tool, 0)) if spec else 0.0

    def lookup(self, server: str, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """(cached result, remaining ms), counting a hit or a miss; at most one round trip."""
        name = f"{server}{self.config.separator}{tool}"
        key = cache_key(server, tool, arguments)
        now = time.monotonic()
        local = self._local.get(key)
        if local is not None and local[0] > now:
            self._count_local_hit(name)
            return json.loads(local[2]), int((local[1] - now) * 1000)
        found = self._lookup(keys=[key, keys.CACHE_STATS], args=[name])
        if not found:
            self._local.pop(key, None)
            return None
        payload, remaining_ms = found[0], int(found[1])
        if self.local_ttl_s > 0 and remaining_ms > 0:
            if len(self._local) >= self.LOCAL_MAX_ENTRIES:
                self._local.clear()
            expires = now + remaining_ms / 1000
            self._local[key] = (min(expires, now + self.local_ttl_s), expires, payload)
        return json.loads(payload), remaining_ms

    def forget_local(self, server: str, tool: str, arguments: dict[str, Any]) -> None:
        """Drop this process's copy (the caller is about to refresh the entry by running the tool)."""
        self._local.pop(cache_key(server, tool, arguments), None)

    def _count_local_hit(self, name: str) -> None:
        with self._lock:
            self._local_hits[name] += 1
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="cache-hits", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        """Add the hits answered from memory to the shared counters, twice a second while there are any."""
        while True:
            time.sleep(self.FLUSH_INTERVAL_S)
            self.flush_hits()

    def flush_hits(self) -> None:
        with self._lock:
            pending, self._local_hits = self._local_hits, Counter()
        if not pending:
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for name, count in pending.items():
                pipe.hincrby(keys.CACHE_STATS, f"{name}:hits", count)
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._local_hits.update(pending)  # counted at the next flush instead

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for field, count in self._r.hgetall(keys.CACHE_STATS).items():
            tool, _, kind = field.rpartition(":")
            out.setdefault(tool, {"hits": 0, "misses": 0})[kind] = int(count)
        return out
