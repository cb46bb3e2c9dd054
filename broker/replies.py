"""The web process's side of result delivery: one Redis listener for all its sockets.

Each web process subscribes once to its own channel; workers publish each
call's outcome there and the hub hands it to the waiting connection by call
id. No thread or connection per waiting call (the notes measured ~2,000 Redis
connections for 1,000 sockets with `AsyncResult.get`). A call whose publish
was missed (pub/sub reconnect) is still found: pending calls older than a few
seconds are looked up in the stored results every tick, so nothing is lost.

Redis restarted: after every (re)subscription the hub checks Redis's epoch (`broker.outage`). Same epoch
(persistence on): the calls keep waiting, their answers come when the workers store them. A new epoch
(restarted without persistence): their queue messages are gone with it, so every call waiting from before
gets an error naming the loss within `LOST_GRACE_S` (a call a worker was running may still answer first),
not a timeout a minute later. A call that times out while Redis is unreachable says so.

Bursts (`burst`, the web's `broker.held` and `observe.lines_together`): the answers handled together share
one Redis round trip for their housekeeping (their sessions forget them) and one call log write. Workers
publish each outcome alone, so at 64 in flight over one WebSocket a burst was ~1.15 answers (0.87 HDELs per
call, bench.web_cpu). So while `hold_at` calls or more wait on this process (loaded, as the outbox's
`coalesce_at`), a burst stays open up to `hold_s` for the answers published meanwhile: each is still handed
to its client the moment it arrives; only the held writes wait, and the burst ends at once when fewer calls
wait. HDELs per call 0.54-0.87 -> 0.3 at 10 ms, and held writes' round trips per call 0.23 (10 ms) -> 0.1
(40 ms) at ~180 calls/s: each costs the web ~110-230 us of CPU on this 2-core VM whatever it carries (a
burst of 1, 4 or 10 forgets, /tmp micro, gevent). A resume on another process within `hold_s` of an answer
may be given that answer again (its session had not forgotten it yet), as one within the round trip could.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from mcp_types import INTERNAL_ERROR, REQUEST_TIMEOUT

from broker import keys, wire
from broker.outage import LOST_CODE, LOST_MESSAGE, Epochs, unavailable_error
from broker.rpc_error import RPCError

log = logging.getLogger(__name__)

OutcomeHandler = Callable[[dict[str, Any]], None]
EventHandler = Callable[[dict[str, Any]], None]  # progress, log, server_request: the whole message
EVENT_KINDS = ("progress", "log", "server_request")

TICK_S = 0.5
POLL_AFTER_S = 3.0
BURST_MAX = 256  # messages handled in one burst at most (then the sweep's turn, and a new burst)
LOST_GRACE_S = 3.0  # after Redis lost its state: how long a call still waits for a worker that ran it


@dataclass
class PendingCall:
    call_id: str
    on_outcome: OutcomeHandler
    on_event: EventHandler | None
    deadline: float
    created: float
    info: dict[str, Any] | None = None  # the queued call, for the observer (metrics, the call's log line)
    server: str = ""
    lost: bool = False  # Redis lost its state while this call waited: it fails at its (shortened) deadline


class ReplyHub:
    """Routes outcomes and progress published by workers to the connections waiting for them."""

    def __init__(self, r: redis.Redis, web_id: str | None = None) -> None:
        self._r = r
        self.web_id = web_id or uuid.uuid4().hex
        self.channel = keys.replies(self.web_id)
        self._pending: dict[str, PendingCall] = {}
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[str, str], None]] = []  # extra channels' messages (channel, data)
        self.extra_channels: list[str] = [keys.CATALOG_CHANGED]
        # (call, outcome message, seconds waited): every answered call of this process passes here once
        self.observer: Callable[[dict[str, Any], dict[str, Any], float], None] | None = None
        self._load: dict[str, int] = {}  # server → calls waited for (those expected with their call as info)
        self.epochs = Epochs(r)  # Redis's state epoch as this process knows it
        self._down_since: float | None = None  # monotonic time the subscription was lost, while it is
        # a context each burst of messages (one, then those already readable) is handled in: the web process's
        # `broker.held`, so the writes of a burst's answers go out in one Redis round trip
        self.burst: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
        # while `hold_at` calls or more wait here, a burst stays open `hold_s` for the messages that come
        # meanwhile (their answers are sent at once; only the burst's held writes wait): see `_run`
        self.hold_s = 0.0
        self.hold_at = 16

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Subscribe (once) and wait until the subscription is live, so no early result is missed."""
        if self._started.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reply-hub", daemon=True)
                self._thread.start()
        if not self._started.wait(10):
            raise redis.ConnectionError("could not subscribe to the reply channel in Redis")

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop listening; with `wait_s`, wait that long for the hub to leave its loop, so an open burst's held
        writes (its sessions' forgets, outcome EXPIREs, call lines) go out before the process exits (a web
        worker's exit: `web.services.stop_services`). Without them, a session resumed on another process would
        be handed answers its client already had."""
        self._stopping = True
        thread = self._thread
        if wait_s > 0 and thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    # ------------------------------------------------------------ API
    def expect(
        self, call_id: str, on_outcome: OutcomeHandler, on_event: EventHandler | None, timeout_s: float,
        info: dict[str, Any] | None = None,
    ) -> None:
        now = time.monotonic()
        server = str(info.get("server", "")) if info is not None else ""
        with self._lock:
            previous = self._pending.get(call_id)
            if previous is not None:
                self._unload(previous)
            self._pending[call_id] = PendingCall(call_id, on_outcome, on_event, now + timeout_s, now, info, server)
            if server:
                self._load[server] = self._load.get(server, 0) + 1

    def load(self, server: str) -> int:
        """Calls of `server` this process waits for: how busy its queue is from here (the outbox's cue)."""
        return self._load.get(server, 0)

    def _pop(self, call_id: str) -> PendingCall | None:
        """Stop waiting for a call (the caller holds the lock)."""
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            self._unload(pending)
        return pending

    def _unload(self, pending: PendingCall) -> None:
        if pending.server:
            self._load[pending.server] -= 1

    def forget(self, call_id: str) -> bool:
        with self._lock:
            return self._pop(call_id) is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------ delivery
    def deliver_local(self, message: dict[str, Any]) -> None:
        """An outcome produced in this process (e.g. the call could not be enqueued)."""
        with self._lock:
            pending = self._pop(message["call_id"])
        if pending is not None:
            self._answer(pending, message)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "message":
            if message["channel"] == self.channel:
                self._dispatch(message["data"])
            else:
                for listener in self.listeners:
                    listener(message["channel"], message["data"])

    def _dispatch(self, data: str) -> None:
        try:
            message = wire.loads(data, strict=False)
            call_id = message["call_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("reply hub: ignoring malformed message %.200s", data)
            return
        if any(kind in message for kind in EVENT_KINDS):
            pending = self._pending.get(call_id)
            if pending is not None and pending.on_event is not None:
                self._safely(pending.on_event, message)
            return
        with self._lock:
            pending = self._pop(call_id)
        if pending is not None:
            self._answer(pending, message)

    def _answer(self, pending: PendingCall, message: dict[str, Any]) -> None:
        self._safely(pending.on_outcome, message)
        if self.observer is not None and pending.info is not None:
            try:
                self.observer(pending.info, message, time.monotonic() - pending.created)
            except Exception:  # observing must never cost a client its answer
                log.debug("reply hub: observer failed", exc_info=True)

    @staticmethod
    def _safely(handler: Callable[[dict[str, Any]], None], arg: dict[str, Any]) -> None:
        try:
            handler(arg)
        except Exception:  # one broken socket must not stop delivery to the others
            log.debug("reply hub: handler failed", exc_info=True)

    def _sweep(self) -> None:
        """Time out overdue calls and pick up results whose publish was missed."""
        now = time.monotonic()
        with self._lock:
            overdue = [p for p in self._pending.values() if p.deadline <= now]
            for p in overdue:
                self._pop(p.call_id)
            stale = [p.call_id for p in self._pending.values() if now - p.created >= POLL_AFTER_S]
        for p in overdue:
            self._answer(p, {"call_id": p.call_id, "error": self._overdue_error(p, now)})
        if stale:
            for data in self._r.mget([keys.result(c) for c in stale]):
                if data:
                    self._dispatch(data)

    def _overdue_error(self, pending: PendingCall, now: float) -> dict[str, Any]:
        if pending.lost:
            return RPCError(INTERNAL_ERROR, LOST_MESSAGE, {"reason": LOST_CODE}).to_error()
        if self._down_since is not None:
            return unavailable_error(f"Request timed out: the broker's Redis has been unreachable for "
                                     f"{now - self._down_since:.0f}s", REQUEST_TIMEOUT).to_error()
        return RPCError(REQUEST_TIMEOUT, "Request timed out waiting for a worker").to_error()

    def _state_lost(self) -> None:
        """Redis came back without the state these calls' messages were in: none will be answered by a
        queued message; a running one may still be, within `LOST_GRACE_S`."""
        deadline = time.monotonic() + LOST_GRACE_S
        since = self._down_since if self._down_since is not None else deadline  # calls sent later are fine
        count = 0
        with self._lock:
            for pending in self._pending.values():
                if pending.created <= since:
                    pending.lost = True
                    pending.deadline = min(pending.deadline, deadline)
                    count += 1
        if count:
            log.error("reply hub: Redis lost its state; %d waiting call(s) fail in %.0fs unless answered",
                      count, LOST_GRACE_S)

    def _run(self) -> None:
        last_sweep = 0.0
        while not self._stopping:
            pubsub = self._r.pubsub()
            try:
                channels = [self.channel, *self.extra_channels]
                pubsub.subscribe(*channels)
                confirmed = 0
                while confirmed < len(channels):
                    ack = pubsub.get_message(timeout=1.0)
                    if ack is not None and ack["type"] == "subscribe":
                        confirmed += 1
                if self.epochs.check() is not None:
                    self._state_lost()
                self._down_since = None
                self._started.set()
                with contextlib.ExitStack() as held:  # the open burst, if any (closed on leaving, whatever happens)
                    opened = 0.0  # monotonic time the open burst began
                    while not self._stopping:
                        left = opened + self.hold_s - time.monotonic()  # of the open burst's hold
                        wait = TICK_S if opened == 0.0 else min(TICK_S, max(0.0, left))  # a stop is seen in TICK_S
                        message = pubsub.get_message(timeout=wait)
                        if message is not None:
                            if opened == 0.0:
                                held.enter_context(self.burst() if self.burst is not None else contextlib.nullcontext())
                                opened = time.monotonic()
                            self._handle(message)
                            holding = self.hold_s > 0 and len(self._pending) >= self.hold_at
                            for _ in range(0 if holding else BURST_MAX):  # those already here, with no wait
                                message = pubsub.get_message(timeout=0)  # (held open: the next wait reads them)
                                if message is None:
                                    break
                                self._handle(message)
                        now = time.monotonic()
                        if opened and (now - opened >= self.hold_s or len(self._pending) < self.hold_at):
                            held.close()  # the burst ends: its held writes go out
                            opened = 0.0
                        if now - last_sweep >= TICK_S:
                            last_sweep = now
                            self._sweep()
            except redis.RedisError:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                log.warning("reply hub: Redis connection lost; resubscribing", exc_info=True)
                time.sleep(0.5)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
