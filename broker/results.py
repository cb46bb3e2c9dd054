"""How a call's outcome travels from the worker to whoever waits for it.

A result is stored under the call id with SET NX and, in the same Lua step,
published on the caller's web-process channel and (for batch calls) appended
to the batch's result stream with its counters: the first writer wins, so a
redelivered or retried call is answered and counted exactly once, and a
reader that missed the publish still finds the stored answer.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from mcp_types import REQUEST_TIMEOUT

from broker import keys

RESULT_TTL_S = 3600
REQUEST_CANCELLED = -32800  # LSP's code, used by MCP SDKs for a cancelled request

_DELIVER = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
if KEYS[2] then
  redis.call('XADD', KEYS[3], '*', 'data', ARGV[1])
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return 1
"""


def outcome_kind(outcome: dict[str, Any]) -> str:
    """The batch counter an outcome adds to: done, failed (error or isError) or cancelled."""
    if outcome.get("cancelled"):
        return "cancelled"
    if "error" in outcome or outcome.get("result", {}).get("isError"):
        return "failed"
    return "done"


class ResultWriter:
    """Worker-side: deliver outcomes and progress of calls."""

    def __init__(self, r: redis.Redis, ttl_s: int = RESULT_TTL_S) -> None:
        self._r = r
        self._ttl = ttl_s
        self._deliver = r.register_script(_DELIVER)

    def deliver(self, call: dict[str, Any], outcome: dict[str, Any]) -> bool:
        """Store and publish `{"call_id", "id"?, "result"|"error"}`; False when the call was already answered."""
        call_id = call["call_id"]
        message = {"call_id": call_id, **outcome}
        if call.get("id") is not None:
            message["id"] = call["id"]  # the batch client's own id for the call
        payload = json.dumps(message, separators=(",", ":"))
        batch_id = call.get("batch")
        key_list = [keys.result(call_id)]
        if batch_id:
            key_list += [keys.batch(batch_id), keys.batch_results(batch_id)]
        args = [payload, self._ttl, call.get("reply_to") or "", outcome_kind(outcome)]
        return bool(self._deliver(keys=key_list, args=args))

    def started(self, calls: list[dict[str, Any]]) -> None:
        """Mark batch calls as running (a set, so a redelivered call is not counted twice)."""
        by_batch: dict[str, list[str]] = {}
        for call in calls:
            if call.get("batch"):
                by_batch.setdefault(call["batch"], []).append(call["call_id"])
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
        self._r.publish(reply_to, json.dumps({"call_id": call_id, "progress": note}, separators=(",", ":")))

    def triage(self, calls: list[dict[str, Any]]) -> list[str]:
        """For each call: "answered" (skip), "cancelled" (answer as cancelled) or "run"; one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for call in calls:
            pipe.exists(keys.result(call["call_id"]))
            pipe.exists(keys.cancelled(call["call_id"]))
            pipe.hget(keys.batch(call["batch"]), "state") if call.get("batch") else pipe.echo("")
        flags = pipe.execute()
        verdicts = []
        for i in range(len(calls)):
            answered, cancelled, batch_state = flags[3 * i : 3 * i + 3]
            if answered:
                verdicts.append("answered")
            else:
                verdicts.append("cancelled" if cancelled or batch_state == "cancelled" else "run")
        return verdicts

    def event(self, call_id: str, reply_to: str | None, kind: str, payload: dict[str, Any]) -> None:
        """A call's side message to its client (`log`, `server_request`), on the caller's web-process channel."""
        if reply_to:
            self._r.publish(reply_to, json.dumps({"call_id": call_id, kind: payload}, separators=(",", ":")))

    def await_answer(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The client's answer to a server-to-client request, pushed by the web process (None on timeout)."""
        found = self._r.blpop([keys.answer(request_id)], timeout=max(0.01, timeout))
        return json.loads(found[1]) if found else None

    def cancelled(self, call_id: str) -> bool:
        return bool(self._r.exists(keys.cancelled(call_id)))


def rpc_error(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"error": error}


def cancelled_outcome() -> dict[str, Any]:
    return {**rpc_error(REQUEST_CANCELLED, "Request cancelled"), "cancelled": True}


def timeout_outcome(server: str, timeout: float, queued: bool = False) -> dict[str, Any]:
    if queued:
        return rpc_error(REQUEST_TIMEOUT, f"Request timed out: it waited in the queue of server {server!r} too long")
    return rpc_error(REQUEST_TIMEOUT, f"Request timed out: server {server!r} did not answer within {timeout:g}s")
