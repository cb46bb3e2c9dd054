"""How a call's outcome travels from the worker to whoever waits for it.

A result is stored under the call id and, in the same Lua step, published on
the caller's web-process channel and (for batch calls) appended to the batch's
result stream with its counters. The first writer wins: a small `answered`
marker is set NX, so a redelivered or retried call is answered and counted
exactly once, and a reader that missed the publish still finds the stored
answer.

How long each piece lives (issue 12: keeping every 0.5 KB result an hour held
~1.6 GB at 921 calls/s):
- the outcome (`result`): `keep_s`, stamped on the call by the web process:
  the session TTL for a call a session waits for (a client away resumes and
  gets it; the web process cuts it to `MCP_BROKER_DELIVERED_TTL_S` once the
  answer is written to the client's socket), the batch's TTL for a batch call,
  else `MCP_BROKER_DELIVERED_TTL_S` (the reply hub's sweep reads it within
  seconds if a publish was missed); a cancelled call's at most a minute;
- the `answered` marker (~100 bytes): as long as the call can still be run by
  a redelivered message: until the call's `expires_at` (past it a queued call
  is answered with a timeout, never run) plus `REDELIVERY_MARGIN_S` (a dead
  worker's messages are restored ~10 s after its lease lapses), at most an hour
  (the transport's visibility timeout, after which any message has come back).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from mcp.server.streamable_http import REQUEST_CANCELLED  # LSP's code, used by MCP SDKs for a cancelled request
from mcp_types import REQUEST_TIMEOUT

from broker import keys, wire
from broker.calls import Call
from broker.rpc_error import RPCError
from broker.tasks import DELIVER_TASK, TASK_TTL_S, final_status, task_keys

if TYPE_CHECKING:
    from broker.writelane import WriteLane

RESULT_TTL_S = 3600  # the outcome's lifetime when the call does not say (a call queued by an older web process)
REDELIVERY_MARGIN_S = 60  # past a call's expires_at, how long a restored message may still bring it back
MAX_ANSWERED_TTL_S = 3600  # the visibility timeout: no message comes back later than this
CANCELLED_KEEP_S = 60  # a cancelled call's outcome (not a batch's): nobody reads it, the hub's sweep aside

# The marker first, set NX (one command where EXISTS + SET were two); then the outcome, NX too: an outcome
# still stored after its marker expired (a session's, kept longer) is never overwritten, e.g. by the
# timeout answer of a late redelivery (the marker this writes then says what is true: answered).
_DELIVER = """
if not redis.call('SET', KEYS[1], '1', 'EX', ARGV[5], 'NX') then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'NX') then return 0 end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', redis.call('GET', KEYS[3]) or ARGV[3], ARGV[1])
end
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[5], '*', 'data', ARGV[1])
  redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
