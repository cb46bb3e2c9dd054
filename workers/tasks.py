"""Celery tasks: run a tool call on the warm backend session, answer exactly once.

Transient failures (backend crashed, session broken) are retried inside the
task, on a restarted session, with exponential backoff and jitter, within the
call's deadline; a Celery-level retry would re-enqueue behind other calls and
lose the deadline. Tool errors (`isError`) are answers, never retried.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from mcp_types import INTERNAL_ERROR, REQUEST_TIMEOUT

from broker.catalog import store_server_catalog
from broker.redisconn import get_redis
from broker.results import ResultWriter, rpc_error
from workers.app import app, backend_pool, broker_config
from workers.backends import BackendRPCError, BackendTimeout, BackendUnavailable

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): spreads a thundering herd of retries."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


def timed_out(server: str, timeout: float) -> dict[str, Any]:
    return rpc_error(REQUEST_TIMEOUT, f"Request timed out: server {server!r} did not answer within {timeout:g}s")


def execute_call(call: dict[str, Any], writer: ResultWriter) -> dict[str, Any] | None:
    """Run one call to completion; the outcome to deliver, or None if it must not be answered."""
    call_id, server, tool = call["call_id"], call["server"], call["tool"]
    if writer.cancelled(call_id) or writer.answered(call_id):
        return None
    spec = broker_config().server(server)
    timeout = float(call.get("timeout_s") or spec.settings.timeout_s)
    deadline = time.monotonic() + timeout
    reply_to = call.get("reply_to")
    progress = None
    if call.get("progress"):

        def progress(value: float, total: float | None, message: str | None) -> None:
            writer.progress(call_id, reply_to, value, total, message)

    session = backend_pool().session(server)
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return timed_out(server, timeout)
        try:
            result = session.call_tool(tool, call.get("arguments") or {}, remaining, progress, call.get("meta"))
            return {"result": result}
        except BackendTimeout:
            return timed_out(server, timeout)
        except BackendRPCError as err:
            return rpc_error(err.code, err.message, err.data)
        except BackendUnavailable as err:
            if attempt >= spec.settings.retries:
                return rpc_error(INTERNAL_ERROR, f"Server {server!r} unavailable after {attempt + 1} attempts: {err}",
                                 {"server": server, "reason": "backend_unavailable"})
            delay = min(backoff(attempt), max(0.0, deadline - time.monotonic()))
            log.warning("call %s on %s failed (%s); retry %d in %.2fs", call_id, server, err, attempt + 1, delay)
            time.sleep(delay)
            attempt += 1
            if writer.cancelled(call_id):
                return None


@app.task(name="mcp.call_tool", ignore_result=True, bind=True)
def call_tool(self: Task, call: dict[str, Any]) -> None:
    """One tool call; the outcome goes to Redis (stored once, published to the caller's web process)."""
    writer = ResultWriter(get_redis())
    try:
        outcome = execute_call(call, writer)
    except Exception as err:  # a bug of ours must still answer the client, never leave it waiting
        log.exception("call %s crashed in the worker", call.get("call_id"))
        outcome = rpc_error(INTERNAL_ERROR, f"Internal error in the broker's worker: {err!r}")
    if outcome is not None:
        outcome["worker"] = self.request.hostname  # who answered: for logs and for tests of queue pinning
        writer.deliver(call["call_id"], call.get("reply_to"), outcome)


@app.task(name="mcp.refresh_catalog", ignore_result=True)
def refresh_catalog(server: str) -> None:
    """List everything the backend offers and publish it as the server's catalog document."""
    spec = broker_config().server(server)
    session = backend_pool().session(server)
    for attempt in range(spec.settings.retries + 1):
        try:
            listing = session.list_catalog(spec.settings.timeout_s)
            store_server_catalog(get_redis(), server, listing)
            log.info("catalog of %s published: %d tools", server, len(listing["tools"]))
            return
        except (BackendUnavailable, BackendRPCError) as err:
            log.warning("listing %s failed (attempt %d): %s", server, attempt + 1, err)
            time.sleep(backoff(attempt))
    log.error("catalog of %s could not be listed", server)
