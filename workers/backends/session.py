"""One warm MCP client session to a backend (one replica of a server), owned by a worker process.

Opening a session costs ~0.5 s (the server's start-up and the handshake) while
a call over a warm one costs under a millisecond, so a worker opens each
backend once, at first use, and keeps it. The SDK is asyncio; Celery's pool
threads are not, so the process runs ONE event-loop thread (an anyio blocking
portal, `workers.backends.pool`) that owns every session. Calls run as coroutines on that loop, many
at once over one session (the SDK matches replies by id), bounded per server
by its `concurrency`; each running call has a cancel scope so a client's
cancellation reaches the backend as MCP `notifications/cancelled`.

The session knows no transport kind (`workers.backends.transports` opens the endpoint) and no method
(`workers.backends.methods` says how each forwarded one is performed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NoReturn

import anyio
import httpx2
from anyio.from_thread import BlockingPortal
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    PromptListChangedNotification,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from broker import keys, observe
from broker.calls import TOOLS_CALL
from broker.config import ConfigError, ServerSpec, redact, secret_values
from broker.redisconn import get_redis
from broker.writelane import write_lane
from workers.backends.errors import (
    BackendRPCError,
    BackendTimeout,
    BackendUnavailable,
    CallCancelled,
    CallChannel,
    SlotWaitTimeout,
    innermost_reason,
)
from workers.backends.fastlane import FastLane
from workers.backends.hangs import HangWatch, liveness_probe
from workers.backends.health import EndpointHealth
from workers.backends.listing import list_catalog
from workers.backends.methods import FORWARDED, forward_unchecked
from workers.backends.relay import Relay
from workers.backends.transports import Opening, StderrPump, open_transport, watched
from workers.backends.upstream_tasks import CALL_CHANNEL, UpstreamTasks
from workers.streams import Unsendable

log = logging.getLogger(__name__)

CatalogHook = Callable[[str], None]  # server name: its catalog must be re-listed
LIST_CHANGED = (ToolListChangedNotification, ResourceListChangedNotification, PromptListChangedNotification)


class BackendSession(HangWatch):
    """One backend session (to one replica of a server; shared by the worker's calls, or one client's own
    under per_client isolation): opened lazily, restarted when it breaks, closed when idle."""

    def __init__(
        self,
        spec: ServerSpec,
        portal: BlockingPortal,
        base_dir: str,
        on_catalog_change: CatalogHook | None = None,
        replica: int = 0,
        health: EndpointHealth | None = None,
        client_key: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.replica = replica
        self.endpoint = spec.endpoints[replica]
        self.health = health or EndpointHealth(spec.name, replica, self.endpoint)
        self.client_key = client_key  # whose session this is (per_client), None when shared
        self.extra_headers = dict(extra_headers or {})  # client headers passed through (forward_headers)
        self.listed: set[str] = set()  # servers this process has listed (the pool's set, shared by its sessions)
        self.last_used = time.monotonic()
        self._pump: StderrPump | None = None
        self._secrets: tuple[str, ...] = ()  # what ${VAR} expansion gave this backend: never shown (redact)
        self._start_stream: Any = None  # the read stream of a session being opened (closed to abort it)
        self._start_aborted = False
        self._on_catalog_change = on_catalog_change
        self._portal = portal
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[Client] | None = None
        self._client: Client | None = None
        self._lane = FastLane()  # the open client's path for plain calls (`workers.backends.fastlane`)
        self._slots: asyncio.Semaphore | None = None  # created on the loop
        self.running: dict[str, anyio.CancelScope] = {}  # call id → its scope (loop thread only)
        self._cancelled: set[str] = set()  # running calls `cancel` was called for (loop thread only)
        self.channels: dict[str, CallChannel] = {}  # call id → its way back to the client, in start order
        self.generation = 0  # bumped on every (re)start, so a caller knows whether someone already restarted it
        self.restarts = 0
        super().__init__()  # HangWatch

    # ------------------------------------------------------------ lifecycle
    async def _on_message(self, message: Any) -> None:
        """A backend's list_changed means the catalog must be re-listed (in another thread: listing from
        inside the session's receive loop would wait on itself)."""
        if isinstance(message, LIST_CHANGED) and self._on_catalog_change is not None:
            log.info("backend %s: %s", self.spec.name, message.method)
            threading.Thread(target=self._on_catalog_change, args=(self.spec.name,), daemon=True).start()
        elif isinstance(message, ResourceUpdatedNotification):
            # to every web process (one fast PUBLISH); each tells the clients that subscribed to the uri
            update = json.dumps({"server": self.spec.name, "uri": str(message.params.uri)})
            write_lane().fire(lambda r: r.publish(keys.RESOURCE_UPDATED, update), "a resource update")

    @property
    def label(self) -> str:
        """How logs name this session: the server, its replica when it has several, the client's if own."""
        label = self.spec.name + (f"[{self.replica}]" if len(self.spec.endpoints) > 1 else "")
        return label + (f" client {self.client_key[:12]}" if self.client_key else "")

    @property
    def is_open(self) -> bool:
        return self._client is not None

    def _new_client(self) -> Client:
        spec, endpoint = self.spec, self.endpoint
        options: dict[str, Any] = {
            "mode": spec.settings.protocol,
            "cache": None,
            "message_handler": self._on_message,
            **Relay(self.channels, spec.settings.timeout_s).callbacks(),  # a backend's requests to the client
            # a backend's own tasks (modern era only: the SDK declares the extension there and nowhere else)
            "extensions": [UpstreamTasks(spec.settings.timeout_s)],
        }
        self._secrets = secret_values({**endpoint.env, **endpoint.headers}) + tuple(
            v for v in self.extra_headers.values() if len(v) >= 4)  # a client's forwarded token, too
        opened = open_transport(Opening(spec.name, endpoint, self.label, self._base_dir, self._secrets,
                                        self.extra_headers))
        self._pump, self._lane = opened.pump, FastLane()
        return Client(watched(opened.transport, opened.pump, self._starting, self._heard, self._lane), **options)

    def _starting(self, read_stream: Any) -> None:
        self._start_stream = read_stream

    def _abort_start(self) -> None:
        """The handshake took longer than the server's `timeout_s`: end it (its call has given up)."""
        stream, self._start_aborted = self._start_stream, True
        if stream is not None:
            with contextlib.suppress(Exception):
                self._portal.call(stream.close)

    def open(self) -> Client:
        """The live client, opening the backend if needed (thread-safe; call from a non-loop thread)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self.health.check_backoff()
                self._start_stream, self._start_aborted = None, False
                watchdog = threading.Timer(self.spec.settings.timeout_s, self._abort_start)
                watchdog.daemon = True
                try:
                    cm = self._portal.wrap_async_context_manager(self._new_client())
                    watchdog.start()
                    self._client = cm.__enter__()
                    forward_unchecked(self._client)
                    self._portal.call(self._lane.open, self._client)  # on the loop, as its close
                except ConfigError as err:  # a ${VAR} the worker's environment lacks
                    self.health.failed(str(err))
                    raise BackendUnavailable(f"server {self.spec.name!r} cannot start: {err}") from err
                except Exception as err:  # the backend failed to start or to shake hands
                    words = self._pump.last_words() if self._pump is not None else ""
                    reason = redact(innermost_reason(err), self._secrets)  # its stderr goes to admins only
                    if self._start_aborted:
                        reason = f"no answer to the MCP handshake within {self.spec.settings.timeout_s:g}s"
                    where = self.endpoint.describe()
                    self.health.failed(f"failed to start ({where}): {reason}", stderr=words or None)
                    raise BackendUnavailable(f"server {self.spec.name!r} failed to start: {reason}") from err
                finally:
                    watchdog.cancel()
                self._start_stream = None
                self._cm = cm
                self.generation += 1
                self.last_used = time.monotonic()
                log.info("backend %s: session open (generation %d)", self.label, self.generation)
                self._renew_subscriptions(self._client)
                if self._on_catalog_change is not None and (self.generation > 1 or self.spec.name not in self.listed):
                    # a restarted backend may offer something else now; so may one this process never listed
                    # (its catalog may be older than this backend: workers start backends lazily)
                    self.listed.add(self.spec.name)
                    threading.Thread(target=self._on_catalog_change, args=(self.spec.name,), daemon=True).start()
            return self._client

    def _renew_subscriptions(self, client: Client) -> None:
        """A backend keeps its subscriptions in its own process: a restarted one (or one this worker just
        started) knows none. Every resource that client sessions are still subscribed to (their sets in
        Redis) is subscribed here again, before the first call runs on this session, so no update it
        causes goes unheard. Shared sessions only: a client's own (per_client) session is subscribed by
        that client's requests."""
        resources = client.server_capabilities.resources
        if self.client_key is not None or resources is None or not resources.subscribe:
            return
        r = get_redis()
        prefix = keys.resource_subscribers(self.spec.name, "")
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        uris = [key[len(prefix):] for key in r.scan_iter(match=pattern, count=1000) if r.scard(key)]
        for uri in uris:
            try:
                self._portal.call(self._subscribe, client, uri)
                log.info("backend %s: resubscribed to %s", self.label, uri)
            except Exception as err:  # the subscription is lost, the session is not
                log.warning("backend %s: could not resubscribe to %s: %r", self.label, uri, err)

    async def _subscribe(self, client: Client, uri: str) -> None:
        with anyio.fail_after(self.spec.settings.timeout_s):
            await client.subscribe_resource(uri)

    def close(self) -> None:
        with self._lock:
            cm, self._cm, self._client = self._cm, None, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:  # a dead backend often fails its own shutdown; it is gone either way
                log.debug("backend %s: error while closing", self.spec.name, exc_info=True)

    def restart_if(self, generation: int, reason: str = "session broken") -> None:
        """Close the session if it is still the one that failed (another call may have restarted it)."""
        if self.generation == generation and self._client is not None:
            log.warning("backend %s: restarting broken session (generation %d)", self.label, generation)
            self.restarts += 1
            observe.backend_restart(self.spec.name)  # mcp_broker_backend_restarts_total
            words = self._pump.last_words(0.2) if self._pump is not None else ""
            self.health.failed(redact(reason, self._secrets), stderr=words or None)
            self.close()

    # ------------------------------------------------------------ calls (on the loop)
    async def _client_async(self) -> tuple[Client, int]:
        client = self._client
        if client is None:
            # abandoned when the call's time is up: the start goes on (bounded by its own watchdog)
            client = await anyio.to_thread.run_sync(self.open, abandon_on_cancel=True)
        return client, self.generation

    async def _guarded(
        self,
        fn: Callable[[Client], Any],
        timeout: float,
        call_id: str | None = None,
        channel: CallChannel | None = None,
        slotted: bool = True,
        record: bool = True,
    ) -> Any:
        """Run `fn(client)` within `timeout`, mapping failures to the broker's exception kinds. `slotted`:
        take one of the server's `concurrency` slots (calls do; a health ping must not queue behind them).
        `record`: an answer marks the backend healthy (a hang probe's does not: calls may still time out).
        One cancel scope has the time limit (its deadline) and a client's cancel (`cancel` notes the call):
        a scope in a `fail_after` were two and a generator; the slots are an asyncio semaphore (anyio's
        yields to the loop on each free acquire: one more loop turn a call). With tests/test_call_guard.py's
        stand-in client, 16 calls at a time, min of 7 x 2,000: 28.4 -> 16.8 CPU-us a call (harness included)."""
        slots = self._slots = self._slots or asyncio.Semaphore(self.spec.settings.concurrency)
        client, generation = None, self.generation
        phase, started, by_client = "slot", time.monotonic(), False
        scope = anyio.CancelScope(deadline=anyio.current_time() + timeout)
        with scope:
            if call_id is not None:
                self.running[call_id] = scope
                if channel is not None:
                    self.channels[call_id] = channel
            try:
                self.last_used = started
                if slotted:
                    await slots.acquire()
                try:
                    phase = "start"
                    client, generation = await self._client_async()
                    phase, token = "backend", next(self._tokens)
                    self._in_backend[token] = time.monotonic()
                    try:
                        answer = await fn(client)
                    finally:
                        self._in_backend.pop(token, None)
                finally:
                    if slotted:
                        slots.release()
                if record:
                    self.health.succeeded()
                return answer
            except TimeoutError as err:  # a TimeoutError of `fn` itself (the deadline's is below)
                await self._timeout_in(phase, slotted, timeout, started, err)
            except Unsendable as err:  # this call's own input; nothing was written, the session is fine
                raise BackendRPCError(INVALID_PARAMS, f"Invalid params: the request cannot be encoded for "
                                      f"server {self.spec.name!r}: {err}",
                                      {"server": self.spec.name, "reason": "unencodable"}) from err
            except MCPError as err:
                if err.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                    await anyio.to_thread.run_sync(self.restart_if, generation, err.error.message)
                    message = redact(err.error.message, self._secrets)
                    raise BackendUnavailable(f"server {self.spec.name!r}: {message}") from err
                raise BackendRPCError(err.code, err.error.message, err.error.data) from err
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError,
                    httpx2.TransportError) as err:
                await anyio.to_thread.run_sync(self.restart_if, generation, f"connection lost: {err!r}")
                raise BackendUnavailable(f"server {self.spec.name!r}: connection lost ({err!r})") from err
            finally:
                self.last_used = time.monotonic()
                if call_id is not None:
                    self.running.pop(call_id, None)
                    self.channels.pop(call_id, None)
                    by_client = call_id in self._cancelled
                    self._cancelled.discard(call_id)
        if not by_client and scope.cancelled_caught and anyio.current_time() >= scope.deadline:
            await self._timeout_in(phase, slotted, timeout, started, None)
        raise CallCancelled(call_id)  # the scope was cancelled from outside

    async def _timeout_in(self, phase: str, slotted: bool, timeout: float, started: float,
                          err: BaseException | None) -> NoReturn:
        """Time ran out waiting for a slot (the backend was busy, not at fault), or starting the backend, or
        in it (a health failure, maybe a hang: `HangWatch._timed_out`)."""
        if phase == "slot":
            raise SlotWaitTimeout(self.spec.name, time.monotonic() - started, self.spec.settings.concurrency) from err
        if phase == "backend" and slotted:
            await self._timed_out(timeout)
        raise BackendTimeout(f"server {self.spec.name!r} did not answer within {timeout:g}s") from err

    async def forward(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        channel: CallChannel | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Run one forwarded request (`workers.backends.methods`: tools/call takes `name` and `arguments`);
        the result as its JSON wire dict (camelCase keys)."""
        forwarded = FORWARDED.get(method)
        if forwarded is None:
            raise BackendRPCError(METHOD_NOT_FOUND, f"Method not forwarded: {method}")

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            # Published right here on the loop thread (one fast PUBLISH): a hop to a thread pool
            # would let two notifications of the same call overtake each other.
            if channel is not None:
                channel.progress(value, total, message)

        async def send(client: Client) -> dict[str, Any]:
            if method == TOOLS_CALL and not (progress and channel) and self._lane.serves(client):
                return await self._lane.call_tool(params, meta or None)  # a plain call: past the SDK session
            CALL_CHANNEL.set(channel)  # this call's, for a backend's own task's questions (`upstream_tasks`)
            return forwarded.dump(await forwarded.perform(client, params, meta or None,
                                                          on_progress if progress and channel else None))

        try:
            return await self._guarded(send, timeout, call_id, channel)
        except forwarded.params_errors as err:
            raise BackendRPCError(INVALID_PARAMS, f"Invalid params for {method}: {err}") from err

    async def ping(self, timeout: float) -> None:
        """MCP `ping` (opening the session if closed): the health check. A backend that does not answer in
        time is hung: it counts as a failure and is restarted."""
        generation = self.generation

        try:
            await self._guarded(liveness_probe, timeout, slotted=False)
        except BackendTimeout:
            await anyio.to_thread.run_sync(self.restart_if, generation, f"ping not answered within {timeout:g}s")
            raise

    def cancel(self, call_id: str) -> bool:
        """Cancel a running call (loop thread only); the SDK (or the fast lane) tells the backend."""
        scope = self.running.get(call_id)
        if scope is None:
            return False
        self._cancelled.add(call_id)  # told from a time-out by `_guarded`
        scope.cancel()
        return True
    async def list_catalog(self, timeout: float) -> dict[str, Any]:
        """Everything the backend offers, each list walked to its last page."""

        async def walk(client: Client) -> dict[str, Any]:
            return await list_catalog(client, self.spec.settings.protocol)

        return await self._guarded(walk, timeout)
