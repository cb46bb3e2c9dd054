"""Client sessions in Redis: what a reconnecting client needs to carry on where it left off.

A session outlives its socket: its negotiated state, and the calls it has in
flight (call id → the client's request id), so a client that reconnects to ANY
web process gets the answers that finished while it was away and keeps
waiting for the rest. A session expires after an idle TTL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from broker import keys

DEFAULT_TTL_S = 3600


class SessionStore:
    def __init__(self, r: redis.Redis, ttl_s: int = DEFAULT_TTL_S) -> None:
        self._r = r
        self.ttl_s = ttl_s

    def save(self, session_id: str, state: dict[str, Any]) -> None:
        """Create or update the session's negotiated state (protocol version, client info, capabilities)."""
        now = time.time()
        fields = {name: json.dumps(value) for name, value in state.items()}
        pipe = self._r.pipeline(transaction=False)
        pipe.hsetnx(keys.session(session_id), "created", now)
        pipe.hset(keys.session(session_id), mapping={**fields, "seen": now})
        pipe.expire(keys.session(session_id), self.ttl_s)
        pipe.execute()

    def load(self, session_id: str) -> dict[str, Any] | None:
        raw = self._r.hgetall(keys.session(session_id))
        if not raw:
            return None
        state: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                state[name] = json.loads(value)
            except ValueError:
                state[name] = value
        return state

    def exists(self, session_id: str) -> bool:
        return bool(self._r.exists(keys.session(session_id)))

    def touch(self, session_id: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(keys.session(session_id), "seen", time.time())
        pipe.expire(keys.session(session_id), self.ttl_s)
        pipe.expire(keys.session_calls(session_id), self.ttl_s)
        pipe.execute()

    def remember(self, calls: list[dict[str, Any]]) -> None:
        """Record calls in flight for their sessions (before they are sent, so an answer can never
        arrive for a call the session does not know)."""
        pipe = self._r.pipeline(transaction=False)
        for call in calls:
            if call.get("session") and "rid" in call:
                entry = {"rid": call["rid"], "method": call.get("method", "tools/call"), "server": call["server"]}
                if call.get("progress_token") is not None:
                    entry["progressToken"] = call["progress_token"]
                pipe.hset(keys.session_calls(call["session"]), call["call_id"], json.dumps(entry))
                pipe.expire(keys.session_calls(call["session"]), self.ttl_s)
        if len(pipe):
            pipe.execute()

    def forget(self, session_id: str, call_ids: list[str]) -> None:
        """Answered (or cancelled): the session no longer waits for these."""
        if call_ids:
            self._r.hdel(keys.session_calls(session_id), *call_ids)

    def pending(self, session_id: str) -> dict[str, dict[str, Any]]:
        return {call_id: json.loads(v) for call_id, v in self._r.hgetall(keys.session_calls(session_id)).items()}

    def delete(self, session_id: str) -> None:
        self._r.delete(keys.session(session_id), keys.session_calls(session_id))
