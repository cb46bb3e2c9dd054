"""What is recorded about each call, on the web side and the worker side: metrics and one JSON log line.

Each call gets exactly one structured log line per side, `{"event": "call", "side": "web"|"worker",
"call_id", "session", "key", "server", "tool", "outcome", ...timings}`, so an operator can follow a
call across processes (and machines) by its `call_id`, which both lines carry. The lines go to the
`mcp_broker.calls` logger, written as bare JSON (no prefix) to stderr, or to the file named by
`MCP_BROKER_CALL_LOG` (`off` silences them). Keys are named by their id, never by their secret.

Outcomes: `ok`, `tool_error` (a result with `isError`), `timeout`, `cancelled`, `error` (any other
JSON-RPC error); the web side adds `cached` (answered from the shared cache) and `rejected` (refused
before it was queued: rate limit, allow-list, arguments, unknown tool).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mcp.server.streamable_http import REQUEST_CANCELLED
from mcp_types import REQUEST_TIMEOUT

from broker import wire
from broker.calls import Call
from broker.metrics import RECORDER

CALL_LOGGER = "mcp_broker.calls"

log = logging.getLogger(CALL_LOGGER)
_configured = {"pid": 0, "enabled": True}


def configure_call_log(role: str) -> None:
    """Give the call logger its own bare-JSON handler (once per process); `role` names the side."""
    if _configured["pid"] == os.getpid():
        return
    _configured["pid"] = os.getpid()
    RECORDER.role = role
    target = os.environ.get("MCP_BROKER_CALL_LOG", "stderr").strip()
    _configured["enabled"] = target.lower() not in ("off", "0", "none", "false")
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    if not _configured["enabled"]:
        return
    handler: logging.Handler
    handler = logging.StreamHandler(sys.stderr) if target in ("", "stderr") else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)


def call_line(side: str, fields: dict[str, Any], ts: float | None = None) -> None:
    """Log a call's line; `ts` (wall clock) when the call was answered, if that was before now."""
    if not _configured["enabled"] or not log.handlers:
        return
    line = wire.dumps({"ts": round(time.time() if ts is None else ts, 6), "event": "call", "side": side, **fields},
                      default=str)
    together = getattr(_together, "lines", None)
    if together is not None:
        together.append(line)
    else:
        log.info(line)


_together = threading.local()


@contextmanager
def lines_together() -> Iterator[None]:
    """The call lines this thread logs inside the block are written at its end as one record (the same bytes:
    the handler writes a bare message and a newline): the reply hub's burst of answers, whose lines cost a
    log record, a handler lock and a write+flush each (~3 % of the web's samples over WebSocket, py-spy)."""
    if getattr(_together, "lines", None) is not None:
        yield
        return
    _together.lines = []
    try:
        yield
    finally:
        lines, _together.lines = _together.lines, None
        if lines:
            log.info("\n".join(lines))


def outcome_of(message: dict[str, Any]) -> tuple[str, int | None]:
    """(outcome, JSON-RPC error code or None) of an outcome message `{"result"|"error", ...}`."""
    error = message.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        if message.get("cancelled") or code == REQUEST_CANCELLED:
            return "cancelled", code
        if code == REQUEST_TIMEOUT:
            return "timeout", code
        return "error", code
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError"):
        return "tool_error", None
    return "ok", None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# ---------------------------------------------------------------- web side
_web_metrics = threading.local()


@contextmanager
def web_outcomes_together() -> Iterator[None]:
    """The metrics of the answered calls this thread observes inside the block (`web_outcome`) are recorded at
    its end under one lock (`Recorder.record`): the reply hub's burst, which a loaded web holds open for many
    answers (`broker.replies`). Two locks a call under gevent were ~3.5 us each (bench.observe_cost)."""
    if getattr(_web_metrics, "counts", None) is not None:
        yield
        return
    _web_metrics.counts, _web_metrics.observations = [], []
    try:
        yield
    finally:
        counts, observations = _web_metrics.counts, _web_metrics.observations
        _web_metrics.counts = _web_metrics.observations = None
        if counts or observations:
            RECORDER.record(counts, observations)


def web_outcome(call: dict[str, Any], message: dict[str, Any], seconds: float) -> None:
    """A queued call was answered (or timed out waiting): count it and log it. Called by the reply hub."""
    server, tool = str(call.get("server", "")), str(call.get("tool") or call.get("method") or "")
    outcome, code = outcome_of(message)
    count, observation = ("mcp_broker_calls", (server, tool, outcome)), ("mcp_broker_end_to_end_seconds", (server,),
                                                                         seconds)
    counts = getattr(_web_metrics, "counts", None)
    if counts is not None:  # in the reply hub's burst: recorded at its end (`web_outcomes_together`)
        counts.append(count)
        _web_metrics.observations.append(observation)
    else:
        RECORDER.record([count], [observation])  # one lock, not one each
    fields: dict[str, Any] = {"call_id": call.get("call_id"), "session": call.get("session"), "key": call.get("key"),
                              "server": server, "tool": tool, "outcome": outcome, "total_ms": _ms(seconds)}
    if call.get("method") and call.get("method") != "tools/call":
        fields["method"] = call["method"]
    if code is not None:
        fields["code"] = code
    if message.get("worker"):
        fields["worker"] = message["worker"]
    call_line("web", fields)


