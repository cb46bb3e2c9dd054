"""Running calls: each on the warm backend session, to one outcome, answered exactly once.

One message carries one or more calls of one server (the web tier coalesces
calls that arrive together; batch jobs send chunks). The worker runs them all
concurrently on its event loop over the one warm session, bounded by the
server's `concurrency`, and delivers each outcome the moment it is ready.

A call is a `broker.calls.Call` (read from the message by `workers.tasks`): `call_id`, `server`,
`tool` and `arguments` (or `method` and `params`), and optionally `reply_to` (web process channel),
`timeout_s`, `expires_at` (epoch: past it a still-queued call is answered with a timeout, not run),
`progress`, `meta`, `batch` and `id` (batch jobs), `session`.

Transient failures (backend crashed, session broken) are retried inside the
task, on a restarted session, with exponential backoff and full jitter,
within the call's deadline; a Celery-level retry would re-enqueue behind other
calls and lose the deadline. Tool errors (`isError`) are answers, never retried.

Redis unreachable (restarting, say): an outcome that cannot be stored is stored again with backoff until
Redis answers (up to `MCP_BROKER_STORE_RETRY_S`), so a call that ran is not thrown away; progress notes,
log lines and cache stores are best effort. A message whose calls could not all be answered is rejected
for redelivery, never acked (Celery acks a late-ack message whose task raised): a redelivered call whose
outcome is stored is not run again. Measured before: a Redis SIGKILL mid-batch acked the 16 messages that
were running, leaving ~490 of 3,000 calls unanswered.

The Celery tasks that take the messages are in `workers.tasks`; this is what they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import redis
from mcp_types import INTERNAL_ERROR, REQUEST_TIMEOUT

from broker import observe, wire
from broker.calls import TOOLS_CALL, Call
from broker.outage import REDIS_DOWN, unavailable_error
from broker.redisconn import get_redis
from broker.results import ResultWriter, cancelled_outcome, rpc_error, timeout_outcome
from broker.tasks import TaskStore, question_of
from broker.writelane import write_lane
from workers.backends.errors import BackendRPCError, BackendTimeout, BackendUnavailable, CallCancelled, SlotWaitTimeout
from workers.backends.methods import FORWARDED
from workers.backoff import backoff
from workers.owners import forward_to_owners
from workers.runtime import backend_pool, broker_config, known_server

log = logging.getLogger(__name__)

# How long an outcome's store is retried while Redis is unreachable; then the message is left for
# redelivery. Well below the transport's visibility timeout (an hour), so it is never delivered twice.
STORE_RETRY_S = float(os.environ.get("MCP_BROKER_STORE_RETRY_S", "300"))
STORE_BACKOFF_MAX_S = 2.0


class RedisCallChannel:
    """A running call's way back to its client: events on the caller's web-process channel, answers to
    server-to-client requests on a per-request Redis list (the web process pushes the client's reply there)."""

    def __init__(self, call: Call, writer: ResultWriter, deadline: float | None = None) -> None:
        self.call_id = call.call_id
        self.reply_to = call.reply_to
        self.writer = writer
        self.task = call.task  # a task's call: its questions are also written into its record (broker.tasks)
        self.deadline = deadline  # monotonic: a task's question may wait for an answer until the call's end

    def progress(self, value: float, total: float | None, message: str | None) -> None:
        try:  # a note lost while Redis is unreachable must not fail the call
            self.writer.progress(self.call_id, self.reply_to, value, total, message)
        except REDIS_DOWN as err:
            log.warning("call %s: progress note not sent, Redis unreachable: %r", self.call_id, err)

    def log(self, params: dict[str, Any]) -> None:
        try:
            self.writer.event(self.call_id, self.reply_to, "log", params)
        except REDIS_DOWN as err:
            log.warning("call %s: log message not sent, Redis unreachable: %r", self.call_id, err)

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        asked: dict[str, Any] = {"id": request_id, "method": method, "params": params}
        try:
            if self.task:  # any web process answers it from the record (tasks/update), the client polling
                key, question = question_of(asked)
                asked["key"] = TaskStore(self.writer.redis).ask(self.task, key, request_id, question) or request_id
                if self.deadline is not None:
                    timeout = max(timeout, self.deadline - time.monotonic())
            self.writer.event(self.call_id, self.reply_to, "server_request", asked)
            answer = self.writer.await_answer(request_id, timeout)
        except REDIS_DOWN as err:
            return {"error": unavailable_error(f"Could not ask the client ({method}): the broker's Redis is "
                                              f"unreachable ({err})").to_error()}
        if answer is None:
            return rpc_error(REQUEST_TIMEOUT, f"The client did not answer {method} within {timeout:g}s")
        return answer


def check_result_size(server: str, method: str, result: Any, limit: int) -> None:
    """A result over the server's `max_result_bytes` becomes an error that says so, here, before it is stored
    in Redis, cached or sent on: measured as the client would receive it (compact JSON, UTF-8). Issue 13: a
    20 MB result had become one 42 MB frame, through Redis and the web process's memory."""
    size = wire.encoded_size(result)
    if size > limit:
        raise BackendRPCError(INTERNAL_ERROR, f"Result too large: server {server!r} answered {method} with {size} "
                              f"bytes; the limit is {limit} bytes (its max_result_bytes)",
                              {"server": server, "reason": "result_too_large", "bytes": size, "limit": limit})


async def execute_call(call: Call, writer: ResultWriter) -> dict[str, Any]:
    """Run one call to its outcome (result, error, timeout or cancellation)."""
    call_id, server, method = call.call_id, call.server, call.method
    spec = broker_config().server(server)
    timeout = float(call.timeout_s or spec.settings.timeout_s)
    if call.expires_at and time.time() > float(call.expires_at):
        return timeout_outcome(server, timeout, queued=True)
    deadline = time.monotonic() + timeout
    channel = RedisCallChannel(call, writer, deadline) if call.reply_to else None
    # a tools/call's name and arguments travel outside `params` (`Call.tool`, `Call.arguments`)
    params = {"name": call.tool or "", "arguments": call.arguments or {}} if method == TOOLS_CALL else (
        call.params or {})
    forwarded = FORWARDED.get(method)  # unknown: the session answers "Method not forwarded"
    cache = forwarded.cache if forwarded is not None else None  # what the shared cache keeps of its result
    attempt = 0
    failed_replicas: set[int] = set()  # a retry goes to another replica when there is one
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return timeout_outcome(server, timeout)
        session, one_shot = None, False
        try:
            session, one_shot = backend_pool().session_for_call(spec, call, frozenset(failed_replicas))
            result = await session.forward(method, params, remaining, call_id, channel, call.meta,
                                           progress=bool(call.progress))
            check_result_size(server, method, result, spec.settings.max_result_bytes)
            store = cache(server, params, result, call.cache_ttl) if cache is not None else None
            if store is not None:
                writer.write_behind(store, "a cache entry")
            return {"result": result}
        except SlotWaitTimeout as err:  # the backend was busy with other calls, not at fault
            return rpc_error(REQUEST_TIMEOUT, f"Request timed out: {err}", {"server": server, "reason": "slot_wait"})
        except BackendTimeout:
            return timeout_outcome(server, timeout)
        except CallCancelled:
            return cancelled_outcome()
        except BackendRPCError as err:
            return rpc_error(err.code, err.message, err.data)
        except BackendUnavailable as err:
            if session is not None:
                failed_replicas.add(session.replica)
            if len(failed_replicas) >= len(spec.endpoints):
                failed_replicas.clear()
            if attempt >= spec.settings.retries:
                return rpc_error(INTERNAL_ERROR, f"Server {server!r} unavailable after {attempt + 1} attempts: {err}",
                                 {"server": server, "reason": "backend_unavailable"})
            delay = min(backoff(attempt), max(0.0, deadline - time.monotonic()))
            log.warning("call %s on %s failed (%s); retry %d in %.2fs", call_id, server, err, attempt + 1, delay)
            observe.retry(server)
            await anyio.sleep(delay)
            attempt += 1
            call.attempts = attempt + 1  # for the call's log line
            with _best_effort("cancel check"):
                if await anyio.to_thread.run_sync(writer.cancelled, call_id):
                    return cancelled_outcome()
        finally:
            if one_shot and session is not None:
                await anyio.to_thread.run_sync(session.close)


@contextlib.contextmanager
def _best_effort(what: str) -> Iterator[None]:
    """Swallow (and log) Redis being unreachable around a side effect a call's outcome does not need."""
    try:
        yield
    except REDIS_DOWN as err:
        log.warning("%s skipped, Redis unreachable: %r", what, err)


async def store_outcome(writer: ResultWriter, call: Call, outcome: dict[str, Any]) -> bool:
    """Deliver an outcome, retried with backoff while Redis is unreachable (a restart takes seconds) for up
    to `STORE_RETRY_S`. Delivery is idempotent (SET NX on the call id), so a retry whose first attempt did
    reach Redis answers nobody twice. False if Redis stayed unreachable: the caller must not ack."""
    give_up = time.monotonic() + STORE_RETRY_S
    attempt = 0
    while True:
        try:
            await writer.adeliver(call, outcome)  # off the loop: a slow Redis must not stall the other calls
            if attempt:
                log.info("call %s: outcome stored after %d retries (Redis was unreachable)", call.call_id, attempt)
            return True
        except REDIS_DOWN as err:
            if time.monotonic() >= give_up:
                log.error("call %s: outcome not stored, Redis unreachable for %.0fs: %r", call.call_id,
                          STORE_RETRY_S, err)
                return False
            if attempt == 0:
                log.warning("call %s: storing its outcome failed (%r); retrying until Redis is back",
                            call.call_id, err)
            await anyio.sleep(min(STORE_BACKOFF_MAX_S, 0.05 * 2**attempt))
            attempt += 1


def run_calls_now(calls: list[Call], worker: str) -> None:
    """Run a message's calls concurrently on the backend loop; each answered as soon as it is done, and logged
    and counted by this thread, not on the loop, in batches while it waits and at the end (`observe.Answered`:
    one write, one metrics lock a batch; 16 calls a message, all in one batch: 15.1 -> 5.3 CPU-us a call, min
    of 7 x 3,200, call log to a file)."""
    observe.configure_call_log("worker")
    writer = ResultWriter(get_redis(), lane=write_lane())  # what runs on the backend loop writes through the lane
    for call in calls:
        if not known_server(call.server):
            writer.deliver(call, {**rpc_error(INTERNAL_ERROR, f"Unknown server {call.server!r} (removed by "
                                                              f"a config reload?)", {"server": call.server}),
                                  "worker": worker})
    calls = forward_to_owners([c for c in calls if known_server(c.server)], broker_config())
    if not calls:
        return
    verdicts = writer.triage(calls)
    answered = observe.Answered(worker)
    try:
        _run_runnable(calls, verdicts, writer, worker, answered)
    finally:
        answered.flush()


def _run_runnable(calls: list[Call], verdicts: list[str], writer: ResultWriter, worker: str,
                  answered: observe.Answered) -> None:
    for call, verdict in zip(calls, verdicts, strict=True):
        if verdict == "cancelled":
            writer.deliver(call, {**cancelled_outcome(), "worker": worker})
            answered.add(call, cancelled_outcome(), observe.queue_wait(call), 0.0)
    runnable = [c for c, v in zip(calls, verdicts, strict=True) if v == "run"]
    if not runnable:
        return
    writer.started(runnable)
    unstored: list[str] = []

    async def one(call: Call) -> None:
        wait = observe.queue_wait(call)
        started = time.perf_counter()
        try:
            outcome = await execute_call(call, writer)
        except Exception as err:  # a bug of ours must still answer the client, never leave it waiting
            log.exception("call %s crashed in the worker", call.call_id)
            outcome = rpc_error(INTERNAL_ERROR, f"Internal error in the broker's worker: {err!r}")
        outcome["worker"] = worker  # who answered: for logs and for tests of queue pinning
        if not await store_outcome(writer, call, outcome):
            unstored.append(call.call_id)
            return
        answered.add(call, outcome, wait, time.perf_counter() - started)

    async def all_of_them() -> None:
        # asyncio's own tasks, not an anyio task group: `one` answers every failure of a call itself, so
        # the group's cancel-the-others-on-error bookkeeping has nothing to do, and an anyio task costs ~100 us
        # here against ~26 us for an asyncio one (timeit on this box; anyio 4.16). A message of one call
        # needs no task of its own: the one `BackendPool.run` starts runs it. Cancel scopes inside (each
        # call's, the SDK's) work in native tasks too; cancelling this coroutine (the loop stopping) cancels
        # every call.
        if len(runnable) == 1:
            await one(runnable[0])
            return
        # Every call runs to its end before a failure (storing an outcome) is raised: raised at the first,
        # the message would be acked or requeued while its other calls still ran.
        failures = [r for r in await asyncio.gather(*(one(call) for call in runnable), return_exceptions=True)
                    if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    backend_pool().run(all_of_them, meanwhile=answered.flush)  # the lines of calls answered so far
    if unstored:
        raise redis.ConnectionError(f"{len(unstored)} outcome(s) could not be stored: {', '.join(unstored[:5])}")
