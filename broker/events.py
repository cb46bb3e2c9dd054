"""SSE event log for the Streamable HTTP transport: every event of a response stream, in Redis.

Each HTTP response stream (one per POST that carries requests, plus a
session's standalone GET stream) is a Redis stream. The SSE generator reads
it like any reader, so live delivery and `Last-Event-ID` resumption are the
same code, and a client can resume on any web process: an event id names its
stream and its position (`<stream>.<entry id>`).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from broker import keys, wire

EVENT_TTL_S = 600
ENDED: dict[str, Any] = {"ended": True}  # read() yields this very object for a stream closed by its session's end


class EventLog:
    def __init__(self, r: redis.Redis, ttl_s: int = EVENT_TTL_S) -> None:
        self._r = r
        self.ttl_s = ttl_s

    def append(self, session_id: str, stream_id: str, message: dict[str, Any]) -> str:
        """One event onto its stream, at once (one round trip), also in a burst of the reply hub's: never
        held back (`broker.held`), since this write is the delivery. The stream's reader, blocked on it, and
        a client resuming it with Last-Event-ID find the event only here; when this returns, it is there
        (`HttpSession.route` forgets a request's route only then). Raises when Redis refuses it. Its entry id."""
        key = keys.sse_stream(session_id, stream_id)
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(key, {"data": wire.dumps(message)})  # encodable whatever it holds: see broker.wire
        pipe.expire(key, self.ttl_s)
        return str(pipe.execute()[0])

    def read(
        self, session_id: str, stream_id: str, after: str, block_ms: int | None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after `after` (an entry id, "0" for all, "$" for only new ones), waiting up to block_ms
        (None: not at all; 0 would be XREAD's BLOCK 0, forever)."""
        found = self._r.xread({keys.sse_stream(session_id, stream_id): after}, count=100, block=block_ms)
        out: list[tuple[str, dict[str, Any]]] = []
        for _key, entries in found or []:
            for entry_id, fields in entries:
                out.append((entry_id, json.loads(fields["data"]) if "data" in fields else ENDED))
        return out

    def last_id(self, session_id: str, stream_id: str) -> str:
        info = self._r.xinfo_stream(keys.sse_stream(session_id, stream_id)) if self._r.exists(
            keys.sse_stream(session_id, stream_id)) else None
        return str(info["last-generated-id"]) if info else "0"

    def drop_session(self, session_id: str, stream_ids: list[str]) -> None:
        """The session ended: each of its streams gets an end mark (a reader blocked on it, in any web
        process, wakes and ends its response), then goes. Not one transaction: Redis serves blocked
        readers after each command, and after a MULTI the streams would already be gone."""
        if stream_ids:
            pipe = self._r.pipeline(transaction=False)
            for stream_id in stream_ids:
                pipe.xadd(keys.sse_stream(session_id, stream_id), {"end": "1"})
            pipe.delete(*[keys.sse_stream(session_id, s) for s in stream_ids])
            pipe.execute()


def parse_event_id(event_id: str) -> tuple[str, str] | None:
    stream_id, sep, entry_id = event_id.partition(".")
    if not sep or not stream_id or not entry_id:
        return None
    return stream_id, entry_id
