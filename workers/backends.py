"""Warm MCP client sessions, one per backend server, owned by a worker process.

Opening a session costs ~0.5 s (the server's start-up and the handshake) while
a call over a warm one costs under a millisecond, so a worker opens each
backend once, at first use, and keeps it. The SDK is asyncio; Celery's pool
threads are not, so the process runs ONE event-loop thread (an anyio blocking
portal) that owns every session. Calls run as coroutines on that loop, many
at once over one session (the SDK matches replies by id), bounded per server
by its `concurrency`; each running call has a cancel scope so a client's
cancellation reaches the backend as MCP `notifications/cancelled`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

import anyio
import httpx2
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    CreateMessageResult,
    CreateMessageResultWithTools,
    ElicitResult,
    ErrorData,
    ListRootsResult,
    PromptListChangedNotification,
    PromptReference,
    ResourceListChangedNotification,
    ResourceTemplateReference,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from broker import health as health_store
from broker import keys
from broker.config import BrokerConfig, ConfigError, Endpoint, ServerSpec, expand_all, redact, secret_values
from broker.health import Health
from broker.redisconn import get_redis
from broker.router import ReplicaState, choose_replica, client_key
from broker.writelane import write_lane
from workers.streams import CheckedWriteStream, HeardReadStream, Unsendable

log = logging.getLogger(__name__)

ProgressHook = Callable[[float, float | None, str | None], None]


class CallChannel(Protocol):
    """What a running call can send back to its client, besides its result (implemented in workers/tasks.py)."""

    def progress(self, value: float, total: float | None, message: str | None) -> None: ...

    def log(self, params: dict[str, Any]) -> None: ...

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A server-to-client request (sampling, elicitation, roots); blocks until `{"result"|"error"}`."""
        ...

CatalogHook = Callable[[str], None]  # server name: its catalog must be re-listed
SessionKey = tuple[str, int, str]  # (server, replica, "" for the shared session | client key | header key)
MAINTENANCE_TICK_S = 1.0
PING_LIMIT_S = 10.0  # the most a health ping (or a hang probe) waits for its answer
CLIENT_CHECK_S = 3.0  # how often the upkeep asks Redis which per_client sessions' clients are gone
LIST_CHANGED = (ToolListChangedNotification, ResourceListChangedNotification, PromptListChangedNotification)
FORWARDED_METHODS = ("tools/call", "resources/read", "prompts/get", "completion/complete")


class BackendUnavailable(Exception):
    """The backend could not be reached or its session broke: transient, worth a retry on a fresh session."""


class BackendTimeout(Exception):
    """The backend did not answer within the call's time limit (the call was cancelled on the backend)."""


class SlotWaitTimeout(BackendTimeout):
    """The call's time ran out while it waited for one of the server's `concurrency` slots: the backend
    was busy with other calls, it was never asked (not a failure of the backend)."""

    def __init__(self, server: str, waited: float, slots: int) -> None:
        super().__init__(f"it waited {waited:.3g}s for one of the {slots} call slots of server {server!r} "
                         "(all busy with other calls)")
        self.waited, self.slots = waited, slots


class CallCancelled(Exception):
    """The client cancelled the call while it ran (the backend was told)."""


class BackendRPCError(Exception):
    """The backend answered with a JSON-RPC error: a definite answer, passed to the client as is."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _resolve_command(command: str) -> str:
    """`python` in a config means the broker's own interpreter, where the demo servers' packages are installed."""
    return sys.executable if command in ("python", "python3") else command


def _reason(err: BaseException) -> str:
    """The innermost message of an SDK failure (they arrive wrapped in exception groups)."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, MCPError):
        return err.error.message
    return f"{type(err).__name__}: {err}"


# The SDK starts a stdio server in its own session (no preexec hook), so a SIGKILLed worker would leave it
# running. This launcher, exec'd in place of the server, asks Linux to SIGKILL it when its parent dies
# (PR_SET_PDEATHSIG survives exec), checks the parent did not die already, then becomes the server.
LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): os._exit(1)\n"
    "try: os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e: print(f'cannot run {sys.argv[2]!r}: {e.strerror}', file=sys.stderr); os._exit(127)\n"
)
STDERR_TAIL_LINES = 20
backend_log = logging.getLogger("mcp.backend")


