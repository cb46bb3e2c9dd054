"""How a handshake POST's response reads its own SSE stream: handed over in-process, Redis as the fallback.

Every event of a POST's stream is written to Redis (`broker.events`: the delivery, and what a resume with
Last-Event-ID reads), and only the process that took the POST writes them (another one writes only the end
mark of a session deleted there). So its live response takes each event from that write in-process
(`HttpSession.route` hands it over once the XADD is in) instead of reading it back with a blocking XREAD:
14 % of the web's samples per handshake call (py-spy: its send, its parse; and a pooled connection held
per open POST); CPU per answer written and then read back 204 us, handed over 96
(`python -m bench.web_cpu --micro`). A stream still waiting after `LOCAL_WAIT_S` (a slow call) reads Redis
from then on, as every other stream does: it sees another process's end mark there, and a gone session
ends it (so a DELETE on another process ends it within ~1 s, not at once).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, Protocol

from broker.events import ENDED, EventLog

LOCAL_WAIT_S = 1.0  # how long a POST stream waits for events handed over in-process before it reads Redis

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
                while True:
                    try:
                        batch.append(self._live.get_nowait())
                    except queue.Empty:
                        return batch
        return self._events.read(self._session.session_id, self._stream_id, after, block_ms)

    def close(self) -> None:
        if self._live is not None:
            self._live = None
            self._session.unlisten(self._stream_id)
