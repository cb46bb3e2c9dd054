"""Batch jobs: many tool calls submitted at once, run by the workers, results streamed back.

A batch is checked whole before anything is queued (`broker.batch_input`: a
100,000-call file with one bad line fails at once with the line named). Then
its calls go out in messages of up to `chunk_size` calls per server (a Celery
send costs more than a trivial backend call, and the worker runs a message's
calls concurrently), and the batch lives in three Redis keys shared with the
workers (`broker.results` writes them atomically with each call's result):

    keys.batch(id)          hash: total, created, state, done/failed/cancelled counters, tool:<name> counts
    keys.batch_results(id)  stream: one entry per finished call, in completion order
    keys.batch_started(id)  set: call ids a worker has started

So status is a couple of O(1) reads (no per-call bookkeeping in the web tier),
results can be streamed while the batch runs and resumed from any stream id,
and cancelling is one flag every worker checks before running a queued call.

Nothing here knows Flask or Celery: the web layer hands in the router and a
`submit(queue, calls)` function, and gets back plain dicts and JSON lines.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from broker import keys, wire

if TYPE_CHECKING:
    from broker.batch_input import PreparedBatch

SubmitMany = Callable[[str, list[dict[str, Any]]], None]

BATCH_ID = re.compile(r"^[0-9a-f]{32}$")  # what `prepare_batch` issues; anything else is not a batch of ours
CANCELLED_STATE = "cancelled"


def cooperate_now() -> None:
    """Let other greenlets run: under gunicorn+gevent (`time` is patched) checking 100,000 calls would otherwise
    freeze every WebSocket of the process for a second or two; in a threaded server it costs ~nothing."""
    time.sleep(0)


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class BatchSettings:
    """Limits and lifetimes, from the environment (12-factor); read once per web process."""

    max_calls: int = 100_000  # MCP_BROKER_MAX_BATCH_CALLS
    max_bytes: int = 128 * 1024 * 1024  # MCP_BROKER_MAX_BATCH_BYTES: request body limit
    chunk_size: int = 32  # MCP_BROKER_MAX_BATCH: calls per queue message
    result_ttl_s: int = 3600  # MCP_BROKER_RESULT_TTL_S: how long a finished batch stays readable
    queue_window_s: float = 86400.0  # MCP_BROKER_BATCH_QUEUE_S: a call still queued after this is timed out
    max_argument_bytes: int = 1024 * 1024  # MCP_BROKER_MAX_ARGUMENT_BYTES: one call's arguments, as on every path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BatchSettings:
        env = os.environ if environ is None else environ
        base = cls()
        return cls(
            max_calls=max(1, int(env.get("MCP_BROKER_MAX_BATCH_CALLS", base.max_calls))),
            max_bytes=max(1, int(env.get("MCP_BROKER_MAX_BATCH_BYTES", base.max_bytes))),
            chunk_size=max(1, int(env.get("MCP_BROKER_MAX_BATCH", base.chunk_size))),
            result_ttl_s=max(1, int(env.get("MCP_BROKER_RESULT_TTL_S", base.result_ttl_s))),
            queue_window_s=max(1.0, float(env.get("MCP_BROKER_BATCH_QUEUE_S", base.queue_window_s))),
            max_argument_bytes=int(env.get("MCP_BROKER_MAX_ARGUMENT_BYTES", base.max_argument_bytes)),
        )


class BatchError(Exception):
    """A batch that cannot be accepted; `code` is the API's error code, `details` the problems found."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or []


# ---------------------------------------------------------------- submitting
def submit_batch(
    r: redis.Redis,
    prepared: PreparedBatch,
    submit: SubmitMany,
    settings: BatchSettings,
    owner: str = "",
    cooperate: Callable[[], None] = cooperate_now,
) -> None:
    """Write the batch hash, then queue its calls in chunks (the hash must exist first: workers check its state).

    The hash outlives the longest a call can take (queue window + time limit) plus the result TTL, so a
    worker's counter update never recreates an expired hash; it is shortened to the TTL once the batch ends.
    If queueing fails half-way the batch is marked cancelled, so the calls already queued are skipped.
    """
    batch_key = keys.batch(prepared.batch_id)
    lifetime = int(settings.queue_window_s + prepared.max_timeout_s + settings.result_ttl_s + 60)
    record: dict[str, str | int | float] = {
        "total": prepared.total,
        "created": prepared.created,
        "state": "running",
        "done": 0,
        "failed": 0,
        "cancelled": 0,
        "owner": owner,  # the API key id that submitted it: only that key (or an admin) may read or cancel it
    }
    record.update({f"tool:{name}": count for name, count in prepared.tools.items()})
    pipe = r.pipeline(transaction=True)
    pipe.hset(batch_key, mapping=record)
    pipe.expire(batch_key, lifetime)
    pipe.execute()
    try:
        for queue, calls in prepared.calls_by_queue.items():
            for start in range(0, len(calls), settings.chunk_size):
                submit(queue, calls[start : start + settings.chunk_size])
                cooperate()
    except Exception as err:
        r.hset(batch_key, mapping={"state": CANCELLED_STATE, "error": f"could not queue the calls: {err!r}"})
        raise BatchError("enqueue_failed", f"could not queue the batch's calls: {err!r}") from err


