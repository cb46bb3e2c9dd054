"""Tool name → backend server → Celery queue; and which replica of a server takes a call.

Kept apart from the catalog because routing has its own policy (replicas,
health, load, per-client stickiness) while the catalog only knows what exists.

- A `per_client` server's calls go to the direct queue of the worker process
  that holds the client's backend session (recorded in Redis by that worker),
  while that worker lives; otherwise to the server's queue, where whichever
  worker takes the call creates the session and records itself as the owner.
- Among replicas, `choose_replica` picks the healthiest, then least loaded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from broker import health, keys
from broker.calls import Call
from broker.catalog import Catalog, ToolEntry
from broker.config import ServerSpec


class UnknownTool(LookupError):
    """No configured backend offers this (namespaced) tool."""


@dataclass(frozen=True)
class Route:
    entry: ToolEntry
    spec: ServerSpec

    @property
    def queue(self) -> str:
        return self.spec.queue


@dataclass(frozen=True)
class ReplicaState:
    """What the choice among replicas looks at."""

    index: int
    healthy: bool
    in_flight: int = 0
    backoff_left: float = 0.0  # seconds before an unhealthy replica may be started again


def choose_replica(replicas: Sequence[ReplicaState], exclude: frozenset[int] = frozenset()) -> int:
    """The healthiest, least-loaded replica (ties broken at random, so equal replicas share the load).

    Healthy ones first; when none is healthy, the one whose backoff ends first (a call then fails fast
    with the reason, or gets through if the replica recovered). `exclude` holds replicas that just
    failed this call; they are used only if nothing else is left."""
    pool = [r for r in replicas if r.index not in exclude] or list(replicas)
    healthy = [r for r in pool if r.healthy]
    if healthy:
        least = min(r.in_flight for r in healthy)
        return random.choice([r for r in healthy if r.in_flight == least]).index
    return min(pool, key=lambda r: (r.backoff_left, r.in_flight, random.random())).index


def client_key(call: Call) -> str | None:
    """Whose backend session a call of a `per_client` server uses: the client session, else the batch
    job (its calls share one); None for a lone call without either (it gets a one-shot session)."""
    if call.session:
        return str(call.session)
    if call.batch:
        return f"batch:{call.batch}"
    return None


def sticky_queue(r: redis.Redis, spec: ServerSpec, key: str | None) -> str:
    """The queue for a call: the owner's direct queue for a `per_client` session whose worker lives."""
    if spec.settings.isolation != "per_client" or key is None:
        return spec.queue
    node = r.get(keys.owner(spec.name, key))
    if node and r.exists(keys.worker_alive(node)):
        return keys.direct_queue(node)
    return spec.queue


class Router:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def unpublished_server(self, name: str) -> str | None:
        """The configured server a namespaced tool name points at, when that server has published no catalog
        yet (its worker is still starting, or none runs): a call to it may wait for the catalog (unless its
        workers already know it cannot start: `broken_reason`)."""
        prefix, sep, _ = name.partition(self.catalog.config.separator)
        server = self.catalog.config.server_of_prefix(prefix) if sep else None
        if server is not None and server in self.catalog.missing:
            return server
        return None

    def route_tool(self, name: str) -> Route:
        entry = self.catalog.lookup_tool(name)
        if entry is None:
            prefix = self.unpublished_server(name)
            if prefix is not None:
                raise UnknownTool(f"Unknown tool: {name} (server {prefix!r} has not published its tools yet"
                                  f"{self.broken_reason(prefix)})")
            raise UnknownTool(f"Unknown tool: {name}")
        return Route(entry, self.catalog.config.server(entry.server))

    def queue_for(self, spec: ServerSpec, session_id: str | None) -> str:
        return sticky_queue(self.catalog.redis, spec, session_id)

    def broken_reason(self, server: str) -> str:
        """Why a server has no tools yet, when its workers know (it fails to start, say)."""
        records = health.read(self.catalog.redis, server)
        broken = [rec for rec in records.values() if not rec.get("healthy", True)]
        if records and len(broken) == len(records):
            worst = broken[0]
            return f"; it is {worst.get('state')}: {worst.get('error')}"
        return ""
