"""Health of backend endpoints (replicas), as workers see them, shared through Redis.

RECONSTRUCTED (issue 5 session): the original of this untracked file was overwritten by mistake
while it was being written in parallel; this version is rebuilt from its uses in
workers/backends.py and broker/router.py and from the record described in `keys.health`.
Compare it with your own copy and keep yours where they differ.

Each worker keeps a `Health` per endpoint: consecutive failures move it from healthy to failing
to unhealthy; an unhealthy endpoint is not restarted before `retry_at` (exponential backoff), so
a backend that cannot start fails calls fast with its reason instead of looping. Records are
written to the hash `keys.health(server)` (replica index → JSON) when they change.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from broker import keys

UNHEALTHY_AFTER = 3  # consecutive failures that make an endpoint unhealthy
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass
class Health:
    """One endpoint's health record (the JSON stored in Redis)."""

    endpoint: str = ""
    state: str = "healthy"  # healthy | failing | unhealthy
    healthy: bool = True
    failures: int = 0
    error: str | None = None
    retry_at: float | None = None
    checked_at: float = 0.0
    worker: str | None = None

    def failed(self, error: str) -> None:
        """One more failure in a row; unhealthy (with a backoff before the next start) past the threshold."""
        now = time.time()
        self.failures += 1
        self.error = error
        self.checked_at = now
        if self.failures >= UNHEALTHY_AFTER:
            self.state, self.healthy = "unhealthy", False
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self.failures - UNHEALTHY_AFTER))
            self.retry_at = now + delay
        else:
            self.state, self.healthy = "failing", True
            self.retry_at = None

    def succeeded(self) -> None:
        self.failures = 0
        self.error = None
        self.retry_at = None
        self.state, self.healthy = "healthy", True
        self.checked_at = time.time()

    def backoff_left(self) -> float:
        """Seconds before an unhealthy endpoint may be started again (0 = now)."""
        if self.state != "unhealthy" or self.retry_at is None:
            return 0.0
        return max(0.0, self.retry_at - time.time())

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def write(r: redis.Redis, server: str, replica: int, health: Health) -> None:
    r.hset(keys.health(server), str(replica), json.dumps(health.to_record(), separators=(",", ":")))


def read(r: redis.Redis, server: str) -> dict[str, dict[str, Any]]:
    """Replica index → its latest health record (as written by whichever worker saw it last)."""
    out: dict[str, dict[str, Any]] = {}
    for replica, raw in r.hgetall(keys.health(server)).items():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            out[str(replica)] = record
    return out