# ---------------------------------------------------------------- status
def is_batch_id(value: str) -> bool:
    """Checked before a client's id goes into a Redis key name (`x:results` must not reach another key)."""
    return bool(BATCH_ID.match(value))


def _int(value: str | None) -> int:
    return int(value) if value else 0


def _unfinished_started(r: redis.Redis, batch_id: str) -> list[str]:
    """Call ids a worker started that have no stored result yet (the ones still running)."""
    started = sorted(r.smembers(keys.batch_started(batch_id)))
    unfinished: list[str] = []
    for start in range(0, len(started), 5000):
        chunk = started[start : start + 5000]
        pipe = r.pipeline(transaction=False)
        for call_id in chunk:
            pipe.exists(keys.result(call_id))
        unfinished += [c for c, found in zip(chunk, pipe.execute(), strict=True) if not found]
    return unfinished


def _mark_finished(r: redis.Redis, batch_id: str, settings: BatchSettings) -> float:
    """Record when the last result arrived (its stream id is a millisecond timestamp) and let the keys expire
    `result_ttl_s` from now; done once, by whichever reader first sees the batch complete."""
    last = r.xrevrange(keys.batch_results(batch_id), count=1)
    finished_at = int(last[0][0].split("-")[0]) / 1000 if last else time.time()
    if r.hsetnx(keys.batch(batch_id), "finished_at", finished_at):
        pipe = r.pipeline(transaction=False)
        for key in (keys.batch(batch_id), keys.batch_results(batch_id), keys.batch_started(batch_id),
                    keys.batch_calls(batch_id)):
            pipe.expire(key, settings.result_ttl_s)
        pipe.execute()
        return finished_at
    return float(r.hget(keys.batch(batch_id), "finished_at") or finished_at)


def batch_owner(r: redis.Redis, batch_id: str) -> str | None:
    """The key id that submitted the batch ("" when keys are off), or None if there is no such batch."""
    record = r.hmget(keys.batch(batch_id), ["total", "owner"])
    return None if record[0] is None else (record[1] or "")


def batch_status(r: redis.Redis, batch_id: str, settings: BatchSettings) -> dict[str, Any] | None:
    """The batch's counts and state, or None if there is no such batch (or it expired).

    running = started - finished while nothing was cancelled (every finished call was started then), and
    exactly (started calls without a result) during a cancellation, when some calls finish unstarted.
    """
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.batch(batch_id))
    pipe.scard(keys.batch_started(batch_id))
    record, started = pipe.execute()
    if not record or "total" not in record:
        return None
    total = _int(record["total"])
    done, failed, cancelled = _int(record.get("done")), _int(record.get("failed")), _int(record.get("cancelled"))
    finished = done + failed + cancelled
    is_cancelled = record.get("state") == CANCELLED_STATE
    if finished >= total:
        running = 0
    elif is_cancelled:
        running = len(_unfinished_started(r, batch_id))
    else:
        running = max(0, started - finished)
    status: dict[str, Any] = {
        "batch_id": batch_id,
        "state": CANCELLED_STATE if is_cancelled else ("done" if finished >= total else "running"),
        "total": total,
        "queued": max(0, total - finished - running),
        "running": running,
        "done": done,
        "failed": failed,
        "cancelled": cancelled,
        "created": float(record["created"]),
        "tools": {k.removeprefix("tool:"): int(v) for k, v in record.items() if k.startswith("tool:")},
    }
    if finished >= total:
        status["finished_at"] = (
            float(record["finished_at"]) if record.get("finished_at") else _mark_finished(r, batch_id, settings)
        )
    if record.get("error"):
        status["error"] = record["error"]
    return status


