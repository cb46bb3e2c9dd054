"""Tasks of the tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663): a durable call whose reader is a
Redis record instead of a waiting socket.

A task is a forwarded `tools/call` like any other (`broker.calls.Call`, queued, run once by a worker, its
outcome stored once by `broker.results`); the call carries the digest of its task (`Call.task`), and every
transition is written into one hash by whoever makes it, in one Lua step that keeps terminal states final:
- the web process that took the request creates it hidden (`create`) before the call is sent, and makes it
  visible (`announce`) when it answers the client with the handle, so a `tasks/get` of a handle the client
  holds always resolves;
- the worker adds a backend's question (`ask`: `input_required`) and, in `results._DELIVER`, the outcome
  (`completed`, `failed`, or `cancelled`);
- any web process answers questions (`answer`: the answer goes to the waiting backend call through the
  relay's `answer` list, exactly as a modern retry's) and cancels (`cancel`: pending questions are answered
  with a cancellation at once, so the parked backend call wakes now).

The handle is `secrets.token_urlsafe(32)`; the record is keyed by its SHA-256 (`keys.task`), so neither a
Redis dump nor a worker sees a usable handle. The record names its principal and endpoint: a task is found
only by the key that made it, on the endpoint it was made on (anything else reads as an unknown task).
A record lives until its call's deadline plus `TASK_TTL_S`, then `TASK_TTL_S` again from its terminal write.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import redis

from broker import keys

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
INPUT_KEY_META_KEY = "io.mcp-broker/inputKey"  # a backend's name for its question (the `inputRequests` key)
TASK_TTL_S = int(os.environ.get("MCP_BROKER_TASK_TTL_S", "86400"))  # a client away for an hour polls again
POLL_MS = int(os.environ.get("MCP_BROKER_TASK_POLL_MS", "1000"))  # the pollIntervalMs hint
HOLD_S = float(os.environ.get("MCP_BROKER_TASK_HOLD_MS", "250")) / 1000  # see handlers/tasks.py
TASK_NAME_PARAMS = {"tasks/get": "taskId", "tasks/update": "taskId", "tasks/cancel": "taskId"}  # Mcp-Name's source
STATUSES = ("working", "input_required", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
CANCELLED_ANSWER = json.dumps({"error": {"code": -32800, "message": "Task cancelled"}})
ANSWER_TTL_S = 600  # as the relay's answers (handlers/relay.answer_backend)
QUESTION = "q:"  # hash field prefix: a pending question's JSON, by its key
ASK = "a:"  # hash field prefix: the backend request id a pending question waits on, by its key
USED = "u:"  # hash field prefix: a key used once in this task (keys are unique over a task's life)

# Lua shared by the transitions: KEYS[1] the task, KEYS[2..6] the state sets in STATUSES order.
_MOVE = """
local order = {working=2, input_required=3, completed=4, failed=5, cancelled=6}
local function move(status, now)
  for i = 2, 6 do redis.call('ZREM', KEYS[i], KEYS[1]) end
  redis.call('HSET', KEYS[1], 'status', status, 'updated', now)
  if redis.call('HGET', KEYS[1], 'visible') == '1' then  -- a task nobody was told of is not counted
    local ttl = redis.call('TTL', KEYS[1])
    redis.call('ZADD', KEYS[order[status]], tonumber(now) + math.max(ttl, 0), KEYS[1])
  end
end
local function terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled'
end
local function drop_pending()
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local p = string.sub(field, 1, 2)
    if p == 'q:' or p == 'a:' then redis.call('HDEL', KEYS[1], field) end
  end
end
"""
# a backend's question: ARGV = preferred key, ask id, question JSON, now
_ASK = _MOVE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or terminal(status) then return false end
local key = ARGV[1]
if key == '' or redis.call('HEXISTS', KEYS[1], 'u:' .. key) == 1 then key = ARGV[2] end
redis.call('HSET', KEYS[1], 'q:' .. key, ARGV[3], 'a:' .. key, ARGV[2], 'u:' .. key, '1')
move('input_required', ARGV[4])
return key
"""
# the client's answers: ARGV = now, answer-list prefix, answer TTL, then (key, answer JSON) pairs
_ANSWER = _MOVE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or terminal(status) then return 0 end
local n = 0
for i = 4, #ARGV, 2 do
  local ask = redis.call('HGET', KEYS[1], 'a:' .. ARGV[i])
  if ask then
    redis.call('RPUSH', ARGV[2] .. ask, ARGV[i + 1])
    redis.call('EXPIRE', ARGV[2] .. ask, ARGV[3])
    redis.call('HDEL', KEYS[1], 'a:' .. ARGV[i], 'q:' .. ARGV[i])
    n = n + 1
  end
end
if status == 'input_required' then
  local left = false
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'a:' then left = true break end
  end
  if not left then move('working', ARGV[1]) end
