"""A worker process's backend sessions and the one event-loop thread that runs them.

Which session a call runs on (shared, one per set of forwarded headers, or a client's own under
per_client isolation; on which replica), and their upkeep in a thread of its own: hang checks, idle and
orphaned sessions closed, health pings.

The loop is uvloop's (`LOOP_OPTIONS`): asyncio's own loop, transports and self-pipe are Python, and the
backends' traffic is many small events (a Streamable HTTP call: a POST's two writes, three reads, a
task per POST, three async generators the SDK leaves to the loop to finalize, each a self-pipe write).
Measured A/B against asyncio's loop, alternating, box at load average 6-10 (CPU-ms per call, median
[range]): `bench.worker_cpu --direct --rounds 2`: stdio 1.06 [0.94-1.18] -> 0.84 [0.76-0.93], Streamable
HTTP 2.16 [2.10-2.22] -> 2.07 [2.00-2.15]; `bench.worker_cpu --rounds 3` (64 in flight, whole stack): the
worker over Streamable HTTP 3.54 [3.32-3.82] -> 2.71 [2.45-3.66], over stdio 1.51 [1.26-1.67] -> 1.46
[1.13-1.47]. Everything on the loop is asyncio API (anyio's asyncio backend, asyncio's subprocesses for
stdio servers, `workers.backends.socketstream`'s protocol), which uvloop implements.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import start_blocking_portal

try:
    import sniffio
except ImportError:  # anyio then asks the running loop itself (no sniffing to save)
    sniffio = None  # type: ignore[assignment]

from broker.calls import Call
from broker.config import BrokerConfig, ServerSpec
from broker.router import ReplicaState, choose_replica, client_key
from workers.backends.errors import BackendRPCError, BackendTimeout, BackendUnavailable, CallCancelled
from workers.backends.hangs import PING_LIMIT_S
from workers.backends.health import EndpointHealth
from workers.backends.session import BackendSession, CatalogHook

log = logging.getLogger(__name__)
T = TypeVar("T")

SessionKey = tuple[str, int, str]  # (server, replica, "" for the shared session | client key | header key)
MAINTENANCE_TICK_S = 1.0
CLIENT_CHECK_S = 3.0  # how often the upkeep asks Redis which per_client sessions' clients are gone

RUNNING_WAIT_S = 10.0  # how long `close` waits for calls still running
RUN_TICK_S = 0.5  # how often `run` hands its caller the turn while it waits (a message's call lines so far)
LOOP_OPTIONS = {"use_uvloop": True}  # anyio's asyncio backend on uvloop's loop (see the module's docstring)


def _declare_asyncio() -> None:
    """Tell sniffio, in the loop's thread, that this thread runs asyncio (`sniffio.thread_local`, there for event
    loops to set). anyio asks it on every primitive (cancel scope, event, memory stream; ~17 times a call, the
    SDK's and ours) and it sniffed each time: a threading.local and a ContextVar lookup, an import, and
    asyncio's `current_task` (Python code on 3.11). The loop's thread runs nothing else; anyio's worker
    threads keep sniffing. Measured: `get_async_backend()` 0.65 -> 0.15 CPU-us (min of 5 x 100,000), 14.7
    times a stdio call (cProfile of the direct path): ~7 us a call; Python function calls a call 803 -> 760."""
    if sniffio is not None:
        sniffio.thread_local.name = "asyncio"


class BackendPool:
    """The process's backend sessions and the one event-loop thread that runs them."""

    def __init__(
        self,
        config: BrokerConfig,
        on_catalog_change: CatalogHook | None = None,
        clients_gone: Callable[[list[str]], set[str]] | None = None,
        on_client_closed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_catalog_change = on_catalog_change
        self._clients_gone = clients_gone  # which clients (sessions, batches) are over (checked by the upkeep)
        self._clients_checked = 0.0
        self._on_client_closed = on_client_closed  # (server, client key): its per_client session was closed
        self._portal_cm = start_blocking_portal(backend_options=LOOP_OPTIONS, name="mcp-backends")
        self.portal = self._portal_cm.__enter__()  # kept: a collected portal stops its loop
        self._loop: asyncio.AbstractEventLoop = self.portal.call(asyncio.get_running_loop)
        self.portal.call(_declare_asyncio)
        self._sessions: dict[SessionKey, BackendSession] = {}
        self._health: dict[tuple[str, int], EndpointHealth] = {}
        self._client_replica: dict[tuple[str, str], int] = {}  # (server, client session key) → its replica
        self._lock = threading.Lock()
        self._base_dir = str(Path(config.path).resolve().parent) if config.path else os.getcwd()
        self.served: set[str] = set()  # servers whose queues this process consumes (pinged, eager-started)
        self.listed: set[str] = set()  # servers whose catalog this process has listed (or is listing)
        self._last_check: dict[str, float] = {}
        self._stop = threading.Event()
        self._running: set[concurrent.futures.Future[Any]] = set()  # messages' calls started by `run`
        threading.Thread(target=self._maintain, name="backend-maintenance", daemon=True).start()

    def run(self, fn: Callable[[], Coroutine[Any, Any, T]], meanwhile: Callable[[], None] | None = None) -> T:
        """`portal.call(fn)` for the hot path (a message's calls, from a Celery pool thread): the coroutine runs
        as a plain asyncio task on the backend loop and this thread waits for it. The portal's own call
        spawns an anyio task in its task group, with a cancel scope and a done-callback on the future:
        measured from a thread (`portal.call` of a trivial coroutine, 3 x 3,000): 97-102 CPU-us a call
        against 43-45 for `run_coroutine_threadsafe`, paid once a message. What the portal's call adds is not
        needed here: nobody cancels the future, and the pool is closed after Celery has stopped running
        tasks (a loop stopped under a running call cancels it, and this raises, as the portal would).
        `meanwhile` is called in this thread every `RUN_TICK_S` the coroutine runs on (a message's call lines
        so far: `observe.Answered`); what it raises is logged, never raised: the calls still run."""
        if self._stop.is_set():
            raise RuntimeError("the backend pool is closed")
        future = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        self._running.add(future)
        try:
            if meanwhile is None:
                return future.result()
            while True:
                try:
                    return future.result(timeout=RUN_TICK_S)
                except TimeoutError:
                    if future.done():  # the coroutine's own TimeoutError
                        raise
                try:
                    meanwhile()
                except Exception:
                    log.exception("backend pool: a message's periodic work failed; its calls go on")
        finally:
            self._running.discard(future)

    # ------------------------------------------------------------ which session
    def endpoint_health(self, server: str, replica: int) -> EndpointHealth:
        found = self._health.get((server, replica))
        if found is None:
            with self._lock:
                found = self._health.get((server, replica))
                if found is None:
                    found = EndpointHealth(server, replica, self.config.server(server).endpoints[replica])
                    self._health[(server, replica)] = found
        return found

    def _get(self, server: str, replica: int, key: str = "", headers: dict[str, str] | None = None,
             client: str | None = None) -> BackendSession:
        found = self._sessions.get((server, replica, key))
        if found is not None:
            return found
        health = self.endpoint_health(server, replica)
        with self._lock:
            if (server, replica, key) not in self._sessions:
                spec = self.config.server(server)
                session = BackendSession(
                    spec, self.portal, self._base_dir, self._on_catalog_change, replica, health, client, headers)
                session.listed = self.listed
                self._sessions[(server, replica, key)] = session
            return self._sessions[(server, replica, key)]

    def session(self, server: str, replica: int | None = None) -> BackendSession:
        """The worker's shared session to `server` (catalog listing, health checks, shared isolation):
        to the given replica, or the best one now."""
        spec = self.config.server(server)
        return self._get(server, self.pick_replica(spec) if replica is None else replica)

    def pick_replica(self, spec: ServerSpec, exclude: frozenset[int] = frozenset()) -> int:
        """The healthiest, least-loaded replica in this worker's view (its own pings and calls)."""
        if len(spec.endpoints) == 1:
            return 0
        load: dict[int, int] = {}
        for (server, replica, _), session in list(self._sessions.items()):
            if server == spec.name:
                load[replica] = load.get(replica, 0) + len(session.running)
        states = []
        for index in range(len(spec.endpoints)):
            health = self.endpoint_health(spec.name, index).health
            states.append(ReplicaState(index, health.healthy, load.get(index, 0), health.backoff_left()))
        return choose_replica(states, exclude)

    def session_for_call(self, spec: ServerSpec, call: Call,
                         exclude: frozenset[int] = frozenset()) -> tuple[BackendSession, bool]:
        """The session a call runs on, and whether it is a one-shot session to close after the call.

        shared: the worker's session to the best replica (one per distinct set of forwarded headers).
        per_client: the client's own session, created on its first call and kept on its replica until that
        replica fails; a call without a client (no session, no batch) gets a one-shot session."""
        headers: dict[str, str] = {}
        if spec.settings.forward_headers and call.headers:
            wanted = {name.lower() for name in spec.settings.forward_headers}
            headers = {k: str(v) for k, v in call.headers.items() if k.lower() in wanted}
        header_key = ("h:" + hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()[:16]
                      if headers else "")
        if spec.settings.isolation != "per_client":
            return self._get(spec.name, self.pick_replica(spec, exclude), header_key, headers), False
        client = client_key(call)
        if client is None:
            replica = self.pick_replica(spec, exclude)
            one_shot = BackendSession(spec, self.portal, self._base_dir, None, replica,
                                      self.endpoint_health(spec.name, replica), "one-shot", headers)
            return one_shot, True
        key = client + (f"|{header_key}" if header_key else "")
        replica = self._client_replica.get((spec.name, key))
        if replica is None or replica in exclude:
            replica = self.pick_replica(spec, exclude)
            self._client_replica[(spec.name, key)] = replica
        if (spec.name, replica, key) not in self._sessions:
            self._make_room(spec)
        return self._get(spec.name, replica, key, headers, client), False

    def _make_room(self, spec: ServerSpec) -> None:
        """A new client's session is about to open: past `max_clients`, the least recently used idle client
        session of the server is closed; with every one busy, the new client must wait (retried) or give up.
        Runs on the loop (no await between the choice and the new session), so two new clients never pick
        the same victim; the victim is closed in a thread (closing goes through the loop)."""
        limit = spec.settings.max_clients
        held = [(key, s) for key, s in list(self._sessions.items()) if key[0] == spec.name and s.client_key]
        if len(held) < limit:
            return
        idle = sorted((s.last_used, key) for key, s in held if not s.running)
        if not idle:
            raise BackendUnavailable(f"server {spec.name!r}: this worker holds max_clients={limit} client "
                                     "sessions, each with a call running")
        for _, victim in idle[: len(held) - limit + 1]:
            session = self._forget_session(victim)
            if session is not None:
                log.info("backend %s: closed to make room (max_clients=%d)", session.label, limit)
                threading.Thread(target=self._close_session, args=(victim, session), daemon=True).start()

    def _forget_session(self, key: SessionKey) -> BackendSession | None:
        with self._lock:
            session = self._sessions.pop(key, None)
            if key[2]:
                self._client_replica.pop((key[0], key[2]), None)
        return session

    def _close_session(self, key: SessionKey, session: BackendSession) -> None:
        session.close()
        if session.client_key and self._on_client_closed is not None:
            with contextlib.suppress(Exception):
                self._on_client_closed(key[0], session.client_key)

    def drop(self, key: SessionKey) -> None:
        """Close and forget a session (any thread but the loop's)."""
        session = self._forget_session(key)
        if session is not None:
            self._close_session(key, session)

    def sessions(self) -> dict[SessionKey, BackendSession]:
        return dict(self._sessions)

    # ------------------------------------------------------------ upkeep (its own thread)
    def _maintain(self) -> None:
        while not self._stop.wait(MAINTENANCE_TICK_S):
            try:
                self._check_hangs()
                self._close_idle_and_orphaned()
                self._check_health()
            except Exception:
                log.warning("backend maintenance failed", exc_info=True)

    def _close_idle_and_orphaned(self) -> None:
        """Per-client sessions whose client is gone, and sessions idle past `idle_s`, are closed (their
        stdio children reaped); an eager server's shared sessions stay."""
        now = time.monotonic()
        gone: set[str] = set()
        clients = sorted({s.client_key for s in list(self._sessions.values()) if s.client_key})
        if clients and self._clients_gone is not None and now - self._clients_checked >= CLIENT_CHECK_S:
            self._clients_checked = now
            gone = self._clients_gone(clients)
        for key, session in list(self._sessions.items()):
            spec = self.config.servers.get(key[0])
            if session.running:
                continue
            if spec is None:  # removed by a reload
                self.drop(key)
                continue
            settings = spec.settings
            if session.client_key in gone:
                log.info("backend %s: the client's session ended; closing", session.label)
                self.drop(key)
            elif settings.idle_s > 0 and session.is_open and now - session.last_used > settings.idle_s and not (
                    settings.eager and not key[2]):
                log.info("backend %s: idle for %.0fs; closing", session.label, now - session.last_used)
                if key[2]:
                    self.drop(key)
                else:
                    session.close()

    def _check_hangs(self) -> None:
        """Every tick: a session whose backend has said nothing for `timeout_s` while requests were
        outstanding is probed (a ping that takes no call slot; see `BackendSession.suspect`)."""
        now = time.monotonic()
        for key, session in list(self._sessions.items()):
            spec = self.config.servers.get(key[0])
            if spec is None or spec.settings.hang_timeouts == 0:
                continue
            silent = session.silence(now)
            if silent >= spec.settings.timeout_s:
                session.suspect(f"no word from the backend for {silent:.0f}s with requests outstanding")

    def _check_health(self) -> None:
        """Every `health_interval_s`: MCP ping of each open shared session; a replica out of rotation is
        probed (started and pinged) once its backoff allows, so it returns when it recovers; an eager
        server is (re)started."""
        now = time.monotonic()
        for server in sorted(self.served):
            spec = self.config.servers.get(server)
            if spec is None:
                continue
            interval = spec.settings.health_interval_s
            if interval <= 0 or now - self._last_check.get(server, 0.0) < interval:
                continue
            self._last_check[server] = now
            for replica in range(len(spec.endpoints)):
                session = self._get(server, replica)
                if session.running:  # busy: a ping could only wait behind its calls (hangs: `_check_hangs`)
                    continue
                health = self.endpoint_health(server, replica)
                probe = (len(spec.endpoints) > 1 and not health.health.healthy) or spec.settings.eager
                if not session.is_open and not (probe and health.health.backoff_left() == 0):
                    continue
                try:
                    self.portal.call(session.ping, min(spec.settings.timeout_s, PING_LIMIT_S))
                    health.refresh()
                except (BackendUnavailable, BackendTimeout, BackendRPCError, CallCancelled) as err:
                    log.info("health check of %s[%d] failed: %s", server, replica, err)

    # ------------------------------------------------------------ reload
    def apply_config(self, config: BrokerConfig) -> None:
        """A reloaded config: sessions of removed or changed servers are closed (changed ones restart on
        their next call, with the new settings); the rest keep running."""
        old = self.config
        self.config = config
        for key in list(self._sessions):
            server = key[0]
            if server not in config.servers or config.servers[server] != old.servers.get(server):
                self.drop(key)
        with self._lock:
            for health_key in list(self._health):
                if health_key[0] not in config.servers or config.servers[health_key[0]] != old.servers.get(
                        health_key[0]):
                    del self._health[health_key]
        self.served &= set(config.servers)
        self.listed &= {name for name in config.servers if config.servers[name] == old.servers.get(name)}

    def cancel(self, *call_ids: str) -> bool:
        """Cancel the calls wherever they run in this process (any thread), all in one step on the loop: none
        of them can take a slot another one frees in between. True if any was found."""

        def on_loop() -> bool:
            sessions = list(self._sessions.values())
            return bool(sum(any(session.cancel(call_id) for session in sessions) for call_id in call_ids))

        return bool(self.portal.call(on_loop))

    def close(self) -> None:
        """Stop: calls still running (`run` outside the portal's task group, which would not wait for them)
        get up to `RUNNING_WAIT_S` to finish and store their outcomes before the loop stops and cancels
        them; a cancelled one's message is redelivered (`workers.tasks.run_calls`), never acked unanswered."""
        self._stop.set()
        concurrent.futures.wait(list(self._running), timeout=RUNNING_WAIT_S)
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()
        try:
            self._portal_cm.__exit__(None, None, None)
        except Exception:
            log.debug("backend pool: error while stopping the event loop", exc_info=True)
