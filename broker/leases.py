"""Per-key limits that hold across web processes and transports: calls in flight and open connections.

Counting in process memory (a session's own calls) did not limit a key: 6 sessions of a key with
`max_in_flight: 2` ran 6 calls at once, and one key holding 3,000 idle sockets locked every other
client out. So each key's holdings are leases in Redis, one sorted set per key and kind
(`keys.lease(kind, key id)`): member = a lease id (a call id, a connection id), score = when the lease
expires. Taking one is one Lua script, atomic across processes: drop the expired members, then add ours
only if fewer than the limit remain. The web process holding a lease renews it every `RENEW_S` (one
pipeline for all it holds) while what it stands for lasts, and removes it when that ends; a process that
crashes stops renewing, and its leases lapse `LEASE_S` later, so a count never leaks for ever.

A call whose client went away while it still runs in a worker (a closed socket; its session may resume
it) is still in flight: its lease is kept, and released once the call's outcome is stored or its
deadline passed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from broker import keys

log = logging.getLogger(__name__)

LEASE_S = 30.0  # how long a lease outlives the last renewal of its web process
RENEW_S = 10.0

_ACQUIRE = """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 1000)
return 1
"""


@dataclass
class _Held:
    key: str  # the sorted set
    deadline: float  # time.time() after which it is dropped whatever happens (a safety net against leaks)
    call_id: str | None = None  # orphaned: released once this call's outcome is stored


class LeaseKeeper:
    """The leases one web process holds, renewed from one background thread."""

    def __init__(self, r: redis.Redis, lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> None:
        self._r = r
        self._script = r.register_script(_ACQUIRE)
        self.lease_s, self.renew_s = lease_s, renew_s
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self, kind: str, owner: str, limit: int, lease_id: str, max_s: float) -> bool:
        """Take a lease of `kind` for key `owner` unless it already holds `limit` (0 = no limit: nothing is
        counted). `max_s`: the longest it may be held before it is dropped regardless."""
        if limit <= 0:
            return True
        key = keys.lease(kind, owner)
        if not self._script(keys=[key], args=[time.time(), limit, self.lease_s, lease_id]):
            return False
        with self._lock:
            self._held[lease_id] = _Held(key, time.time() + max_s)
        self._start()
        return True

    def release(self, lease_id: str) -> None:
        with self._lock:
            held = self._held.pop(lease_id, None)
        if held is not None:
            try:
                self._r.zrem(held.key, lease_id)
            except redis.RedisError:  # it lapses by itself
                log.warning("could not release lease %s", lease_id, exc_info=True)

    def release_when_answered(self, call_id: str) -> None:
        """The client stopped waiting for this call, but it may still run: keep its lease until its outcome
        is stored (or its deadline passes)."""
        with self._lock:
            held = self._held.get(call_id)
            if held is not None:
                held.call_id = call_id

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.renew_s)
            try:
                self.renew()
            except Exception:  # Redis away: the leases lapse, calls are not hurt; try again next round
                log.warning("could not renew leases", exc_info=True)

    def renew(self) -> None:
        """Push every held lease's expiry forward; drop the ones whose call has an outcome or that are past
        their deadline."""
        now = time.time()
        with self._lock:
            held = dict(self._held)
        orphans = [lease_id for lease_id, h in held.items() if h.call_id is not None]
        done: set[str] = {lease_id for lease_id, h in held.items() if h.deadline < now}
        if orphans:
            stored = self._r.mget([keys.result(lease_id) for lease_id in orphans])
            done |= {lease_id for lease_id, value in zip(orphans, stored, strict=True) if value is not None}
        pipe = self._r.pipeline(transaction=False)
        for lease_id, h in held.items():
            if lease_id in done:
                pipe.zrem(h.key, lease_id)
            else:
                pipe.zadd(h.key, {lease_id: now + self.lease_s}, xx=True)
                pipe.pexpire(h.key, int(self.lease_s * 1000) + 1000)
        if len(pipe):
            pipe.execute()
        with self._lock:
            for lease_id in done:
                self._held.pop(lease_id, None)

    def count(self, kind: str, owner: str) -> int:
        """Live leases of a key (all web processes), for tests and the status page."""
        return int(self._r.zcount(keys.lease(kind, owner), time.time(), "+inf"))