""" + DELIVER_TASK + """
return 1
"""
# a call's progress or event: to the web process that waits for it now (its session may have moved)
_PUBLISH_ROUTED = """
return redis.call('PUBLISH', redis.call('GET', KEYS[1]) or ARGV[1], ARGV[2])
"""


def answered_ttl(call: Call, keep_s: int, now: float | None = None) -> int:
    """How long the `answered` marker must outlive the outcome's delivery (see the module's docstring)."""
    expires_at = call.expires_at
    if not isinstance(expires_at, (int, float)):
        window = MAX_ANSWERED_TTL_S
    else:
        left = float(expires_at) - (time.time() if now is None else now)
        window = int(min(MAX_ANSWERED_TTL_S, max(0.0, left) + REDELIVERY_MARGIN_S))
    return max(1, window, keep_s if call.batch else 0)


def outcome_kind(outcome: dict[str, Any]) -> str:
    """The batch counter an outcome adds to: done, failed (error or isError) or cancelled."""
    if outcome.get("cancelled"):
        return "cancelled"
    if "error" in outcome or outcome.get("result", {}).get("isError"):
        return "failed"
    return "done"


class ResultWriter:
    """Worker-side: deliver outcomes and progress of calls. With a `lane` (broker.writelane), what a call
    writes while it runs on the backend's event loop goes through it: `adeliver` awaits its outcome's store
    without blocking the loop, progress and events are queued behind each other in order."""

    def __init__(self, r: redis.Redis, ttl_s: int = RESULT_TTL_S, lane: WriteLane | None = None) -> None:
        self._r = r
        self.redis = r
        self._ttl = ttl_s
        self._deliver = r.register_script(_DELIVER)
        self._publish = r.register_script(_PUBLISH_ROUTED)
        self.lane = lane

    def deliver(self, call: Call, outcome: dict[str, Any]) -> bool:
        """Store and publish `{"call_id", "id"?, "result"|"error"}`; False when the call was already answered."""
        key_list, args = self._deliver_args(call, outcome)
        return bool(self._deliver(keys=key_list, args=args))

    async def adeliver(self, call: Call, outcome: dict[str, Any]) -> bool:
        """`deliver`, awaited through the lane (one pipeline for every outcome ready meanwhile); raises what
        `deliver` would."""
        if self.lane is None:
            return self.deliver(call, outcome)
        key_list, args = self._deliver_args(call, outcome)
        # EVALSHA by hand (a registered script in a pipeline would ask SCRIPT EXISTS first, a second round
        # trip): Redis hashes and parses no 0.9 KB body per outcome. Measured on an embedded Redis, 20,000
        # delivers in pipelines of 8, 3 rounds: Redis CPU per deliver 17.5 us (EVAL) -> 12.0 us (median).
        # A Redis restarted since has lost its scripts: the body goes once (EVAL caches it again).
        try:
            replies = await self.lane.run(lambda pipe: pipe.evalsha(self._deliver.sha, len(key_list), *key_list,
                                                                    *args))
        except redis.exceptions.NoScriptError:
            replies = await self.lane.run(lambda pipe: pipe.eval(_DELIVER, len(key_list), *key_list, *args))
        return bool(replies[0])

    def write_behind(self, ops: Callable[[Any], Any], what: str) -> None:
        """A best-effort write (`ops` queues commands on the client or pipeline it is given): through the lane
        when there is one, else now."""
        if self.lane is not None:
            self.lane.fire(ops, what)
        else:
            ops(self._r)

    def _publish_routed(self, call_id: str, reply_to: str, data: str, what: str, wait: bool = False) -> None:
        """A progress note or event to the web process that waits for the call now; `wait` (a thread, not the
        loop): until Redis has it."""
        route = keys.reply_route(call_id)
        if self.lane is None:
            self._publish(keys=[route], args=[reply_to, data])
        elif wait:
            self.lane.submit(lambda pipe: pipe.eval(_PUBLISH_ROUTED, 1, route, reply_to, data)).result()
        else:
            self.lane.fire(lambda pipe: pipe.eval(_PUBLISH_ROUTED, 1, route, reply_to, data), what)

    def _deliver_args(self, call: Call, outcome: dict[str, Any]) -> tuple[list[str], list[Any]]:
        call_id = call.call_id
        message = {"call_id": call_id, **outcome}
        if call.id is not None:
            message["id"] = call.id  # the batch client's own id for the call
        payload = wire.dumps(message)  # orjson (broker.wire): ~1/8 of json.dumps, always valid JSON
        batch_id = call.batch
        keep = call.keep_s
        keep_s = max(1, int(keep)) if isinstance(keep, (int, float)) and not isinstance(keep, bool) else self._ttl
        if outcome.get("cancelled") and not batch_id:
            keep_s = min(keep_s, CANCELLED_KEEP_S)  # its caller stopped waiting: no session resumes it either
        key_list = [keys.answered(call_id), keys.result(call_id), keys.reply_route(call_id)]
        if batch_id:
            key_list += [keys.batch(batch_id), keys.batch_results(batch_id)]
        args = [payload, keep_s, call.reply_to or "", outcome_kind(outcome), answered_ttl(call, keep_s),
                "1" if batch_id else "", "", "", ""]
        if call.task:  # its task record takes the outcome in the same step (broker.tasks)
            key_list += task_keys(call.task)
            args[6:] = [final_status(outcome), time.time(), TASK_TTL_S]
        return key_list, args

    def started(self, calls: list[Call]) -> None:
        """Mark batch calls as running (a set, so a redelivered call is not counted twice)."""
        by_batch: dict[str, list[str]] = {}
        for call in calls:
            if call.batch:
                by_batch.setdefault(call.batch, []).append(call.call_id)
        if by_batch:
            pipe = self._r.pipeline(transaction=False)
            for batch_id, call_ids in by_batch.items():
                pipe.sadd(keys.batch_started(batch_id), *call_ids)
                pipe.expire(keys.batch_started(batch_id), self._ttl)
            pipe.execute()

    def progress(
        self, call_id: str, reply_to: str | None, progress: float, total: float | None, message: str | None
    ) -> None:
        if not reply_to:
            return
        note = {"progress": progress, "total": total, "message": message}
        data = wire.dumps({"call_id": call_id, "progress": note})
        self._publish_routed(call_id, reply_to, data, "a progress note")

    def triage(self, calls: list[Call]) -> list[str]:
        """For each call: "answered" (skip), "cancelled" (answer as cancelled) or "run". One round trip with one
        EXISTS per call over its marker, its outcome and its cancel flag (plus its batch's state for a batch
        call): the usual call has none of them and runs. Only the calls with any (a redelivery, a cancel) take
        a second round trip to tell answered from cancelled (two EXISTS per call were one more Redis command
        per call, bench.web_cpu)."""
        pipe = self._r.pipeline(transaction=False)
        for call in calls:
            pipe.exists(keys.answered(call.call_id), keys.result(call.call_id), keys.cancelled(call.call_id))
            if call.batch:
                pipe.hget(keys.batch(call.batch), "state")
        flags = iter(pipe.execute())
        verdicts: list[str] = []
        flagged: list[int] = []
        for i, call in enumerate(calls):
            any_key = next(flags)
            batch_state = next(flags) if call.batch else None
            if any_key:
                flagged.append(i)
            verdicts.append("cancelled" if batch_state == "cancelled" else "run")
        if flagged:
            pipe = self._r.pipeline(transaction=False)
            for i in flagged:
                pipe.exists(keys.answered(calls[i].call_id), keys.result(calls[i].call_id))
            for i, answered in zip(flagged, pipe.execute(), strict=True):
                verdicts[i] = "answered" if answered else "cancelled"
        return verdicts

    def event(self, call_id: str, reply_to: str | None, kind: str, payload: dict[str, Any]) -> None:
        """A call's side message to its client (`log`, `server_request`), on the caller's web-process channel."""
        if reply_to:
            data = wire.dumps({"call_id": call_id, kind: payload})
            # a server_request comes from a thread that then waits for the answer: published (behind the
            # call's notes) before that
            self._publish_routed(call_id, reply_to, data, f"a {kind} event", wait=kind == "server_request")

    def await_answer(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The client's answer to a server-to-client request, pushed by the web process (None on timeout)."""
        found = self._r.blpop([keys.answer(request_id)], timeout=max(0.01, timeout))
        return json.loads(found[1]) if found else None

    def cancelled(self, call_id: str) -> bool:
        return bool(self._r.exists(keys.cancelled(call_id)))


def rpc_error(code: int, message: str, data: Any = None) -> dict[str, Any]:
    """An error outcome (what a worker stores for a call that ends without a result)."""
    return {"error": RPCError(code, message, data).to_error()}


def cancelled_outcome() -> dict[str, Any]:
    return {**rpc_error(REQUEST_CANCELLED, "Request cancelled"), "cancelled": True}


def timeout_outcome(server: str, timeout: float, queued: bool = False) -> dict[str, Any]:
    if queued:
        return rpc_error(REQUEST_TIMEOUT, f"Request timed out: it waited in the queue of server {server!r} too long")
    return rpc_error(REQUEST_TIMEOUT, f"Request timed out: server {server!r} did not answer within {timeout:g}s")
