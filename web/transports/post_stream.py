"""How a handshake POST's response reads its own SSE stream: handed over in-process, Redis as the fallback.

Every event of a POST's stream is written to Redis (`broker.events`: the delivery, and what a resume with
Last-Event-ID reads), and only the process that took the POST writes them (another one writes only the end
mark of a session deleted there). So its live response takes each event from that write in-process
(`HttpSession.route` hands it over once the XADD is in) instead of reading it back with a blocking XREAD:
14 % of the web's samples per handshake call (py-spy: its send, its parse; and a pooled connection held
per open POST); CPU per answer written and then read back 204 us, handed over 96
(`python -m bench.web_cpu --micro`). A stream still waiting after `LOCAL_WAIT_S` (a slow call) reads Redis
from then on, as every other stream does: it sees another process's end mark there, and a gone session
ends it (so a DELETE on another process ends it within ~1 s, not at once); a stream busy with events checks
its session at most once a second (`ALIVE_CHECK_S`, one EXISTS) for the same end. At most `LIVE_MAX` events
wait in-process for a response that reads slowly; then it reads Redis, which holds them all.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from typing import Any, Protocol

from mcp_types import INVALID_REQUEST

from broker.events import ENDED, EventLog
from broker.protocol import RPCError

LOCAL_WAIT_S = 1.0  # how long a POST stream waits for events handed over in-process before it reads Redis
ALIVE_CHECK_S = 1.0  # while events are handed over, how often it checks that its session still exists
LIVE_MAX = 256  # events held for a response that reads slowly: beyond it, that response reads Redis

Events = queue.Queue[tuple[str, dict[str, Any]]]


class Listening(Protocol):
    """The session side (`HttpSession`): hands over the events written to a stream while it is listened to."""

    session_id: str

    def listen(self, stream_id: str) -> Events: ...
    def unlisten(self, stream_id: str) -> None: ...


class PostStream:
    """One POST's stream as its response reads it; `close` when the response is done."""

    def __init__(self, events: EventLog, session: Listening, stream_id: str, alive: Callable[[], bool]) -> None:
        self._events, self._session, self._stream_id, self._alive = events, session, stream_id, alive
        self._live: Events | None = session.listen(stream_id)
        self._checked = time.monotonic()

    def read(self, after: str, block_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Events after `after` (the last one this response took), as `EventLog.read` gives them."""
        if self._live is not None:
            try:
                batch = [self._live.get(timeout=LOCAL_WAIT_S)]
            except queue.Empty:
                self.close()  # from now on, Redis: what was handed over since is in the stream after `after`
                if not self._alive():
                    return [(after, ENDED)]
            else:
                while len(batch) < LIVE_MAX:
                    try:
                        batch.append(self._live.get_nowait())
                    except queue.Empty:
                        break
                return self._unless_ended(batch)
        return self._events.read(self._session.session_id, self._stream_id, after, block_ms)

    def answers(self, waiting: set[str], wait_s: float) -> list[dict[str, Any]]:
        """The answers to `waiting` (JSON of their ids), for a client that takes one JSON body. A request the
        session's end (or `wait_s`) leaves unanswered gets an error of its own, never a body without it."""
        collected: list[dict[str, Any]] = []
        after, deadline, ended = "0", time.monotonic() + wait_s, False
        while waiting and not ended and time.monotonic() < deadline:
            batch = self.read(after, 1000)
            ended = not batch and not self._alive()  # expired while quiet
            for entry_id, message in batch:
                if message is ENDED:
                    ended = True  # the session was deleted
                    break
                after = entry_id
                if "id" in message and json.dumps(message["id"]) in waiting:
                    waiting.discard(json.dumps(message["id"]))
                    collected.append(message)
        why = "the session ended" if ended else f"no answer within {wait_s:g} s"
        return collected + [RPCError(INVALID_REQUEST, f"Request not answered: {why}").to_message(json.loads(key))
                            for key in sorted(waiting)]

    def _unless_ended(self, batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """`batch`, and the end mark after it once the session is gone: a DELETE on another process, or an
        expiry, writes no event here, and a stream busy with events never waits long enough to read Redis."""
        now = time.monotonic()
        if now - self._checked < ALIVE_CHECK_S:
            return batch
        self._checked = now
        return batch if self._alive() else [*batch, (batch[-1][0], ENDED)]

    def close(self) -> None:
        if self._live is not None:
            self._live = None
            self._session.unlisten(self._stream_id)
