"""Client sessions in Redis: what a reconnecting client needs to carry on where it left off.

A session outlives its socket: its negotiated state, and the calls it has in
flight (call id → the client's request id), so a client that reconnects to ANY
web process gets the answers that finished while it was away and keeps
waiting for the rest. A session expires after an idle TTL.

A session's owner (the id of the API key that opened it, `principal`) is part
of its identity: it is written when the session is created and nothing else
writes it. Updates and touches change a session only while it exists (one Lua
script each, so an expiry between a check and a write cannot recreate it), and
a record without an owner is no session: before this, a frame sent after the
TTL recreated the hash without `principal`, and the owner check passed for
anyone who knew the id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from broker import held, keys, wire

DEFAULT_TTL_S = 3600
DELIVERED_TTL_S = 30  # MCP_BROKER_DELIVERED_TTL_S: how long an outcome stays in Redis once nobody needs it
OWNER = "principal"

_UPDATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class SessionStore:
    def __init__(self, r: redis.Redis, ttl_s: int = DEFAULT_TTL_S, delivered_ttl_s: int = DELIVERED_TTL_S) -> None:
        self._r = r
        self.ttl_s = ttl_s
        self.delivered_ttl_s = max(1, delivered_ttl_s)
        self._update = r.register_script(_UPDATE)

    def create(self, session_id: str, state: dict[str, Any]) -> None:
        """A new session, owned by `state["principal"]` (required: a session without an owner is refused)."""
        owner = state.get(OWNER)
        if not isinstance(owner, str) or not owner:
            raise ValueError("a session needs its owner (the principal that opens it)")
        now = time.time()
        fields = {name: json.dumps(value) for name, value in state.items()}
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(keys.session(session_id), mapping={**fields, "created": now, "seen": now})
        pipe.expire(keys.session(session_id), self.ttl_s)
        pipe.execute()

    def save(self, session_id: str, state: dict[str, Any]) -> bool:
        """Update a live session's negotiated state (protocol version, client info, capabilities) and refresh
        its TTL; False (and nothing written) if it expired or was deleted. The owner is never rewritten."""
        fields = [part for name, value in state.items() if name != OWNER for part in (name, json.dumps(value))]
        return bool(self._update(keys=[keys.session(session_id), keys.session_calls(session_id)],
                                 args=[time.time(), self.ttl_s, OWNER, *fields]))

    def load(self, session_id: str) -> dict[str, Any] | None:
        """The session's state; None if there is none, or the record has no owner (no session at all)."""
        raw = self._r.hgetall(keys.session(session_id))
        if not raw or OWNER not in raw:
            return None
        state: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                state[name] = json.loads(value)
            except ValueError:
                state[name] = value
        return state

    def load_owned(self, session_id: str, principal_id: str) -> dict[str, Any] | None:
        """The session's state if `principal_id` owns it; None for an unknown, expired or foreign session."""
        state = self.load(session_id)
        return state if state is not None and state.get(OWNER) == principal_id else None

    def exists(self, session_id: str) -> bool:
        return bool(self._r.hexists(keys.session(session_id), OWNER))

    def touch(self, session_id: str) -> bool:
        """Use refreshes the TTL; False if the session is gone (expired or deleted): it is not recreated."""
        return self.save(session_id, {})

    def records(self, calls: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        """The records of calls in flight for their sessions, by session (`keys.session_calls` -> call id ->
        entry), which `web.services.push_calls` writes (HSET and EXPIRE each, `ttl_s`) before the calls are
        sent, so an answer can never arrive for a call the session does not know; and the stamp on every
        call of how long the worker keeps its outcome (`keep_s`): a session's call for the session's TTL (its
        client may be away when it ends), any other only briefly (its caller waits for it here right now)."""
        by_key: dict[str, dict[str, str]] = {}
        for call in calls:
            pending = bool(call.get("session")) and "rid" in call
            call.setdefault("keep_s", self.ttl_s if pending else self.delivered_ttl_s)
            if pending:
                entry = {"rid": call["rid"], "method": call.get("method", "tools/call"), "server": call["server"]}
                if call.get("progress_token") is not None:
                    entry["progressToken"] = call["progress_token"]
                by_key.setdefault(keys.session_calls(call["session"]), {})[call["call_id"]] = wire.dumps(entry)
        return by_key

    def forget(self, session_id: str, call_ids: list[str]) -> None:
        """Answered (or cancelled): the session no longer waits for these, and their outcomes, kept for the
        session's TTL in case its client was away, now expire after `delivered_ttl_s`. In a burst of the
        reply hub's (`broker.held`), written with the burst's other writes when it ends."""
        if call_ids:
            results = [keys.result(call_id) for call_id in call_ids]
            # a burst's: one HDEL per session, one command for all its outcomes' EXPIREs
            if held.hdel(keys.session_calls(session_id), call_ids) and held.expire(results, self.delivered_ttl_s):
                return
            pipe = self._r.pipeline(transaction=False)
            pipe.hdel(keys.session_calls(session_id), *call_ids)
            for result in results:
                pipe.expire(result, self.delivered_ttl_s)
            pipe.execute()

    def route(self, call_ids: list[str], channel: str, ttl_s: int) -> None:
        """A session resumed on this web process: workers publish these calls' progress, events and outcomes
        on its channel from now on (the process that queued them may be gone)."""
        if call_ids:
            pipe = self._r.pipeline(transaction=False)
            for call_id in call_ids:
                pipe.set(keys.reply_route(call_id), channel, ex=max(1, ttl_s))
            pipe.execute()

    def pending(self, session_id: str) -> dict[str, dict[str, Any]]:
        return {call_id: json.loads(v) for call_id, v in self._r.hgetall(keys.session_calls(session_id)).items()}

    def delete(self, session_id: str) -> None:
        self._r.delete(keys.session(session_id), keys.session_calls(session_id))
