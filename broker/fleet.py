"""The broker's state as seen from Redis at one moment: live workers, queue depths, readiness, status.

Read at request time by `/readyz`, `/status.json` and `/metrics` on any web process, so the answer
is the same whichever process (or machine) serves it. Live workers come from the leases that every
worker process keeps in Redis (`workers/control.py`: a heartbeat key that expires 10 s after the
process stops renewing it, whose value names the queues the process consumes); queue depths from
the lists kombu's Redis transport keeps per queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker import health, keys
from broker.config import BrokerConfig
from broker.metrics import SLOT_S, Snapshot, read_recent, read_snapshot
from broker.tasks import TaskStore

KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue "q" at priority p>0 is the list "q\x06\x16p"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
RECENT_WINDOW_S = 60.0


def lease_value(queues: list[str], host: str, pid: int, started: float) -> str:
    """What a worker process's heartbeat key holds: enough to tell which servers it serves."""
    return json.dumps({"queues": sorted(queues), "host": host, "pid": pid, "started": started},
                      separators=(",", ":"))


def live_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """Every worker process whose heartbeat has not expired, with the queues it consumes."""
    nodes = sorted(r.smembers(keys.WORKERS))
    if not nodes:
        return []
    values = r.mget([keys.worker_alive(node) for node in nodes])
    workers = []
    for node, value in zip(nodes, values, strict=True):
        if value is None:
            continue
        try:
            lease = json.loads(value)
        except ValueError:
            lease = None
        if not isinstance(lease, dict):
            lease = {"queues": None}  # a lease of an older worker: alive, queues unknown
        workers.append({"node": node, **lease})
    return workers


def workers_by_server(config: BrokerConfig, workers: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in config.servers}
    for worker in workers:
        queues = worker.get("queues") or []
        for name, spec in config.servers.items():
            if spec.queue in queues:
                out[name].append(worker)
    return out


def queue_depths(r: redis.Redis, config: BrokerConfig) -> dict[str, int]:
    """Messages waiting in each server's queue (messages held by workers are not waiting)."""
    names = list(config.servers)
    pipe = r.pipeline(transaction=False)
    for name in names:
        queue = config.server(name).queue
        pipe.llen(queue)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}")
    lengths = pipe.execute()
    width = 1 + len(KOMBU_PRIORITY_STEPS)
    return {name: int(sum(lengths[i * width:(i + 1) * width])) for i, name in enumerate(names)}