def web_immediate(server: str, tool: str, outcome: str, seconds: float, session: str | None, key: str | None,
                  code: int | None = None) -> None:
    """A call answered without a worker: from the cache, or refused before it was queued."""
    RECORDER.inc("mcp_broker_calls", (server, tool, outcome))
    if outcome == "cached":
        RECORDER.observe("mcp_broker_end_to_end_seconds", (server,), seconds)
    fields: dict[str, Any] = {"call_id": None, "session": session, "key": key, "server": server, "tool": tool,
                              "outcome": outcome, "total_ms": _ms(seconds)}
    if code is not None:
        fields["code"] = code
    call_line("web", fields)


# ---------------------------------------------------------------- worker side
Finished = tuple[Call, dict[str, Any], float | None, float, float]
"""A call, its outcome message, queue wait and exec seconds, and when (wall clock) it was answered."""


def worker_outcome(call: Call, outcome_message: dict[str, Any], worker: str, wait_s: float | None,
                   exec_s: float) -> None:
    """A worker finished a call (or skipped it as cancelled) just now: count, time and log it."""
    worker_outcomes([(call, outcome_message, wait_s, exec_s, time.time())], worker)


def worker_outcomes(done: list[Finished], worker: str) -> None:
    """`worker_outcome` of calls answered, in the Celery thread that ran their message: the metrics under one
    lock, the log lines in one write (`lines_together`), each line's `ts` when its call was answered; they
    were one log record, one write and three metric locks a call, on the backend's event loop."""
    counts: list[tuple[str, tuple[str, ...]]] = []
    timings: list[tuple[str, tuple[str, ...], float]] = []
    with lines_together():
        for call, outcome_message, wait_s, exec_s, answered_at in done:
            server, tool = str(call.server), str(call.tool or call.method or "")
            outcome, code = outcome_of(outcome_message)
            counts.append(("mcp_broker_executions", (server, tool, outcome)))
            timings.append(("mcp_broker_execution_seconds", (server, tool), exec_s))
            if wait_s is not None:
                timings.append(("mcp_broker_queue_wait_seconds", (server,), wait_s))
            _worker_line(call, server, tool, outcome, code, worker, wait_s, exec_s, answered_at)
    RECORDER.record(counts, timings)


class Answered:
    """A message's answered calls, added as each is answered (on the backend's loop) and logged and counted
    by the Celery thread that waits for the message (`flush`), in batches: what was answered since the last
    flush, each call once. The thread flushes every `BackendPool.run` tick (0.5 s) and at the end, so a slow
    call delays its siblings' lines and metrics by at most a tick, not up to its timeout, and a worker killed
    mid-message has logged the calls answered more than a tick before (their redelivery is triaged as done
    and never logged again). Only the waiting thread flushes: `_flushed` needs no lock."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.done: list[Finished] = []
        self._flushed = 0

    def add(self, call: Call, outcome_message: dict[str, Any], wait_s: float | None, exec_s: float) -> None:
        self.done.append((call, outcome_message, wait_s, exec_s, time.time()))

    def flush(self) -> None:
        upto = len(self.done)  # appended to meanwhile (list.append is atomic): what is there now, no more
        if upto > self._flushed:
            batch, self._flushed = self.done[self._flushed:upto], upto
            worker_outcomes(batch, self.worker)


def _worker_line(call: Call, server: str, tool: str, outcome: str, code: int | None, worker: str,
                 wait_s: float | None, exec_s: float, answered_at: float) -> None:
    if not _configured["enabled"]:
        return
    fields: dict[str, Any] = {"call_id": call.call_id, "session": call.session, "key": call.key,
                              "server": server, "tool": tool, "outcome": outcome, "exec_ms": _ms(exec_s),
                              "queue_ms": None if wait_s is None else _ms(wait_s), "attempts": call.attempts,
                              "worker": worker}
    if call.batch:
        fields["batch"] = call.batch
    if code is not None:
        fields["code"] = code
    call_line("worker", fields, answered_at)


def queue_wait(call: Call, now: float | None = None) -> float | None:
    """Seconds since the web tier queued the call (wall clocks of two machines: clamped at 0)."""
    queued_at = call.queued_at
    if not isinstance(queued_at, (int, float)):
        return None
    return max(0.0, (time.time() if now is None else now) - float(queued_at))


def retry(server: str) -> None:
    RECORDER.inc("mcp_broker_retries", (server,))


def backend_restart(server: str) -> None:
    RECORDER.inc("mcp_broker_backend_restarts", (server,))


def immediate_call(connection: Any, params: Any, outcome: str, seconds: float, code: int | None = None) -> None:
    """A `tools/call` a client connection answered itself (cache hit, or refused). Labels come from the
    catalog, never from the client's text: a made-up tool name must not mint a new time series."""
    name = params.get("name") if isinstance(params, dict) else None
    server = tool = ""
    if isinstance(name, str):
        catalog = connection.services.catalog
        server, tool = tool_labels(catalog, catalog.namespaced(connection.scope, name) if connection.scope else name)
    web_immediate(server, tool, outcome, seconds, connection.session_id, connection.principal.id, code)


def tool_labels(catalog: Any, qualified: str) -> tuple[str, str]:
    """(server, tool) labels of a namespaced tool name, from the catalog only: a made-up name gives "" for
    what the catalog does not know (a known server's unknown tool keeps its server)."""
    entry = catalog.lookup_tool(qualified)
    if entry is not None:
        return entry.server, entry.tool
    prefix, sep, _ = qualified.partition(catalog.config.separator)
    return ((catalog.config.server_of_prefix(prefix) or "") if sep else ""), ""
