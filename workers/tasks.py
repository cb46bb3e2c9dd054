"""Celery tasks: run tool calls on the warm backend session, answer each exactly once.

One message carries one or more calls of one server (the web tier coalesces
calls that arrive together; batch jobs send chunks). The worker runs them all
concurrently on its event loop over the one warm session, bounded by the
server's `concurrency`, and delivers each outcome the moment it is ready.

A call payload: `call_id`, `server`, `tool`, `arguments`, and optionally
`reply_to` (web process channel), `timeout_s`, `expires_at` (epoch: past it a
still-queued call is answered with a timeout, not run), `progress` (bool),
`meta`, `batch` and `id` (batch jobs), `session`.

Transient failures (backend crashed, session broken) are retried inside the
task, on a restarted session, with exponential backoff and full jitter,
within the call's deadline; a Celery-level retry would re-enqueue behind other
calls and lose the deadline. Tool errors (`isError`) are answers, never retried.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

import anyio
from mcp_types import INTERNAL_ERROR, REQUEST_TIMEOUT

from broker import observe
from broker.cache import store_result
from broker.catalog import store_server_catalog
from broker.redisconn import get_redis
from broker.results import ResultWriter, cancelled_outcome, rpc_error, timeout_outcome
from workers.app import app, backend_pool, broker_config
from workers.backends import BackendRPCError, BackendTimeout, BackendUnavailable, CallCancelled

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0


class RedisCallChannel:
    """A running call's way back to its client: events on the caller's web-process channel, answers to
    server-to-client requests on a per-request Redis list (the web process pushes the client's reply there)."""

    def __init__(self, call: dict[str, Any], writer: ResultWriter) -> None:
        self.call_id = call["call_id"]
        self.reply_to = call["reply_to"]
        self.writer = writer

    def progress(self, value: float, total: float | None, message: str | None) -> None:
        self.writer.progress(self.call_id, self.reply_to, value, total, message)

    def log(self, params: dict[str, Any]) -> None:
        self.writer.event(self.call_id, self.reply_to, "log", params)

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        self.writer.event(self.call_id, self.reply_to, "server_request",
                          {"id": request_id, "method": method, "params": params})
        answer = self.writer.await_answer(request_id, timeout)
        if answer is None:
            return rpc_error(REQUEST_TIMEOUT, f"The client did not answer {method} within {timeout:g}s")
        return answer


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: spreads a herd of retries after a backend restart."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


async def execute_call(call: dict[str, Any], writer: ResultWriter) -> dict[str, Any]:
    """Run one call to its outcome (result, error, timeout or cancellation)."""
    call_id, server, tool = call["call_id"], call["server"], call.get("tool", "")
    spec = broker_config().server(server)
    timeout = float(call.get("timeout_s") or spec.settings.timeout_s)
    if call.get("expires_at") and time.time() > float(call["expires_at"]):
        return timeout_outcome(server, timeout, queued=True)
    deadline = time.monotonic() + timeout
    channel = RedisCallChannel(call, writer) if call.get("reply_to") else None
    session = backend_pool().session(server)
    method = call.get("method", "tools/call")
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return timeout_outcome(server, timeout)
        try:
            if method == "tools/call":
                arguments = call.get("arguments") or {}
                result = await session.call_tool(tool, arguments, remaining, call_id, channel, call.get("meta"),
                                                 progress=bool(call.get("progress")))
                if call.get("cache_ttl"):
                    store_result(get_redis(), server, tool, arguments, result, float(call["cache_ttl"]))
            else:
                result = await session.request(method, call.get("params") or {}, remaining, call_id, call.get("meta"),
                                               channel)
            return {"result": result}
        except BackendTimeout:
            return timeout_outcome(server, timeout)
        except CallCancelled:
            return cancelled_outcome()
        except BackendRPCError as err:
            return rpc_error(err.code, err.message, err.data)
        except BackendUnavailable as err:
            if attempt >= spec.settings.retries:
                return rpc_error(INTERNAL_ERROR, f"Server {server!r} unavailable after {attempt + 1} attempts: {err}",
                                 {"server": server, "reason": "backend_unavailable"})
            delay = min(backoff(attempt), max(0.0, deadline - time.monotonic()))
            log.warning("call %s on %s failed (%s); retry %d in %.2fs", call_id, server, err, attempt + 1, delay)
            observe.retry(server)
            await anyio.sleep(delay)
            attempt += 1
            call["attempts"] = attempt + 1  # for the call's log line
            if writer.cancelled(call_id):
                return cancelled_outcome()


def run_calls_now(calls: list[dict[str, Any]], worker: str) -> None:
    """Run a message's calls concurrently on the backend loop; each answered as soon as it is done."""
    observe.configure_call_log("worker")
    writer = ResultWriter(get_redis())
    verdicts = writer.triage(calls)
    for call, verdict in zip(calls, verdicts, strict=True):
        if verdict == "cancelled":
            writer.deliver(call, {**cancelled_outcome(), "worker": worker})
            observe.worker_outcome(call, cancelled_outcome(), worker, observe.queue_wait(call), 0.0)
    runnable = [c for c, v in zip(calls, verdicts, strict=True) if v == "run"]
    if not runnable:
        return
    writer.started(runnable)

    async def one(call: dict[str, Any]) -> None:
        wait = observe.queue_wait(call)
        started = time.perf_counter()
        try:
            outcome = await execute_call(call, writer)
        except Exception as err:  # a bug of ours must still answer the client, never leave it waiting
            log.exception("call %s crashed in the worker", call.get("call_id"))
            outcome = rpc_error(INTERNAL_ERROR, f"Internal error in the broker's worker: {err!r}")
        outcome["worker"] = worker  # who answered: for logs and for tests of queue pinning
        writer.deliver(call, outcome)
        observe.worker_outcome(call, outcome, worker, wait, time.perf_counter() - started)

    async def all_of_them() -> None:
        async with anyio.create_task_group() as group:
            for call in runnable:
                group.start_soon(one, call)

    backend_pool().portal.call(all_of_them)


@app.task(name="mcp.run_calls", ignore_result=True, bind=True)
def run_calls(self: Any, calls: list[dict[str, Any]]) -> None:
    """One or more calls of one server; outcomes go to Redis (stored once, published to their caller)."""
    run_calls_now(calls, self.request.hostname or "")


def refresh_catalog_now(server: str) -> None:
    """List everything the backend offers and publish it as the server's catalog document."""
    spec = broker_config().server(server)
    session = backend_pool().session(server)
    for attempt in range(spec.settings.retries + 1):
        try:
            listing = backend_pool().portal.call(session.list_catalog, spec.settings.timeout_s)
            store_server_catalog(get_redis(), server, listing)
            log.info("catalog of %s published: %d tools", server, len(listing["tools"]))
            return
        except (BackendUnavailable, BackendRPCError, BackendTimeout) as err:
            log.warning("listing %s failed (attempt %d): %s", server, attempt + 1, err)
            time.sleep(backoff(attempt))
    log.error("catalog of %s could not be listed", server)


@app.task(name="mcp.refresh_catalog", ignore_result=True)
def refresh_catalog(server: str) -> None:
    refresh_catalog_now(server)