# ---------------------------------------------------------------- cancelling
def cancel_running(r: redis.Redis, batch_id: str, ttl_s: int) -> int:
    """Tell the workers to cancel the batch's running calls (flag + one id per message on the cancel channel)."""
    running = _unfinished_started(r, batch_id)
    pipe = r.pipeline(transaction=False)
    for call_id in running:
        pipe.set(keys.cancelled(call_id), "1", ex=ttl_s)
        pipe.publish(keys.CANCEL_CHANNEL, call_id)
    pipe.execute()
    return len(running)


def cancel_batch(
    r: redis.Redis, batch_id: str, settings: BatchSettings, again_after_s: float = 1.0
) -> dict[str, Any] | None:
    """Cancel what has not finished: queued calls are skipped by the workers (state flag), running ones are
    cancelled through the channel. A call a worker took just before the flag flipped is started only after
    our first look, so a second pass `again_after_s` later catches it. None if there is no such batch."""
    status = batch_status(r, batch_id, settings)
    if status is None or status["state"] != "running":
        return status  # unknown, already finished, or already cancelled: nothing more to do
    r.hset(keys.batch(batch_id), mapping={"state": CANCELLED_STATE, "cancelled_at": time.time()})
    cancel_running(r, batch_id, settings.result_ttl_s)
    if again_after_s > 0:
        timer = threading.Timer(again_after_s, cancel_running, args=(r, batch_id, settings.result_ttl_s))
        timer.daemon = True
        timer.start()
    return batch_status(r, batch_id, settings)


# ---------------------------------------------------------------- results
def result_line(entry_id: str, data: str) -> str:
    """One stream entry as a JSON line: the worker's outcome plus `seq` (resume point) and `index` (the call's
    position in the submitted batch, from its call id `<batch>.<index>`)."""
    outcome = json.loads(data)
    outcome["seq"] = entry_id
    suffix = str(outcome.get("call_id", "")).rpartition(".")[2]
    if suffix.isdigit():
        outcome["index"] = int(suffix)
    return wire.dumps(outcome) + "\n"


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply in RESP2 form (list of [stream, entries]) or RESP3 form (dict stream → [entries])."""
    if not reply:
        return []
    groups = list(reply.values()) if isinstance(reply, dict) else [entries for _stream, entries in reply]
    found: list[tuple[str, dict[str, str]]] = []
    for group in groups:
        found += group[0] if group and isinstance(group[0], list) else group
    return found


def iter_results(
    r: redis.Redis,
    batch_id: str,
    total: int,
    after: str | None = None,
    wait: bool = True,
    block_ms: int = 1000,
    heartbeat_s: float = 15.0,
    read_count: int = 1000,
    client_gone: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Yield the batch's results as JSON lines in completion order, from after `after` (a `seq`).

    With `wait`, block on the stream until every call has a result (a blank line every `heartbeat_s` of
    silence keeps proxies from closing the connection and lets the server notice a client that left);
    without it, yield what is there now and stop. Counters and stream entries are written in one Lua step
    by the worker, so once the counters say "all finished", one last non-blocking read gets the rest.
    `client_gone` is asked after each quiet `block_ms`: a server only learns of a disconnect when a write
    fails, and a slow batch may have nothing to write for minutes.
    """
    stream = keys.batch_results(batch_id)
    last = after or "0-0"
    sent = 0
    silent_since = time.monotonic()
    finishing = False
    first = True  # never block on the first read: a finished batch read again must not wait `block_ms`
    while True:
        block = block_ms if (wait and not finishing and not first) else None
        first = False
        entries = _entries(r.xread({stream: last}, count=read_count, block=block))
        for entry_id, fields_ in entries:
            last = entry_id
            sent += 1
            yield result_line(entry_id, fields_.get("data", "{}"))
        if entries:
            silent_since = time.monotonic()
            if after is None and sent >= total:
                return
            continue
        if finishing or not wait:
            return
        counts = r.hmget(keys.batch(batch_id), ["done", "failed", "cancelled"])
        if counts == [None, None, None] and not r.exists(keys.batch(batch_id)):
            return  # expired (or deleted) under us
        if sum(_int(c) for c in counts) >= total:
            finishing = True  # all written: drain once more without blocking, then stop
            continue
        if client_gone is not None and client_gone():
            return
        if time.monotonic() - silent_since >= heartbeat_s:
            silent_since = time.monotonic()
            yield "\n"
