"""Coalesce calls bound for the same server into one queue message.

A send is a Redis round trip (the web's `send`, web/services.py: the calls'
session records and the message in one MULTI/EXEC, ~50 us of the web's CPU
here, and the worker's per-message cost below); the backend answers a trivial
call in not much more. So the web process never sends one message per call
when calls arrive together: each queue has a sender that takes whatever is waiting (up to
`max_batch`) and sends it as one message. An idle broker adds no delay (a lone
call goes out at once); a busy one sends fewer, fuller messages. The worker
runs a message's calls concurrently over its warm session. `max_batch=1`
turns coalescing off (the benchmark's baseline).

Under load, calls arrive one by one as earlier ones are answered, so "what is
waiting" is mostly one call, and the worker pays its per-message cost (Celery's
consumer, a thread, a Redis round trip or two: ~1 CPU-ms) for each. So when
a queue already has `coalesce_at` of this process's calls in flight, its
sender waits up to `coalesce_wait_s` for more to share the message. Loaded,
a call waits in a queue anyway (N in flight / calls per second, tens of ms),
and fuller messages raise the calls per second that queue wait divides by;
idle or lightly used queues never wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SubmitMany = Callable[[str, list[dict[str, Any]]], None]
OnFailure = Callable[[dict[str, Any], Exception], None]


class Outbox:
    def __init__(
        self,
        submit_many: SubmitMany,
        on_failure: OnFailure,
        max_batch: int = 32,
        load: Callable[[str], int] | None = None,
        coalesce_at: int = 16,
        coalesce_wait_s: float = 0.01,
    ) -> None:
        self._submit_many = submit_many
        self._on_failure = on_failure
        self.max_batch = max(1, max_batch)
        self.coalesce_at = max(1, coalesce_at)
        self.coalesce_wait_s = max(0.0, coalesce_wait_s)
        self._load = load  # server → calls of this process in flight on it (sent, not answered)
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        self._wakeups: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._gathering: set[str] = set()  # queues whose sender waits for its message to fill (`_gather`)
        self.messages_sent = 0
        self.calls_sent = 0

    def put(self, queue: str, call: dict[str, Any]) -> None:
        pending = self._queues.get(queue)
        if pending is None:
            pending = self._start_sender(queue)
        pending.append(call)  # (before the look at `_gathering`: a sender that just stopped gathering sees it)
        if queue not in self._gathering or len(pending) >= self.max_batch:
            self._wakeups[queue].set()

    def _start_sender(self, queue: str) -> deque[dict[str, Any]]:
        with self._lock:
            if queue not in self._queues:
                self._wakeups[queue] = threading.Event()
                self._queues[queue] = deque()
                threading.Thread(target=self._send_loop, args=(queue,), name=f"outbox-{queue}", daemon=True).start()
            return self._queues[queue]

    def _loaded(self, pending: deque[dict[str, Any]]) -> bool:
        if self._load is None or self.max_batch == 1 or self.coalesce_wait_s <= 0 or len(pending) >= self.max_batch:
            return False
        return self._load(str(pending[0].get("server", ""))) >= self.coalesce_at

    def _gather(self, queue: str, pending: deque[dict[str, Any]], wakeup: threading.Event) -> None:
        """The queue is loaded: give more calls `coalesce_wait_s` to join this message. Meanwhile a call put
        wakes the sender only when it fills the message (`put`): a wake per call (a greenlet switch and a
        new timeout each, under gevent) was ~2 % of the web's samples over WebSocket at 64 in flight."""
        deadline = time.monotonic() + self.coalesce_wait_s
        self._gathering.add(queue)
        try:
            while len(pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                wakeup.wait(remaining)
                wakeup.clear()
        finally:
            self._gathering.discard(queue)

    def _send_loop(self, queue: str) -> None:
        pending, wakeup = self._queues[queue], self._wakeups[queue]
        while True:
            wakeup.wait()
            wakeup.clear()
            while pending:
                if self._loaded(pending):
                    self._gather(queue, pending, wakeup)
                chunk = [pending.popleft() for _ in range(min(self.max_batch, len(pending)))]
                try:
                    self._submit_many(queue, chunk)
                    self.messages_sent += 1
                    self.calls_sent += len(chunk)
                except Exception as err:  # the broker is unreachable: every caller must hear about it
                    log.exception("could not enqueue %d call(s) on %s", len(chunk), queue)
                    for call in chunk:
                        self._on_failure(call, err)