def readiness(r: redis.Redis, config: BrokerConfig, web: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
    """Ready = the broker can serve: Redis answers and (`web`, the asking web process's own state) that
    process has loaded the published catalogs and listens for results. Each server's health (live workers,
    a usable backend) is reported under `servers` but does not make the broker unready: a load balancer
    that probes /readyz must not take every web process out because one backend is down (the web
    processes still serve every other server, and calls to the bad one fail with the reason)."""
    started = time.perf_counter()
    try:
        r.ping()
        by_server = workers_by_server(config, live_workers(r))
        depths = queue_depths(r, config)
        published = r.exists(*[keys.catalog(name) for name in config.servers]) if config.servers else 0
        catalogs = {name: bool(r.exists(keys.catalog(name))) for name in config.servers} if published else {}
        backends = health.summary(r, list(config.servers))  # what workers saw of each backend (broker.health)
    except (redis.RedisError, OSError) as err:
        return False, {"status": "unready", "redis": {"ok": False, "error": f"{type(err).__name__}: {err}"},
                       "servers": {}, **({"web": web} if web is not None else {})}
    servers = {}
    for name in config.servers:
        live = by_server[name]
        backend = backends[name]
        reason = {} if live else {"reason": f"no live worker consumes {config.server(name).queue}"}
        if live and not backend["available"]:
            errors = {rec.get("error") for rec in backend["replicas"].values()}
            reason = {"reason": f"backend unhealthy: {'; '.join(sorted(str(e) for e in errors))}"}
        servers[name] = {
            "ready": bool(live) and backend["available"],
            "workers": len(live),
            "queue_depth": depths[name],
            "catalog_published": catalogs.get(name, False),
            "backend": backend,
            **reason,
        }
    ready = web is None or bool(web.get("ready"))
    redis_ms = round((time.perf_counter() - started) * 1000, 2)
    return ready, {"status": "ready" if ready else "unready", "redis": {"ok": True, "check_ms": redis_ms},
                   **({"web": web} if web is not None else {}), "servers": servers,
                   "servers_ready": sum(1 for s in servers.values() if s["ready"])}


def cache_stats(r: redis.Redis, config: BrokerConfig) -> dict[tuple[str, str], dict[str, int]]:
    """(server, tool) → hits and misses of the shared cache (counted by its lookup script)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for field, count in r.hgetall(keys.CACHE_STATS).items():
        name, _, kind = field.rpartition(":")
        server, sep, tool = name.partition(config.separator)
        if not sep or kind not in ("hits", "misses"):
            continue
        out.setdefault((server, tool), {"hits": 0, "misses": 0})[kind] = int(count)
    return out


def scrape_time_metrics(r: redis.Redis, config: BrokerConfig) -> Iterator[Metric]:
    """The families only Redis knows at scrape time: queue depth, workers, cache hits/misses, tasks by state."""
    depths = queue_depths(r, config)
    by_server = workers_by_server(config, live_workers(r))
    depth = GaugeMetricFamily("mcp_broker_queue_depth", "Calls waiting in a server's queue", labels=["server"])
    workers = GaugeMetricFamily("mcp_broker_workers", "Live worker processes consuming a server's queue",
                                labels=["server"])
    for name in config.servers:
        depth.add_metric([name], depths[name])
        workers.add_metric([name], len(by_server[name]))
    yield depth
    yield workers
    hits = CounterMetricFamily("mcp_broker_cache_hits", "Calls answered from the shared cache",
                               labels=["server", "tool"])
    misses = CounterMetricFamily("mcp_broker_cache_misses", "Cacheable calls not found in the cache",
                                 labels=["server", "tool"])
    for (server, tool), counts in sorted(cache_stats(r, config).items()):
        hits.add_metric([server, tool], counts["hits"])
        misses.add_metric([server, tool], counts["misses"])
    yield hits
    yield misses
    tasks = GaugeMetricFamily("mcp_broker_tasks", "Live tasks (tasks extension) by state", labels=["state"])
    for state, count in TaskStore(r).counts().items():
        tasks.add_metric([state], count)
    yield tasks


def _replicas(backend: dict[str, Any] | None) -> dict[str, int]:
    """How many backend replicas the workers have reported, and how many of them are healthy."""
    records = (backend or {}).get("replicas") or {}
    return {"reported": len(records), "healthy": sum(1 for rec in records.values() if rec.get("healthy"))}


FAILURES = ("error", "timeout")  # outcomes of a run that got no answer from the tool (a tool error is an answer)


def _mean_ms(row: dict[str, float], name: str) -> float | None:
    n = row.get(f"{name}:n", 0.0)
    return round(row.get(f"{name}:sum", 0.0) / n * 1000, 3) if n else None


def _total(snapshot: Snapshot, metric: str, server: str, outcomes: tuple[str, ...] | None = None) -> float:
    return sum(v for (name, labels), v in snapshot.counters.items()
               if name == metric and labels[0] == server and (outcomes is None or labels[2] in outcomes))


def status(r: redis.Redis, config: BrokerConfig) -> dict[str, Any]:
    """Everything the status page shows, broker-wide: per server, and totals."""
    now = time.time()
    ready, detail = readiness(r, config)
    if not detail["redis"]["ok"]:
        return {"generated_at": now, "ready": False, "redis": detail["redis"], "servers": [], "totals": {}}
    by_server = workers_by_server(config, live_workers(r))
    snapshot = read_snapshot(r)
    recent, window = read_recent(r, RECENT_WINDOW_S, now)
    cache = cache_stats(r, config)
    servers = []
    for name, spec in config.servers.items():
        row = recent.get(name, {})
        executed = sum(v for k, v in row.items() if k.startswith("mcp_broker_executions:"))
        tool_errors = row.get("mcp_broker_executions:tool_error", 0.0)  # the tool answered isError: it ran
        failures = sum(row.get(f"mcp_broker_executions:{o}", 0.0) for o in FAILURES)  # no answer from the tool
        hits = sum(c["hits"] for (server, _), c in cache.items() if server == name)
        misses = sum(c["misses"] for (server, _), c in cache.items() if server == name)
        p95 = snapshot.quantile("mcp_broker_execution_seconds", [
            labels for (metric, labels) in snapshot.buckets if metric == "mcp_broker_execution_seconds"
            and labels[0] == name], 0.95)
        servers.append({
            "name": name,
            "transport": getattr(spec, "transport", None),
            "queue": spec.queue,
            "ready": detail["servers"][name]["ready"],
            "reason": detail["servers"][name].get("reason"),
            "replicas": _replicas(detail["servers"][name].get("backend")),
            "stderr": {index: rec["stderr"] for index, rec in  # admins only (/status.json), secrets redacted
                       ((detail["servers"][name].get("backend") or {}).get("replicas") or {}).items()
                       if rec.get("stderr")},
            "catalog_published": detail["servers"][name]["catalog_published"],
            "workers": [{"node": w["node"], "host": w.get("host"), "pid": w.get("pid"),
                         "up_s": round(now - w["started"], 1) if isinstance(w.get("started"), (int, float)) else None}
                        for w in by_server[name]],
            "queue_depth": detail["servers"][name]["queue_depth"],
            "calls_total": int(_total(snapshot, "mcp_broker_calls", name)),
            "executions_total": int(_total(snapshot, "mcp_broker_executions", name)),
            "errors_total": int(_total(snapshot, "mcp_broker_executions", name, ("error", "timeout", "tool_error"))),
            "retries_total": int(snapshot.counters.get(("mcp_broker_retries", (name,)), 0)),
            "backend_restarts_total": int(snapshot.counters.get(("mcp_broker_backend_restarts", (name,)), 0)),
            "calls_per_s": round(executed / window, 3),
            "errors_per_s": round((tool_errors + failures) / window, 3),
            "tool_errors_per_s": round(tool_errors / window, 3),
            "failures_per_s": round(failures / window, 3),
            "latency_ms": {
                "execution_mean": _mean_ms(row, "mcp_broker_execution_seconds"),
                "queue_wait_mean": _mean_ms(row, "mcp_broker_queue_wait_seconds"),
                "end_to_end_mean": _mean_ms(row, "mcp_broker_end_to_end_seconds"),
                "execution_p95": round(p95 * 1000, 3) if p95 is not None else None,  # since Redis was emptied
            },
            "cache": {"hits": hits, "misses": misses,
                      "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None},
        })
    gauges = snapshot.gauges
    all_hits = sum(s["cache"]["hits"] for s in servers)
    all_lookups = all_hits + sum(s["cache"]["misses"] for s in servers)
    totals = {
        "servers": len(servers),
        "servers_ready": sum(1 for s in servers if s["ready"]),
        "workers": len({w["node"] for s in servers for w in s["workers"]}),
        "queue_depth": sum(s["queue_depth"] for s in servers),
        "calls_total": sum(s["calls_total"] for s in servers),
        "executions_total": sum(s["executions_total"] for s in servers),
        "calls_per_s": round(sum(s["calls_per_s"] for s in servers), 3),
        "errors_per_s": round(sum(s["errors_per_s"] for s in servers), 3),
        "tool_errors_per_s": round(sum(s["tool_errors_per_s"] for s in servers), 3),
        "failures_per_s": round(sum(s["failures_per_s"] for s in servers), 3),
        "open_sessions": int(gauges.get(("mcp_broker_sessions_open", ()), 0)),
        "open_sockets": int(sum(v for (n, _), v in gauges.items() if n == "mcp_broker_open_sockets")),
        "calls_in_flight": int(gauges.get(("mcp_broker_calls_in_flight", ()), 0)),
        "cache_hit_rate": round(all_hits / all_lookups, 4) if all_lookups else None,
        "tasks": TaskStore(r).counts(),  # live tasks by state (tasks extension)
    }
    return {"generated_at": now, "ready": ready, "redis": detail["redis"], "window_s": round(window, 1),
            "slot_s": SLOT_S, "servers": servers, "totals": totals}
