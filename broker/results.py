"""How a call's outcome travels from the worker to the client's web process.

A result is stored under the call id with SET NX and published on the web
process's channel in one Lua step: the first writer wins, so a redelivered or
retried call is answered exactly once, and a web process that missed the
publish (the client had reconnected elsewhere) still finds the stored answer.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from broker import keys

RESULT_TTL_S = 3600

_DELIVER = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
  return 1
end
return 0
"""


class ResultWriter:
    """Worker-side: deliver outcomes and progress of calls."""

    def __init__(self, r: redis.Redis, ttl_s: int = RESULT_TTL_S) -> None:
        self._r = r
        self._ttl = ttl_s
        self._deliver = r.register_script(_DELIVER)

    def deliver(self, call_id: str, reply_to: str | None, outcome: dict[str, Any]) -> bool:
        """Store and publish `{"call_id", "result"|"error"}`; False when the call was already answered."""
        payload = json.dumps({"call_id": call_id, **outcome}, separators=(",", ":"))
        return bool(self._deliver(keys=[keys.result(call_id)], args=[payload, self._ttl, reply_to or ""]))

    def progress(
        self, call_id: str, reply_to: str | None, progress: float, total: float | None, message: str | None
    ) -> None:
        if not reply_to:
            return
        note = {"progress": progress, "total": total, "message": message}
        self._r.publish(reply_to, json.dumps({"call_id": call_id, "progress": note}, separators=(",", ":")))

    def answered(self, call_id: str) -> bool:
        return bool(self._r.exists(keys.result(call_id)))

    def cancelled(self, call_id: str) -> bool:
        return bool(self._r.exists(keys.cancelled(call_id)))


def rpc_error(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"error": error}