end
return n
"""
# cancel: ARGV = now, answer-list prefix, answer TTL, the cancelled answer, terminal TTL; 1 if it was live
_CANCEL = _MOVE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or terminal(status) then return 0 end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'a:' then
    local list = ARGV[2] .. redis.call('HGET', KEYS[1], field)
    redis.call('RPUSH', list, ARGV[4])
    redis.call('EXPIRE', list, ARGV[3])
  end
end
drop_pending()
redis.call('EXPIRE', KEYS[1], ARGV[5])
move('cancelled', ARGV[1])
return 1
"""
# made visible (the client is told of it): ARGV = now; the record and its remaining lifetime (ms)
_ANNOUNCE = _MOVE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'visible', '1')
move(redis.call('HGET', KEYS[1], 'status'), redis.call('HGET', KEYS[1], 'updated'))
return {redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
# the outcome, as a part of results._DELIVER: its last six KEYS are the task and its state sets
DELIVER_TASK = """
if ARGV[7] ~= '' then
  local base = #KEYS - 6
  local tk = KEYS[base + 1]
  local status = redis.call('HGET', tk, 'status')
  if status and status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
    for _, field in ipairs(redis.call('HKEYS', tk)) do
      local p = string.sub(field, 1, 2)
      if p == 'q:' or p == 'a:' then redis.call('HDEL', tk, field) end
    end
    redis.call('HSET', tk, 'status', ARGV[7], 'updated', ARGV[8], 'outcome', ARGV[1])
    redis.call('EXPIRE', tk, ARGV[9])
    local order = {working=2, input_required=3, completed=4, failed=5, cancelled=6}
    for i = 2, 6 do redis.call('ZREM', KEYS[base + i], tk) end
    if redis.call('HGET', tk, 'visible') == '1' then
      redis.call('ZADD', KEYS[base + order[ARGV[7]]], tonumber(ARGV[8]) + tonumber(ARGV[9]), tk)
    end
  end
end
"""


def new_handle() -> str:
    return secrets.token_urlsafe(32)


def digest_of(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


def task_keys(digest: str) -> list[str]:
    """The task's key and the state sets, as every transition script takes them."""
    return [keys.task(digest), *(keys.task_states(status) for status in STATUSES)]


def final_status(outcome: dict[str, Any]) -> str:
    """The terminal status an outcome gives its task: a tool error (isError) is `completed`."""
    if outcome.get("cancelled"):
        return "cancelled"
    return "failed" if "error" in outcome else "completed"


def question_of(backend_request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the backend's name for its question, or "", the question as a client sees it): the broker's
    `io.mcp-broker/inputKey` is taken out of the question's `_meta`."""
    params = dict(backend_request.get("params") or {})
    meta = dict(params.get("_meta") or {})
    key = str(meta.pop(INPUT_KEY_META_KEY, "") or "")
    if meta:
        params["_meta"] = meta
    else:
        params.pop("_meta", None)
    return key, {"method": backend_request["method"], "params": params}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskStore:
    """The task records in Redis: every transition one Lua step (see the module's docstring)."""

    def __init__(self, r: redis.Redis) -> None:
        self._r = r
        self._ask = r.register_script(_ASK)
        self._answer = r.register_script(_ANSWER)
        self._cancel = r.register_script(_CANCEL)
        self._announce = r.register_script(_ANNOUNCE)

    def create(self, digest: str, fields: dict[str, Any], lifetime_s: int) -> None:
        """A hidden, `working` record (the web process, before the call is sent): not counted by state until
        it is announced (a call answered within the hold, or whose first question round is never retried,
        was never a task)."""
        now = time.time()
        key = keys.task(digest)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping={**fields, "visible": "0", "status": "working", "created": now, "updated": now})
        pipe.expire(key, lifetime_s)
        pipe.execute()

    def announce(self, digest: str) -> dict[str, str] | None:
        """Made visible (and counted): the client is told its handle now. The record as it is, or None if it is
        gone."""
        found = self._announce(keys=task_keys(digest), args=[])
        if not found:
            return None
        flat, pttl = found
        return {**_decoded(dict(zip(flat[::2], flat[1::2], strict=True))), "pttl": str(pttl)}

    def discard(self, digest: str) -> None:
        """A call answered synchronously while it might still have become a task: its record goes."""
        key = keys.task(digest)
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(key)
        for status in STATUSES:
            pipe.zrem(keys.task_states(status), key)
        pipe.execute()

    def get(self, digest: str) -> dict[str, str] | None:
        """The record (with `pttl`: its remaining lifetime in ms), or None."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(keys.task(digest))
        pipe.pttl(keys.task(digest))
        record, pttl = pipe.execute()
        return {**_decoded(record), "pttl": str(pttl)} if record else None

    def ask(self, digest: str, key: str, ask_id: str, question: dict[str, Any]) -> str | None:
        """A backend's question (the worker): the key it is listed under, None if the task is over."""
        found = self._ask(keys=task_keys(digest), args=[key, ask_id, json.dumps(question), time.time()])
        return found.decode() if isinstance(found, bytes) else found

    def answer(self, digest: str, answers: dict[str, dict[str, Any]]) -> int:
        """The client's answers (`{key: {"result": ...}}`) to pending questions; others are ignored."""
        pairs = [item for key, answer in answers.items() for item in (key, json.dumps(answer))]
        return int(self._answer(keys=task_keys(digest), args=[time.time(), keys.answer(""), ANSWER_TTL_S, *pairs]))

    def cancel(self, digest: str) -> bool:
        """Cancelled unless it is over already: True if this cancelled it."""
        return bool(self._cancel(keys=task_keys(digest), args=[time.time(), keys.answer(""), ANSWER_TTL_S,
                                                                CANCELLED_ANSWER, TASK_TTL_S]))

    def counts(self) -> dict[str, int]:
        """Live tasks by status (expired ones pruned from the sets first)."""
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zremrangebyscore(keys.task_states(status), "-inf", now)
            pipe.zcard(keys.task_states(status))
        replies = pipe.execute()
        return {status: int(replies[2 * i + 1]) for i, status in enumerate(STATUSES)}


def _decoded(record: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in record.items()}
