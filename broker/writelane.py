"""A worker's Redis writes, off the backend's event loop and many to a round trip.

A worker runs all its backend calls as coroutines on one event loop (workers/backends/pool.py). Any Redis
command issued from that loop (storing an outcome, publishing a progress note, a cache store, a health
record) stops every call of the process for a round trip: on a 500 ms link, 32 concurrent calls spent most
of their 10 s limit waiting for each other's stores and 13 failed as "did not answer" (issue 12, finding 3).

So these writes go to one thread per process, in order (a call's progress notes stay ahead of its outcome),
and whatever has queued up while the previous round trip was on the wire goes out as one pipeline: a slow
link delays outcomes by about one round trip, not one round trip per outcome, and the loop only appends to
a queue. `run()` is for a coroutine that must know the write happened (an outcome: the message is acked
after it); `fire()` for best-effort writes (progress, cache, health), which are dropped past `max_pending`
rather than grow without bound while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import redis
from redis.client import Pipeline

from broker.redisconn import get_redis

log = logging.getLogger(__name__)

Ops = Callable[[Pipeline], Any]  # queues one or more commands on the pipeline it is given


class Settles(Protocol):
    """What the lane's thread settles for a write that is waited for: a `concurrent.futures.Future` (`submit`)
    or one write of a `_LoopBatch` (`run`)."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: list[Any]) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...


class _LoopBatch:
    """The writes an event loop's coroutines queue in one turn of the loop (every outcome whose backend answer
    arrived in the same read, typically): put on the lane under one lock with one wakeup of its thread, and
    settled with one call back into the loop, instead of a wakeup and a self-pipe write each. Measured A/B
    (`python -m bench.worker_cpu --direct`, 16 calls a message, a loaded box, medians): worker thread wake-ups
    per call 3.05 -> 2.55 (stdio backend), 4.03 -> 3.68 (HTTP); worker CPU per call HTTP 2.74 -> 2.59 ms,
    stdio unchanged within noise."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[tuple[Ops, asyncio.Future[list[Any]]]] = []
        self.settled: list[tuple[list[Any] | None, BaseException | None]] = []
        self._left = 0
        self._lock = threading.Lock()

    def add(self, ops: Ops) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        self.waiting.append((ops, future))
        return future

    def queued(self) -> list[tuple[Ops, Settles | None, str]]:
        self._left = len(self.waiting)
        self.settled = [(None, None)] * self._left
        return [(ops, _Slot(self, i), "") for i, (ops, _) in enumerate(self.waiting)]

    def done(self, index: int, result: list[Any] | None, error: BaseException | None) -> None:
        """One write settled (the lane's thread); the last one wakes the loop."""
        self.settled[index] = (result, error)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        for (_, future), (result, error) in zip(self.waiting, self.settled, strict=True):
            if future.done():  # its waiter was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])


class _Slot:
    """One write of a `_LoopBatch`, as the lane's thread settles it (`Settles`)."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _LoopBatch, index: int) -> None:
        self.batch = batch
        self.index = index

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: list[Any]) -> None:
        self.batch.done(self.index, result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self.batch.done(self.index, None, exception)


class WriteLane:
    def __init__(self, r: redis.Redis, max_batch: int = 512, max_pending: int = 50_000) -> None:
        self._r = r
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: deque[tuple[Ops, Settles | None, str]] = deque()
        self._open: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}  # `run` calls of the loop's current turn
        self._wakeup = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.round_trips = 0
        self.writes = 0
        self._last_complaint = 0.0

    def submit(self, ops: Ops) -> Future[list[Any]]:
        """Queue `ops`; the future gets the replies of the commands it queued (or the first error)."""
        future: Future[list[Any]] = Future()
        self._put((ops, future, ""))
        return future

    async def run(self, ops: Ops) -> list[Any]:
        """`submit` awaited on an asyncio loop without blocking it. What the loop's coroutines queue in one
        iteration goes to the lane together, and comes back together (`_LoopBatch`)."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(loop)
        if batch is None:
            batch = self._open[loop] = _LoopBatch(loop)
            loop.call_soon(self._put_batch, loop)
        return await batch.add(ops)

    def _put_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._open.pop(loop)
        items = batch.queued()
        if self._thread is None:
            self._put(items[0])
            items = items[1:]
        with self._wakeup:
            self._pending.extend(items)
            self._wakeup.notify()

    def fire(self, ops: Ops, what: str) -> None:
        """Queue a best-effort write (`what` names it in the log if it fails or is dropped)."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            self._complain("write lane full (%d pending, Redis slow or unreachable): dropped %s", len(self._pending),
                           what)
            return
        self._put((ops, None, what))

    def _put(self, item: tuple[Ops, Settles | None, str]) -> None:
        if self._thread is None:
            with self._wakeup:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="redis-write-lane", daemon=True)
                    self._thread.start()
        with self._wakeup:
            self._pending.append(item)
            self._wakeup.notify()

    def _complain(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_complaint >= 5:  # once per 5 s, not once per write, while Redis is away
            self._last_complaint = now
            log.warning(message, *args)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._pending:
                    self._wakeup.wait()
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            self._write(batch)

    def _write(self, batch: list[tuple[Ops, Settles | None, str]]) -> None:
        pipe = self._r.pipeline(transaction=False)
        spans: list[tuple[int, int] | None] = []
        for ops, future, what in batch:
            start = len(pipe.command_stack)
            try:
                ops(pipe)
            except Exception as err:  # a bad write fails alone
                del pipe.command_stack[start:]
                spans.append(None)
                self._settle(future, what, err)
                continue
            spans.append((start, len(pipe.command_stack)))
        try:
            replies = pipe.execute(raise_on_error=False) if pipe.command_stack else []
        except Exception as err:  # the link: every write of the batch fails with it
            for (_, future, what), span in zip(batch, spans, strict=True):
                if span is not None:
                    self._settle(future, what, err)
            return
        self.round_trips += 1
        self.writes += len(batch)
        for (_, future, what), span in zip(batch, spans, strict=True):
            if span is None:
                continue
            mine = replies[span[0]:span[1]]
            error = next((r for r in mine if isinstance(r, Exception)), None)
            self._settle(future, what, error, mine)

    def _settle(self, future: Settles | None, what: str, error: BaseException | None,
                replies: list[Any] | None = None) -> None:
        if future is None:
            if error is not None:
                self._complain("could not write %s to Redis: %s: %s", what, type(error).__name__, error)
            return
        if future.set_running_or_notify_cancel():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(replies or [])


_lock = threading.Lock()
_lane: WriteLane | None = None
_pid: int | None = None


def write_lane() -> WriteLane:
    """The process's lane (a new one after a fork: its thread does not cross processes)."""
    global _lane, _pid
    if _lane is None or _pid != os.getpid():
        with _lock:
            if _lane is None or _pid != os.getpid():
                _lane = WriteLane(get_redis())
                _pid = os.getpid()
    return _lane