@functools.cache
def _setpriv() -> str | None:
    """util-linux `setpriv --pdeathsig` does what LAUNCHER does in ~1 ms instead of a Python start-up
    (~50 ms here); LAUNCHER remains where it is missing (it also closes the tiny race of a parent dying
    before the signal is armed, which setpriv leaves to the stdin EOF every MCP server honours)."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        usage = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "--pdeathsig" in usage else None


def _die_with_worker(command: str, args: list[str]) -> tuple[str, list[str]]:
    """The command line that runs `command` so that it is SIGKILLed when this worker process dies."""
    if not sys.platform.startswith("linux"):
        return command, args
    setpriv = _setpriv()
    if setpriv is not None:
        return setpriv, ["--pdeathsig", "KILL", "--", command, *args]
    return sys.executable, ["-I", "-S", "-c", LAUNCHER, str(os.getpid()), command, *args]


class StderrPump:
    """A backend's stderr, line by line, into the worker's log as `[server] line`, keeping the last lines
    for the health record (a server that dies at start usually says why there). Every line has the values
    of the server's own `${VAR}`-expanded env redacted first: a backend that prints its token must not put
    it in a log, in Redis or on a page."""

    def __init__(self, label: str, secrets: tuple[str, ...] = ()) -> None:
        self.label = label
        self.secrets = secrets
        read_fd, write_fd = os.pipe()
        self.writer: TextIO = os.fdopen(write_fd, "w")
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.done = threading.Event()
        threading.Thread(target=self._pump, args=(read_fd,), name=f"stderr-{label}", daemon=True).start()

    def _pump(self, read_fd: int) -> None:
        try:
            with os.fdopen(read_fd, "rb") as reader:
                for raw in reader:
                    line = redact(raw.decode("utf-8", "replace").rstrip(), self.secrets)
                    if line:
                        self.tail.append(line)
                        backend_log.info("[%s] %s", self.label, line)
        finally:
            self.done.set()

    def close_writer(self) -> None:
        """Our copy of the write end: once the child has its own, EOF comes when the child exits."""
        with contextlib.suppress(OSError):
            self.writer.close()

    def last_words(self, wait: float = 0.5) -> str:
        """The last lines of stderr (waiting briefly for a dead child's final output)."""
        self.done.wait(wait)
        return " | ".join(list(self.tail)[-5:])


@asynccontextmanager
async def _watched(transport: AbstractAsyncContextManager[Any], pump: StderrPump | None,
                   on_streams: Callable[[Any], None], on_frame: Callable[[], None]) -> AsyncIterator[Any]:
    """A transport whose read stream the session can close from outside: how a handshake that never
    completes (a backend that starts but does not answer) is aborted, with the SDK's own cleanup.
    Its streams are watched (`workers.streams`): each frame read is a sign of life (`on_frame`), and a
    message that cannot be encoded is refused to its sender instead of killing the transport."""
    try:
        async with transport as streams:
            if pump is not None:
                pump.close_writer()
            on_streams(streams[0])
            yield (HeardReadStream(streams[0], on_frame), CheckedWriteStream(streams[1]), *streams[2:])
    finally:
        if pump is not None:
            pump.close_writer()


class EndpointHealth:
    """This worker's view of one backend endpoint (replica), shared by every session to it and
    written to Redis (`broker.health`) when it changes, so the rest of the broker can see it."""

    def __init__(self, server: str, replica: int, endpoint: Endpoint) -> None:
        self.server, self.replica = server, replica
        self.health = Health(endpoint=endpoint.describe())
        self._lock = threading.Lock()
        self._reported = False

    def _write(self) -> None:
        from workers.control import node_name

        self.health.worker = node_name()
        # through the write lane: called on the backend loop too, where a Redis round trip would stall every call;
        # health is advisory, so a write lost to Redis trouble is only logged there
        health = dataclasses.replace(self.health)  # as it is now, not as it is when the lane writes it
        write = functools.partial(health_store.write, server=self.server, replica=self.replica, health=health)
        write_lane().fire(write, f"the health of {self.server}[{self.replica}]")
        self._reported = True

    def failed(self, error: str, stderr: str | None = None, backoff: bool = True) -> None:
        """`error` says what kind of failure (clients may be told); `stderr` (redacted) is for admins only."""
        with self._lock:
            self.health.failed(error, stderr=stderr, backoff=backoff)
            self._write()
        log.warning("backend %s[%d] %s (%d failure(s) in a row): %s", self.server, self.replica, self.health.state,
                    self.health.failures, error)

    def succeeded(self) -> None:
        if self.health.failures == 0 and self._reported:
            return
        with self._lock:
            self.health.succeeded()
            self._write()

    def refresh(self) -> None:
        """Re-write the record (a periodic check), so its `checked_at` shows the view is current."""
        with self._lock:
            self.health.checked_at = time.time()
            self._write()

    def check_backoff(self) -> None:
        """Fail fast while an unhealthy backend waits out its backoff (no restart loop, a clear reason)."""
        left = self.health.backoff_left()
        if left > 0:
            raise BackendUnavailable(
                f"server {self.server!r} is unhealthy ({self.health.failures} failures in a row; "
                f"next start in {left:.0f}s): {self.health.error}")


class BackendSession:
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
        self._slots: anyio.Semaphore | None = None  # created on the loop
        self.running: dict[str, anyio.CancelScope] = {}  # call id → its scope (loop thread only)
        self.channels: dict[str, CallChannel] = {}  # call id → its way back to the client, in start order
        self.generation = 0  # bumped on every (re)start, so a caller knows whether someone already restarted it
        self.restarts = 0
        self.last_heard = time.monotonic()  # when the backend last sent anything (any frame)
        self._in_backend: dict[int, float] = {}  # requests handed to the backend, unanswered: token → sent at
        self._tokens = itertools.count()
        self._silent_timeouts = 0  # calls timed out since the backend last said anything
        self._probing = threading.Lock()  # held while a hang probe (ping) is under way

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

    # ------------------------------------------------------------ backend → client
    def _asking_channel(self) -> CallChannel | None:
        """Whose client a backend's request is for. The wire carries no related request id, so: the call
        running on this session, or with several, the most recently started (exact under per-client isolation)."""
        return next(reversed(self.channels.values()), None)

    async def _relay(self, method: str, params: Any, result_type: Any) -> Any:
        channel = self._asking_channel()
        if channel is None:
            return ErrorData(code=INVALID_REQUEST, message=f"{method}: no client call is running to ask")
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json") if params is not None else {}
        answer = await anyio.to_thread.run_sync(channel.ask, method, payload, self.spec.settings.timeout_s)
        if "error" in answer:
            return ErrorData.model_validate(answer["error"])
        return result_type.model_validate(answer.get("result") or {})

    async def _on_sampling(self, _context: Any, params: Any) -> Any:
        result_type = CreateMessageResultWithTools if getattr(params, "tools", None) else CreateMessageResult
        return await self._relay("sampling/createMessage", params, result_type)

    async def _on_elicitation(self, _context: Any, params: Any) -> Any:
        return await self._relay("elicitation/create", params, ElicitResult)

    async def _on_list_roots(self, _context: Any) -> Any:
        return await self._relay("roots/list", None, ListRootsResult)

    async def _on_log(self, params: Any) -> None:
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json")
        for channel in list(self.channels.values()):  # the calls that may have caused it
            channel.log(payload)

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
            "sampling_callback": self._on_sampling,
            "elicitation_callback": self._on_elicitation,
            "list_roots_callback": self._on_list_roots,
            "logging_callback": self._on_log,
        }
        self._secrets = secret_values({**endpoint.env, **endpoint.headers}) + tuple(
            v for v in self.extra_headers.values() if len(v) >= 4)  # a client's forwarded token, too
        if endpoint.command:
            env = expand_all(endpoint.env, f"server {spec.name}: env")
            command, args = _die_with_worker(_resolve_command(endpoint.command), list(endpoint.args))
            params = StdioServerParameters(command=command, args=args, env=env or None,
                                           cwd=endpoint.cwd or self._base_dir)
            self._pump = StderrPump(self.label, self._secrets)
            return Client(_watched(stdio_client(params, errlog=self._pump.writer), self._pump, self._starting,
                                   self._heard), **options)
        assert endpoint.url is not None
        headers = {**expand_all(endpoint.headers, f"server {spec.name}: header"), **self.extra_headers}
        self._pump = None
        http = streamable_http_client(endpoint.url, http_client=httpx2.AsyncClient(headers=headers)) if headers \
            else streamable_http_client(endpoint.url)
        return Client(_watched(http, None, self._starting, self._heard), **options)

    def _starting(self, read_stream: Any) -> None:
        self._start_stream = read_stream

    def _heard(self) -> None:
        """A frame from the backend (loop thread, per message: keep it cheap)."""
        self.last_heard = time.monotonic()
        self._silent_timeouts = 0

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
                except ConfigError as err:  # a ${VAR} the worker's environment lacks
                    self.health.failed(str(err))
                    raise BackendUnavailable(f"server {self.spec.name!r} cannot start: {err}") from err
                except Exception as err:  # the backend failed to start or to shake hands
                    words = self._pump.last_words() if self._pump is not None else ""
                    reason = redact(_reason(err), self._secrets)  # its stderr goes to admins only
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
            from broker.observe import backend_restart

            backend_restart(self.spec.name)  # mcp_broker_backend_restarts_total
            words = self._pump.last_words(0.2) if self._pump is not None else ""
            self.health.failed(redact(reason, self._secrets), stderr=words or None)
            self.close()

    # ------------------------------------------------------------ hangs
    # A hung backend (SIGSTOPped, deadlocked) breaks no connection: every call on it just timed out, for
    # as long as calls kept coming, and the session read healthy (measured: 52 s under steady traffic).
    # So: a call that times out on the backend is a health failure (an answer resets the count), and
    # `hang_timeouts` such timeouts in a row with no word from the backend, or a backend silent for
    # `timeout_s` with requests outstanding, get the session probed with a ping that takes no call
    # slot. No answer within its limit: the session is restarted; the calls on it fail over to the
    # fresh one (retried within their time limits) and the calls waiting for its slots run there.
    # Measured (tests/test_backend_health.py, timeout_s 3): SIGSTOP to answered on a fresh backend ~6 s.
    def silence(self, now: float) -> float:
        """How long the backend has said nothing while requests were outstanding (0 when none are)."""
        sent = list(self._in_backend.values())  # read from the upkeep thread; a list copy is atomic
        return now - max(self.last_heard, min(sent)) if sent else 0.0

    def suspect(self, reason: str) -> None:
        """Probe this session for a hang, in a thread of its own (any thread; one probe at a time)."""
        if self._client is None or self.spec.settings.hang_timeouts == 0 or not self._probing.acquire(blocking=False):
            return
        threading.Thread(target=self._probe, args=(self.generation, reason), name=f"hang-probe-{self.label}",
                         daemon=True).start()

    def _probe(self, generation: int, reason: str) -> None:
        limit = min(self.spec.settings.timeout_s, PING_LIMIT_S)

        async def send(client: Client) -> Any:
            return await client.send_ping()

        try:
            if self.generation != generation or self._client is None:
                return
            self._portal.call(functools.partial(self._guarded, send, limit, slotted=False, record=False))
            log.info("backend %s: %s, but it answers a ping: slow, not hung", self.label, reason)
        except BackendTimeout:
            self.restart_hung(generation, f"hung: {reason}; a ping (which takes no call slot) went unanswered "
                                          f"within {limit:g}s")
        except (BackendUnavailable, BackendRPCError, CallCancelled) as err:
            log.info("backend %s: hang probe failed: %s", self.label, err)
        finally:
            self._probing.release()

    def restart_hung(self, generation: int, reason: str) -> None:
        """Close a hung session if it is still the one probed; the next call starts a fresh backend at once
        (no start backoff: the backend did start, and calls are waiting)."""
        if self.generation == generation and self._client is not None:
            log.warning("backend %s: restarting hung session (generation %d): %s", self.label, generation, reason)
            self.restarts += 1
            from broker.observe import backend_restart

            backend_restart(self.spec.name)
            self.health.failed(reason, backoff=False)
            self.close()

    async def _timed_out(self, timeout: float) -> None:
        """A request handed to the backend got no answer within `timeout` (loop thread): a health failure
        (an answer to any call resets the count); with no word from the backend since the last such
        timeout, `hang_timeouts` of them in a row get the session probed."""
        self._silent_timeouts += 1
        count = self._silent_timeouts
        quiet = time.monotonic() - self.last_heard
        reason = (f"a call was not answered within {timeout:g}s ({count} in a row with no word from the backend, "
                  f"silent for {quiet:.1f}s)")
        await anyio.to_thread.run_sync(functools.partial(self.health.failed, reason, backoff=False))
        if count >= self.spec.settings.hang_timeouts > 0:
            self.suspect(reason)

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
        `record`: an answer marks the backend healthy (a hang probe's does not: calls may still time out)."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.spec.settings.concurrency)
        client, generation = None, self.generation
        phase, started = "slot", time.monotonic()
        with anyio.CancelScope() as scope:
            if call_id is not None:
                self.running[call_id] = scope
                if channel is not None:
                    self.channels[call_id] = channel
            try:
                self.last_used = started
                with anyio.fail_after(timeout):
                    async with self._slots if slotted else contextlib.nullcontext():
                        phase = "start"
                        client, generation = await self._client_async()
                        phase, token = "backend", next(self._tokens)
                        self._in_backend[token] = time.monotonic()
                        try:
                            answer = await fn(client)
                        finally:
                            self._in_backend.pop(token, None)
                if record:
                    self.health.succeeded()
                return answer
            except TimeoutError as err:
                if phase == "slot":
                    raise SlotWaitTimeout(self.spec.name, time.monotonic() - started,
                                          self.spec.settings.concurrency) from err
                if phase == "backend" and slotted:
                    await self._timed_out(timeout)
                raise BackendTimeout(f"server {self.spec.name!r} did not answer within {timeout:g}s") from err
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
        raise CallCancelled(call_id)  # the scope was cancelled from outside

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        channel: CallChannel | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Run one tool call; the result as its JSON wire dict (camelCase keys)."""

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            # Published right here on the loop thread (one fast PUBLISH): a hop to a thread pool
            # would let two notifications of the same call overtake each other.
            if channel is not None:
                channel.progress(value, total, message)

        async def call(client: Client) -> Any:
            return await client.call_tool(
                tool, arguments, progress_callback=on_progress if progress and channel else None, meta=meta or None
            )

        return _dump(await self._guarded(call, timeout, call_id, channel))

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        meta: dict[str, Any] | None = None,
        channel: CallChannel | None = None,
    ) -> dict[str, Any]:
        """A forwarded request other than tools/call (resources/read, prompts/get, completion/complete)."""

        async def send(client: Client) -> Any:
            if method == "resources/read":
                return await client.read_resource(params["uri"], meta=meta or None)
            if method == "prompts/get":
                return await client.get_prompt(params["name"], params.get("arguments") or None, meta=meta or None)
            if method == "resources/subscribe":
                return await client.subscribe_resource(params["uri"])
            if method == "resources/unsubscribe":
                return await client.unsubscribe_resource(params["uri"])
            if method == "completion/complete":
                ref_data = params["ref"]
                ref: ResourceTemplateReference | PromptReference = (
                    PromptReference.model_validate(ref_data)
                    if ref_data.get("type") == "ref/prompt"
                    else ResourceTemplateReference.model_validate(ref_data)
                )
                return await client.complete(ref, params["argument"], (params.get("context") or {}).get("arguments"))
            raise BackendRPCError(METHOD_NOT_FOUND, f"Method not forwarded: {method}")

        try:
            return _dump(await self._guarded(send, timeout, call_id, channel))
        except (KeyError, TypeError, ValueError) as err:
            raise BackendRPCError(INVALID_PARAMS, f"Invalid params for {method}: {err}") from err

    async def ping(self, timeout: float) -> None:
        """MCP `ping` (opening the session if closed): the health check. A backend that does not answer in
        time is hung: it counts as a failure and is restarted."""
        generation = self.generation

        async def send(client: Client) -> Any:
            return await client.send_ping()

        try:
            await self._guarded(send, timeout, slotted=False)
        except BackendTimeout:
            await anyio.to_thread.run_sync(self.restart_if, generation, f"ping not answered within {timeout:g}s")
            raise

    def cancel(self, call_id: str) -> bool:
        """Cancel a running call (loop thread only); the SDK tells the backend."""
        scope = self.running.get(call_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def list_catalog(self, timeout: float) -> dict[str, Any]:
        """Everything the backend offers, each list walked to its last page."""

        async def walk(client: Client) -> dict[str, Any]:
            caps = client.server_capabilities
            # A session pinned to a 2026 revision adopts it without server/discover, so it knows no
            # capabilities: every list is tried, and one the backend does not serve (-32601) is empty.
            pinned = self.spec.settings.protocol not in ("legacy", "auto")
            out: dict[str, Any] = {"tools": [], "resources": [], "resourceTemplates": [], "prompts": []}
            served: dict[str, Any] = {}
            listings = [("tools", client.list_tools, caps.tools)]
            listings += [("resources", client.list_resources, caps.resources)]
            listings += [("resourceTemplates", client.list_resource_templates, caps.resources)]
            listings += [("prompts", client.list_prompts, caps.prompts)]
            for key, lister, supported in listings:
                if supported is None and not pinned:
                    continue
                cursor: str | None = None
                for _ in range(1000):
                    try:
                        page = await lister(cursor=cursor)
                    except MCPError as err:
                        if pinned and err.code == METHOD_NOT_FOUND:
                            break
                        raise
                    served["resources" if key == "resourceTemplates" else key] = {}
                    attribute = "resource_templates" if key == "resourceTemplates" else key
                    out[key] += [_dump(item) for item in getattr(page, attribute)]
                    cursor = page.next_cursor
                    if not cursor:
                        break
            info = client.session.initialize_result
            out["serverInfo"] = _dump(info.server_info) if info is not None else (
                _dump(client.server_info) if client.server_info is not None else {})
            out["capabilities"] = {**served, **_dump(caps)} if pinned else _dump(caps)
            out["instructions"] = getattr(info, "instructions", None) if info is not None else client.instructions
            return out

        return await self._guarded(walk, timeout)


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
        self._portal_cm = start_blocking_portal(name="mcp-backends")
        self.portal = self._portal_cm.__enter__()  # kept: a collected portal stops its loop
        self._sessions: dict[SessionKey, BackendSession] = {}
        self._health: dict[tuple[str, int], EndpointHealth] = {}
        self._client_replica: dict[tuple[str, str], int] = {}  # (server, client session key) → its replica
        self._lock = threading.Lock()
        self._base_dir = str(Path(config.path).resolve().parent) if config.path else os.getcwd()
        self.served: set[str] = set()  # servers whose queues this process consumes (pinged, eager-started)
        self.listed: set[str] = set()  # servers whose catalog this process has listed (or is listing)
        self._last_check: dict[str, float] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._maintain, name="backend-maintenance", daemon=True).start()

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

    def session_for_call(self, spec: ServerSpec, call: dict[str, Any],
                         exclude: frozenset[int] = frozenset()) -> tuple[BackendSession, bool]:
        """The session a call runs on, and whether it is a one-shot session to close after the call.

        shared: the worker's session to the best replica (one per distinct set of forwarded headers).
        per_client: the client's own session, created on its first call and kept on its replica until that
        replica fails; a call without a client (no session, no batch) gets a one-shot session."""
        headers: dict[str, str] = {}
        if spec.settings.forward_headers and call.get("headers"):
            wanted = {name.lower() for name in spec.settings.forward_headers}
            headers = {k: str(v) for k, v in call["headers"].items() if k.lower() in wanted}
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

    def cancel(self, call_id: str) -> bool:
        """Cancel the call wherever it runs in this process (any thread)."""

        def on_loop() -> bool:
            return any(session.cancel(call_id) for session in list(self._sessions.values()))

        return bool(self.portal.call(on_loop))

    def close(self) -> None:
        self._stop.set()
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()
        try:
            self._portal_cm.__exit__(None, None, None)
        except Exception:
            log.debug("backend pool: error while stopping the event loop", exc_info=True)
