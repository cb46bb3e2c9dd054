"""Metrics of the whole broker: counted in every process, gathered in Redis, read by any web process.

Why not prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`): it merges the processes
of ONE machine through files in a shared directory, while the broker's Celery workers are separate
processes, usually on other machines, and web processes scale out too. So every process (each
gunicorn worker, each Celery worker) counts in memory (a dict update under a lock: about a
microsecond, measured in tests/test_observability.py) and a daemon thread folds the deltas into
Redis hashes once a second, in one pipelined round trip. `GET /metrics` on any web process reads
those hashes plus what is only known at scrape time (queue depths, live workers, cache counters,
see `broker.fleet`) and renders them with prometheus-client. `PROMETHEUS_MULTIPROC_DIR` is not
needed and is ignored: no prometheus-client metric objects (the thing it shares) are created.

Consequences, on purpose: counters are broker-wide (scrape one web process, not all: they would
repeat the same series) and survive process restarts; a process killed with SIGKILL loses at
most its last second of counts. Gauges of a process (open sockets, sessions) are stored under
the process's own key with a short TTL, so a dead process's gauges vanish by themselves.

The same deltas also feed 10-second slots (`recent`) that the status page turns into call rates
and mean latencies over the last minute, without any extra work on the hot path.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from broker import keys
from broker.redisconn import get_redis

log = logging.getLogger(__name__)

FLUSH_S = 1.0
SLOT_S = 10  # width of a `recent` slot
RECENT_TTL_S = 900  # slots kept this long (the status page reads the last minute)
PROC_TTL_S = 15  # a process's gauges vanish this long after its last flush
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

Labels = tuple[str, ...]

# Add deltas to the totals hash (the first ARGV[1] pairs) and to the current slot (the rest, which expires).
_ADD = """
local n, i = tonumber(ARGV[1]) * 2 + 2, 3
while i <= #ARGV do
  redis.call('HINCRBYFLOAT', i <= n and KEYS[1] or KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if #ARGV > n then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class MetricDef:
    """One metric: its Prometheus name, kind, help text and label names."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: Labels


DEFS: dict[str, MetricDef] = {d.name: d for d in (
    MetricDef("mcp_broker_calls", "counter",
              "Tool calls answered to clients by the web tier (cached and rejected ones too), by outcome",
              ("server", "tool", "outcome")),
    MetricDef("mcp_broker_executions", "counter",
              "Calls run by workers (batch jobs included), by outcome", ("server", "tool", "outcome")),
    MetricDef("mcp_broker_retries", "counter",
              "Retries of transient backend failures (crash, lost connection)", ("server",)),
    MetricDef("mcp_broker_backend_restarts", "counter", "Restarts of a broken backend session", ("server",)),
    MetricDef("mcp_broker_queue_wait_seconds", "histogram",
              "Time a call waited between the web tier and a worker taking it", ("server",)),
    MetricDef("mcp_broker_execution_seconds", "histogram",
              "Time a worker spent running a call (retries included)", ("server", "tool")),
    MetricDef("mcp_broker_end_to_end_seconds", "histogram",
              "Time from queueing a call to handing its answer to the client (web side)", ("server",)),
    MetricDef("mcp_broker_open_sockets", "gauge",
              "Client connections open: WebSockets (ws), Streamable HTTP event streams (sse)", ("transport",)),
    MetricDef("mcp_broker_sessions_open", "gauge", "Client sessions held by web processes", ()),
    MetricDef("mcp_broker_calls_in_flight", "gauge", "Calls the web processes are waiting for", ()),
)}


def _field(*parts: Any) -> str:
    return json.dumps(parts, separators=(",", ":"))


def process_id(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


class Recorder:
    """This process's metric deltas, flushed to Redis by a daemon thread (started lazily, again after a fork)."""

    def __init__(self, redis_getter: Callable[[], redis.Redis] = get_redis, flush_s: float = FLUSH_S) -> None:
        self._redis = redis_getter
        self.flush_s = flush_s
        self.role = "proc"
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, Labels], float] = {}
        self._hists: dict[tuple[str, Labels], list[float]] = {}  # bucket counts..., +Inf count, sum
        self._levels: dict[tuple[str, Labels], float] = {}  # gauges this process moves up and down
        self._sampled: dict[str, Callable[[], dict[Labels, float]]] = {}  # gauges read at flush time
        self._pid: int | None = None
        self._add: tuple[redis.Redis, Any] | None = None

    # ------------------------------------------------------------ hot path
    def inc(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        if self._pid != os.getpid():
            self._start()
        key = (name, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        if self._pid != os.getpid():
            self._start()
        key = (name, labels)
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            row = self._hists.get(key)
            if row is None:
                row = self._hists[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            row[index] += 1
            row[-1] += seconds

    def record(self, counts: list[tuple[str, Labels]], observations: list[tuple[str, Labels, float]]) -> None:
        """`inc` (by one) of each of `counts` and `observe` of each of `observations`, under one lock: a worker's
        message of calls (`observe.worker_outcomes`; three locks a call were ~3.5 us each, bench.observe_cost)."""
        if self._pid != os.getpid():
            self._start()
        rows = [((name, labels), bisect.bisect_left(LATENCY_BUCKETS, seconds), seconds)
                for name, labels, seconds in observations]
        width = len(LATENCY_BUCKETS) + 2
        with self._lock:
            for key in counts:
                self._counts[key] = self._counts.get(key, 0.0) + 1.0
            for key, index, seconds in rows:
                row = self._hists.get(key)
                if row is None:
                    row = self._hists[key] = [0.0] * width
                row[index] += 1
                row[-1] += seconds

    def level(self, name: str, labels: Labels, delta: float) -> None:
        """Move a gauge of this process (e.g. +1 when a socket opens, -1 when it closes)."""
        if self._pid != os.getpid():
            self._start()
        key = (name, labels)
        with self._lock:
            self._levels[key] = self._levels.get(key, 0.0) + delta

    def sample(self, name: str, fn: Callable[[], dict[Labels, float]]) -> None:
        """A gauge read at every flush (e.g. how many sessions this process holds)."""
        self._sampled[name] = fn

    # ------------------------------------------------------------ flushing
    def start(self) -> None:
        """Start flushing now (gauges are published even before anything is counted)."""
        if self._pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._pid is not None:  # a forked child: the parent's deltas are the parent's to flush
                self._counts, self._hists, self._levels = {}, {}, {}
            self._pid = os.getpid()
        self.proc_id = process_id(self.role)
        threading.Thread(target=self._loop, name="metrics-flush", daemon=True).start()
        atexit.register(self.flush)

    def _loop(self) -> None:
        while True:
            time.sleep(self.flush_s)
            try:
                self.flush()
            except Exception:  # Redis away: the deltas were put back, try again next time
                log.warning("metrics flush failed", exc_info=True)

    def _take(self) -> tuple[dict[tuple[str, Labels], float], dict[tuple[str, Labels], list[float]]]:
        with self._lock:
            counts, hists = self._counts, self._hists
            self._counts, self._hists = {}, {}
        return counts, hists

    def _put_back(self, counts: dict[tuple[str, Labels], float], hists: dict[tuple[str, Labels], list[float]]) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] = self._counts.get(key, 0.0) + value
            for key, row in hists.items():
                mine = self._hists.setdefault(key, [0.0] * len(row))
                for i, value in enumerate(row):
                    mine[i] += value

    def gauges(self) -> dict[tuple[str, Labels], float]:
        out = dict(self._levels)
        for name, fn in list(self._sampled.items()):
            try:
                for labels, value in fn().items():
                    out[(name, labels)] = value
            except Exception:
                log.debug("gauge %s could not be sampled", name, exc_info=True)
        return out

    def flush(self) -> None:
        """Fold the deltas into Redis (one pipelined round trip); on failure keep them for the next try."""
        if self._pid != os.getpid():
            return
        counts, hists = self._take()
        gauges = self.gauges()
        if not counts and not hists and not gauges:
            return
        now = time.time()
        recent_key = keys.metrics_recent(int(now // SLOT_S))
        totals: dict[str, float] = {}
        recent: dict[str, float] = {}
        for (name, labels), value in counts.items():
            totals[_field("c", name, labels)] = value
            if labels and len(labels) >= 3:  # calls / executions: server, tool, outcome
                slot_field = _field(labels[0], f"{name}:{labels[2]}")
                recent[slot_field] = recent.get(slot_field, 0.0) + value
        for (name, labels), row in hists.items():
            for i, value in enumerate(row[:-1]):
                if value:
                    bound = "+Inf" if i == len(LATENCY_BUCKETS) else repr(LATENCY_BUCKETS[i])
                    totals[_field("b", name, labels, bound)] = value
            totals[_field("s", name, labels)] = row[-1]
            if labels:
                count = sum(row[:-1])
                for suffix, value in (("n", count), ("sum", row[-1])):
                    slot_field = _field(labels[0], f"{name}:{suffix}")
                    recent[slot_field] = recent.get(slot_field, 0.0) + value
        r = self._redis()
        if self._add is None or self._add[0] is not r:
            self._add = (r, r.register_script(_ADD))
        pipe = r.pipeline(transaction=False)
        if totals or recent:  # one script call, not a command per field: the flush stays a few ms
            args: list[Any] = [len(totals), RECENT_TTL_S]
            for field_name, value in (*totals.items(), *recent.items()):
                args += [field_name, repr(value)]
            self._add[1](keys=[keys.METRICS, recent_key], args=args, client=pipe)
        proc_key = keys.metrics_proc(self.proc_id)
        if gauges:  # overwritten field by field (a DEL first would let a scrape see the process gone)
            pipe.hset(proc_key, mapping={_field(name, labels): value for (name, labels), value in gauges.items()})
            pipe.expire(proc_key, PROC_TTL_S)
            pipe.sadd(keys.METRICS_PROCS, self.proc_id)
        try:
            pipe.execute()
        except redis.RedisError:
            self._put_back(counts, hists)
            raise


RECORDER = Recorder()


# ---------------------------------------------------------------- reading (scrape time)
@dataclass
class Snapshot:
    """Everything the processes have flushed, decoded: counters, histograms and summed gauges."""

    counters: dict[tuple[str, Labels], float]
    buckets: dict[tuple[str, Labels], dict[str, float]]  # non-cumulative counts by bound
    sums: dict[tuple[str, Labels], float]
    gauges: dict[tuple[str, Labels], float]

    def histogram(self, name: str, labels: Labels) -> tuple[list[tuple[str, float]], float, float]:
        """(cumulative buckets in bound order ending with +Inf, count, sum)."""
        by_bound = self.buckets.get((name, labels), {})
        cumulative, total = [], 0.0
        for bound in [*map(repr, LATENCY_BUCKETS), "+Inf"]:
            total += by_bound.get(bound, 0.0)
            cumulative.append((bound, total))
        return cumulative, total, self.sums.get((name, labels), 0.0)

    def quantile(self, name: str, label_sets: list[Labels], q: float) -> float | None:
        """The q-quantile of the histograms of `label_sets` merged (a server's tools), interpolated linearly
        within the bucket it falls in, as Prometheus' `histogram_quantile` does: the bucket's upper bound
        alone showed "p95 <= 2500" for calls that all took 1.1 s. In the +Inf bucket: the highest bound."""
        merged: dict[str, float] = {}
        for labels in label_sets:
            for bound, value in self.buckets.get((name, labels), {}).items():
                merged[bound] = merged.get(bound, 0.0) + value
        count = sum(merged.values())
        if not count:
            return None
        rank, below, lower = q * count, 0.0, 0.0
        for bound in LATENCY_BUCKETS:
            inside = merged.get(repr(bound), 0.0)
            if inside and below + inside >= rank:
                return lower + (float(bound) - lower) * (rank - below) / inside
            below, lower = below + inside, float(bound)
        return float(LATENCY_BUCKETS[-1])


def read_snapshot(r: redis.Redis) -> Snapshot:
    counters: dict[tuple[str, Labels], float] = {}
    buckets: dict[tuple[str, Labels], dict[str, float]] = {}
    sums: dict[tuple[str, Labels], float] = {}
    for raw, value in r.hgetall(keys.METRICS).items():
        try:
            kind, name, labels, *rest = json.loads(raw)
            key = (str(name), tuple(labels))
        except (ValueError, TypeError):
            continue
        if kind == "c":
            counters[key] = float(value)
        elif kind == "b" and rest:
            buckets.setdefault(key, {})[str(rest[0])] = float(value)
        elif kind == "s":
            sums[key] = float(value)
    gauges: dict[tuple[str, Labels], float] = {}
    procs = sorted(r.smembers(keys.METRICS_PROCS))
    if procs:
        pipe = r.pipeline(transaction=False)
        for proc in procs:
            pipe.hgetall(keys.metrics_proc(proc))
        for proc, fields in zip(procs, pipe.execute(), strict=True):
            if not fields:
                r.srem(keys.METRICS_PROCS, proc)  # expired: the process is gone
                continue
            for raw, value in fields.items():
                with contextlib.suppress(ValueError, TypeError):
                    name, labels = json.loads(raw)
                    key = (str(name), tuple(labels))
                    gauges[key] = gauges.get(key, 0.0) + float(value)
    return Snapshot(counters, buckets, sums, gauges)


def read_recent(
    r: redis.Redis, window_s: float = 60.0, now: float | None = None
) -> tuple[dict[str, dict[str, float]], float]:
    """Per server: the `recent` fields summed over the last `window_s` seconds; and the window's real length."""
    now = time.time() if now is None else now
    first, last = int((now - window_s) // SLOT_S), int(now // SLOT_S)
    pipe = r.pipeline(transaction=False)
    for slot in range(first, last + 1):
        pipe.hgetall(keys.metrics_recent(slot))
    out: dict[str, dict[str, float]] = {}
    for fields in pipe.execute():
        for raw, value in fields.items():
            with contextlib.suppress(ValueError, TypeError):
                server, name = json.loads(raw)
                row = out.setdefault(str(server), {})
                row[name] = row.get(name, 0.0) + float(value)
    return out, max(1.0, now - first * SLOT_S)


class BrokerCollector:
    """prometheus-client collector: the broker-wide numbers in Redis, plus `extra` families read at scrape time."""

    def __init__(self, r: redis.Redis, extra: Callable[[], Iterator[Metric]] | None = None) -> None:
        self._r = r
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        snap = read_snapshot(self._r)
        for definition in DEFS.values():
            labels = list(definition.labels)
            if definition.kind == "counter":
                family: Metric = CounterMetricFamily(definition.name, definition.help, labels=labels)
                for (name, values), value in sorted(snap.counters.items()):
                    if name == definition.name and len(values) == len(labels):
                        family.add_metric(list(values), value)
            elif definition.kind == "histogram":
                family = HistogramMetricFamily(definition.name, definition.help, labels=labels)
                for name, values in sorted({k for k in (*snap.buckets, *snap.sums) if k[0] == definition.name}):
                    if len(values) == len(labels):
                        cumulative, _, total = snap.histogram(name, values)
                        family.add_metric(list(values), cumulative, total)
            else:
                family = GaugeMetricFamily(definition.name, definition.help, labels=labels)
                found = False
                for (name, values), value in sorted(snap.gauges.items()):
                    if name == definition.name and len(values) == len(labels):
                        family.add_metric(list(values), value)
                        found = True
                if not found and not labels:
                    family.add_metric([], 0.0)
            yield family
        if self._extra is not None:
            yield from self._extra()
