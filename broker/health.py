"""Backend health in Redis: written by workers, read by the router, `/readyz` and the status page.

A worker knows first when a backend fails to start, crashes or stops answering
its MCP `ping`; the rest of the broker only needs the verdict. So each worker
keeps a small state machine per backend endpoint (replica) and writes it to
one Redis hash per server (`keys.health`) whenever the state moves, and on
every health check. Consecutive failures grow an exponential backoff: a
backend that crashes on every start is not restarted in a tight loop, and
calls to it fail fast with the reason instead of waiting out their time limit.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from redis.client import Pipeline

from broker import keys

UNHEALTHY_AFTER = 3  # consecutive failures that make a backend "unhealthy" (backoff before the next start)
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTH_TTL_S = 86400  # a server removed from the config leaves no health record behind for ever


@dataclass
class Health:
    """One backend endpoint's health, as stored (JSON) under its replica index in `keys.health(server)`."""

    state: str = "healthy"  # healthy | failing | unhealthy
    healthy: bool = True  # False from the first failure: a replica that failed leaves the rotation at once
    failures: int = 0
    error: str | None = None  # the kind of failure, without the backend's own words: clients may see it
    stderr: str | None = None  # the backend's last stderr lines, its secrets redacted: admins only
    retry_at: float | None = None
    checked_at: float = 0.0
    endpoint: str = ""
    worker: str = ""

    def failed(self, error: str, now: float | None = None, stderr: str | None = None, backoff: bool = True) -> None:
        """One more failure in a row: `failing`, then `unhealthy` with a growing backoff. `backoff=False`
        for a failure of a running session (calls timing out, a hung session restarted): the backoff is
        against restart loops of a backend that cannot start, and must not delay the fresh start that
        lets the calls waiting on a hung session run."""
        now = time.time() if now is None else now
        self.failures += 1
        self.error = error[:2000]
        self.stderr = stderr[-2000:] if stderr else None
        self.healthy = False
        self.checked_at = now
        if self.failures >= UNHEALTHY_AFTER:
            self.state = "unhealthy"
            if backoff:
                self.retry_at = now + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self.failures - UNHEALTHY_AFTER))
        else:
            self.state = "failing"
            self.retry_at = None

    def succeeded(self, now: float | None = None) -> None:
        self.state, self.healthy, self.failures, self.error, self.retry_at = "healthy", True, 0, None, None
        self.stderr = None
        self.checked_at = time.time() if now is None else now

    def backoff_left(self, now: float | None = None) -> float:
        """Seconds before a new start may be tried (0 when it may be tried now)."""
        if self.retry_at is None:
            return 0.0
        return max(0.0, self.retry_at - (time.time() if now is None else now))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def write(r: redis.Redis, server: str, replica: int, health: Health) -> None:
    """Store one replica's record; given a pipeline (a worker's write lane), only queue the commands on it."""
    own = not isinstance(r, Pipeline)
    pipe = r.pipeline(transaction=False) if own else r
    pipe.hset(keys.health(server), str(replica), health.to_json())
    pipe.expire(keys.health(server), HEALTH_TTL_S)
    if own:
        pipe.execute()


def read(r: redis.Redis, server: str) -> dict[int, dict[str, Any]]:
    """Replica index → its health record (only replicas some worker has reported on)."""
    out: dict[int, dict[str, Any]] = {}
    for field, value in r.hgetall(keys.health(server)).items():
        try:
            record = json.loads(value)
            index = int(field)
        except ValueError:
            continue
        if isinstance(record, dict):
            out[index] = record
    return out


def summary(r: redis.Redis, servers: list[str]) -> dict[str, dict[str, Any]]:
    """Per server: {"healthy": every reported replica healthy (True when none reported yet: a lazily
    started backend is not a failure), "available": some replica is not `unhealthy` (a failure or two
    is not yet a verdict; none reported counts as available), "replicas": {index: record}} — the
    shape `/readyz` shows under each server's "backend"."""
    pipe = r.pipeline(transaction=False)
    for server in servers:
        pipe.hgetall(keys.health(server))
    out: dict[str, dict[str, Any]] = {}
    for server, raw in zip(servers, pipe.execute(), strict=True):
        replicas: dict[str, Any] = {}
        for field, value in (raw or {}).items():
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if isinstance(record, dict):
                replicas[str(field)] = record
        states = [bool(rec.get("healthy", False)) for rec in replicas.values()]
        usable = [rec.get("state") != "unhealthy" for rec in replicas.values()]
        out[server] = {"healthy": all(states), "available": not usable or any(usable), "replicas": replicas}
    return out
