"""MCP, the client side of the broker: one JSON-RPC conversation, transport-agnostic.

The broker is ONE MCP server to its client. It answers the handshake, `ping`
and the list methods itself (from the Redis catalog), answers cached tool
results itself, and turns every other request it forwards (`tools/call`,
`resources/read`, `prompts/get`, `completion/complete`) into a queued call
whose answer arrives later, out of order, on the reply hub. A transport
(WebSocket now, Streamable HTTP later) only feeds frames in and takes frames
out. Bad input gets the JSON-RPC error MCP prescribes and the conversation
goes on. The conversation's state lives in Redis (`sessions.py`), so a client
that reconnects anywhere resumes it.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from marshmallow import ValidationError
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
    is_version_at_least,
)

from broker import keys, observe, outage, wire
from broker.admission import Admission, Refused
from broker.cache import BYPASS_META_KEY, READ_RESOURCE, ResultCache
from broker.calls import QUEUE_GRACE_S, Call, call_timeout, cancel_call
from broker.catalog import Catalog, CursorError
from broker.config import BrokerConfig
from broker.leases import LeaseKeeper
from broker.outage import is_redis_down
from broker.outbox import Outbox
from broker.replies import ReplyHub
from broker.request_state import RequestStateRefused, RequestStateSeal, request_binding
from broker.router import Router, UnknownTool
from broker.schemas import (
    CallToolParamsSchema,
    CompleteParamsSchema,
    GetPromptParamsSchema,
    InitializeParamsSchema,
    JSONRPCMessageSchema,
    PaginatedParamsSchema,
    ReadResourceParamsSchema,
    first_error,
)
from broker.security import ANONYMOUS, Principal, RateLimiter
from broker.sessions import SessionStore

log = logging.getLogger(__name__)

SERVER_INFO = {"name": "mcp-broker", "version": "0.1.0"}
SESSION_META_KEY = "io.mcp-broker/sessionId"
TIMEOUT_META_KEY = "io.mcp-broker/timeoutS"  # a client's own time limit for one call (capped by max_timeout_s)
CATALOG_REQUEST_INTERVAL_S = 10.0
TOUCH_INTERVAL_S = 10.0
STATE_REFUSED = ("Invalid params: requestState was not issued by this broker for this request and key, was "
                 "altered, has expired, or was used already")
RESOURCE_NOT_FOUND = -32002
FORWARDED = ("tools/call", "resources/read", "prompts/get", "completion/complete")
# 2026-07-28 (stateless per-request envelope): what the handshake era had that this era removed
REMOVED_IN_MODERN = ("initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")
ENVELOPE_META_PREFIX = "io.modelcontextprotocol/"  # the per-request envelope's `_meta` keys: ours, never forwarded
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
SUBSCRIPTION_ID_META_KEY = "io.modelcontextprotocol/subscriptionId"
LISTEN_FLAGS = {  # subscriptions/listen filter flag → the notification it lets through
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
# results that carry 2026-07-28 cache directives (discover, the lists, resources/read), by their payload key
CACHEABLE_RESULT_KEYS = ("supportedVersions", "tools", "prompts", "resources", "resourceTemplates", "contents")
QUESTION_WINDOW_S = 0.05  # a backend's questions asked together (concurrently) go out in one input_required round
INPUT_KEY_META_KEY = "io.mcp-broker/inputKey"  # a backend's name for its question (the `inputRequests` key)
MISSING_CLIENT_CAPABILITY = -32021  # 2026-07-28: the request needs a capability the client did not declare
LOG_LEVEL_META_KEY = "io.modelcontextprotocol/logLevel"  # 2026-07-28: per-request logging/setLevel
INPUT_RESUMABLE = ("tools/call", "resources/read", "prompts/get")  # may answer `input_required` (2026-07-28)
CATALOG_WAIT_PREFIX = "catalog-wait:"  # stands for a call id while a call waits for its server's catalog

_envelope = JSONRPCMessageSchema()
_call_params = CallToolParamsSchema()
_init_params = InitializeParamsSchema()
_page_params = PaginatedParamsSchema()
_read_params = ReadResourceParamsSchema()
_prompt_params = GetPromptParamsSchema()
_complete_params = CompleteParamsSchema()

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
CLIENT_CAPABILITY_OF = {  # a backend's request → the capability its client must have declared
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def _envelope_version(params: Any) -> str | None:
    """The protocol version a request's 2026-07-28 envelope names, if it names one outside the handshake era."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version not in HANDSHAKE_PROTOCOL_VERSIONS else None


def level_passes(level: Any, threshold: str | None) -> bool:
    """RFC 5424 order: a message passes when it is at least as severe as the client's chosen level."""
    if threshold is None or level not in LOG_LEVELS:
        return True
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


LISTS = {  # list method → (catalog attribute, result key, list_changed notification)
    "tools/list": ("tools", "tools", "notifications/tools/list_changed"),
    "prompts/list": ("prompts", "prompts", "notifications/prompts/list_changed"),
    "resources/list": ("resources", "resources", "notifications/resources/list_changed"),
    "resources/templates/list": ("resource_templates", "resourceTemplates", "notifications/resources/list_changed"),
}


def echoable_id(raw: Any) -> str | int | None:
    """The request id an answer may carry: a string or an integer as sent, else null (JSON-RPC allows
    nothing else, so a boolean, a float or an object cannot be echoed)."""
    if isinstance(raw, str) and wire.lone_surrogate(raw) is not None:
        return None  # not text any transport can carry back (see broker.wire)
    return raw if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None


class RPCError(Exception):
    """A JSON-RPC error to answer the current request with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class _Deferred:
    """Marker: the response will be sent later (a queued call)."""


DEFERRED = _Deferred()


@dataclass
class BrokerServices:
    """What every connection of a web process shares."""

    config: BrokerConfig
    redis: redis.Redis
    catalog: Catalog
    router: Router
    hub: ReplyHub
    outbox: Outbox
    request_catalog: Callable[[str, str], None]
    sessions: SessionStore
    cache: ResultCache
    page_size: int = 500
    limiter: RateLimiter | None = None
    leases: LeaseKeeper | None = None  # per-key calls in flight, across web processes (broker.leases)
    max_frame_bytes: int = 4 * 1024 * 1024
    max_argument_bytes: int = 1024 * 1024
    max_batch_messages: int = 500  # MCP_BROKER_MAX_RPC_BATCH: messages in one JSON-RPC batch (array)
    _last_catalog_request: float = 0.0
    _request_state: RequestStateSeal | None = None
    connections: weakref.WeakSet[ClientConnection] = field(default_factory=weakref.WeakSet)

    def __post_init__(self) -> None:
        # A backend's resources/updated reaches every web process; each tells its own subscribed clients.
        self.hub.extra_channels.append(keys.RESOURCE_UPDATED)
        self.hub.listeners.append(self._on_channel_message)
        # whoever's read finds a change (the catalog-changed message, a caller's once-a-second version check,
        # a call waiting for a server's tools) tells the clients: none misses a list_changed to a race
        self.catalog.on_change = self._lists_changed

    def _on_channel_message(self, channel: str, data: str) -> None:
        if channel != keys.RESOURCE_UPDATED:
            return
        try:
            update = json.loads(data)
            server, uri = str(update["server"]), str(update["uri"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed resource update %.200s", data)
            return
        for connection in list(self.connections):
            connection.resource_updated(server, uri)

    def state_key(self) -> bytes:
        """The key that seals `requestState` tokens: `$MCP_BROKER_STATE_KEY`, else one random key kept in Redis
        (set once), so any web process can open a token another one issued."""
        configured = os.environ.get("MCP_BROKER_STATE_KEY")
        if configured:
            return configured.encode()
        key = f"{keys.PREFIX}:state-key"
        self.redis.set(key, base64.b64encode(os.urandom(32)).decode(), nx=True)
        value = self.redis.get(key)
        return value if isinstance(value, bytes) else str(value).encode()

    def request_state(self) -> RequestStateSeal:
        if self._request_state is None:
            self._request_state = RequestStateSeal(self.redis, self.state_key())
        return self._request_state

    def request_missing_catalogs(self) -> None:
        """Ask workers to (re)publish catalogs that are missing, at most every few seconds."""
        now = time.monotonic()
        if not self.catalog.missing or now - self._last_catalog_request < CATALOG_REQUEST_INTERVAL_S:
            return
        self._last_catalog_request = now
        for server in self.catalog.missing:
            if server in self.config.servers:  # not one a config reload just removed
                self.request_catalog(server, self.config.server(server).queue)

    def on_catalog_changed(self) -> None:
        """A backend's offer changed: reload (clients hear of what moved through `_lists_changed`)."""
        self.catalog.ensure_fresh(force=True)

    def _lists_changed(self, attributes: set[str]) -> None:
        """Tell every connected client which lists moved, off the caller's thread (a request or the hub's
        listener must not wait while thousands of sockets are written to)."""
        notices = sorted({notice for attr, _, notice in LISTS.values() if attr in attributes})

        def tell() -> None:
            for connection in list(self.connections):
                for notice in notices:
                    connection.notify(notice)

        threading.Thread(target=tell, name="list-changed", daemon=True).start()


def dumps(message: Any) -> str:
    """Compact JSON text that is always valid JSON in valid UTF-8 (`broker.wire.dumps`): a lone surrogate is
    written as an ASCII escape, a non-finite number as null."""
    return wire.dumps(message)


def text_emitter(write: Callable[[str], None]) -> Callable[[dict[str, Any], Any], None]:
    """An emit function for a stream transport: one serialised message per write, writes never interleaved."""
    lock = threading.Lock()

    def emit(message: dict[str, Any], _related: Any = None) -> None:
        text = dumps(message)
        with lock:
            write(text)

    return emit


def _invalid(err: ValidationError) -> RPCError:
    return RPCError(INVALID_PARAMS, f"Invalid params: {first_error(err)}")


class ClientConnection:
    """One client's conversation with the broker."""

    def __init__(
        self,
        services: BrokerServices,
        emit: Callable[[dict[str, Any], Any], None],
        session_id: str | None = None,
        resume: dict[str, Any] | None = None,
        scope: str | None = None,
        principal: Principal = ANONYMOUS,
    ) -> None:
        self.services = services
        self.principal = principal
        self._emit = emit  # the transport's (message, related request id): write it, or route it to an HTTP stream
        self.scope = scope  # a per-server endpoint: that one backend, names unprefixed
        self.admission = Admission(services, principal, scope)  # may it, and may it now (broker.admission)
        self.session_id = session_id or uuid.uuid4().hex
        self.protocol_version = LATEST_HANDSHAKE_VERSION
        self.initialized = False
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self._in_flight: dict[Any, str] = {}  # client request id → call id
        self._asked: dict[str, str] = {}  # our id of a server-to-client request → the backend request's id
        self.log_level: str | None = None  # set by logging/setLevel; None = what the backend sends
        self.subscriptions: set[tuple[str, str]] = set()  # (server, backend uri) of resources/subscribe
        self.modern = False  # a 2026-07-28 exchange: envelope per request, no server-to-client requests
        self._questions: dict[Any, list[dict[str, Any]]] = {}  # request id → backend questions of this round
        self._offered: dict[Any, dict[str, Any]] = {}  # request id → inputResponses it brought unasked
        self._listen: dict[str, Any] | None = None  # the subscriptions/listen stream this exchange serves
        self._bindings: dict[Any, dict[str, str]] = {}  # request id → method/target/arguments of a 2026 request
        self._closed = False
        self._touched = time.monotonic()
        self._methods: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
            "initialize": self._initialize,
            "ping": lambda _id, _p: {},
            **{name: functools.partial(self._list, name) for name in LISTS},
            "tools/call": self._tools_call,
            "resources/read": self._resources_read,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "server/discover": self._discover,
            "subscriptions/listen": self._subscriptions_listen,
        }
        self._notifications: dict[str, Callable[[dict[str, Any]], None]] = {
            "notifications/initialized": self._on_initialized,
            "notifications/cancelled": self._on_cancelled,
        }
        self.client_headers: dict[str, str] = {}  # the transport's request headers (lower-case names), for
        # servers that pass some on (`broker.forward_headers`); set by the transport
        self.expired = False  # the session expired or was deleted while this transport was open: it ends
        if resume is not None:
            self._restore(resume)
        else:
            services.sessions.create(self.session_id, self._state())
        self._modern_requests: weakref.WeakValueDictionary[Any, ClientConnection] = weakref.WeakValueDictionary()
        if not self.modern:  # 2026-07-28 hears of list changes only on subscriptions/listen, not served yet
            services.connections.add(self)

    # ------------------------------------------------------------ output
    def send(self, message: dict[str, Any], related: Any = None) -> None:
        if not self._closed:
            self._emit(message, related)

    def notify(self, method: str, params: dict[str, Any] | None = None, related: Any = None) -> None:
        if self.modern and method in (*LISTEN_FLAGS.values(), "notifications/resources/updated"):
            # 2026-07-28: change notifications travel only on a subscriptions/listen stream that asked for them
            if self._listen is None or (method in LISTEN_FLAGS.values() and method not in self._listen["kinds"]):
                return
            params = {**(params or {}), "_meta": {SUBSCRIPTION_ID_META_KEY: self._listen["id"]}}
            related = self._listen["id"]
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})}, related)

    def _respond(self, request_id: Any, result: dict[str, Any]) -> None:
        if self.modern:  # 2026-07-28 results always say what they are, and who answered
            meta = {**(result.get("_meta") or {}), SERVER_INFO_META_KEY: SERVER_INFO}
            result = {**result, "resultType": result.get("resultType") or "complete", "_meta": meta}
            if any(key in result for key in CACHEABLE_RESULT_KEYS):  # required there: never cached unless said
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _error(self, request_id: Any, code: int, message: str, data: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "error": RPCError(code, message, data).to_error()})

    # ------------------------------------------------------------ input
    def handle_text(self, data: str | bytes) -> None:
        """One frame from the client: a JSON-RPC message or a batch (array) of them."""
        if len(data) > self.services.max_frame_bytes:
            self._error(None, INVALID_REQUEST, f"Invalid Request: message of {len(data)} bytes is over the limit of "
                                               f"{self.services.max_frame_bytes} bytes")
            return
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                self._error(None, PARSE_ERROR, "Parse error: frame is not UTF-8 text")
                return
        try:
            decoded = wire.loads(data)
        except (ValueError, RecursionError) as err:
            self._error(None, PARSE_ERROR, f"Parse error: {err}")
            return
        if not self._keep_session_alive():
            self._session_gone(decoded)
            return
        if isinstance(decoded, list):
            if not decoded:
                self._error(None, INVALID_REQUEST, "Invalid Request: empty batch")
            if len(decoded) > self.services.max_batch_messages:
                self._error(None, INVALID_REQUEST, f"Invalid Request: a batch of {len(decoded)} messages is over the "
                                                   f"limit of {self.services.max_batch_messages}")
                return
            for item in decoded:
                self.handle_message(item)
        else:
            self.handle_message(decoded)

    def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            self._error(None, INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")
            return
        if self._refused_unencodable(message):
            return
        try:
            errors = _envelope.validate(message)
        except RecursionError:
            errors = {"_schema": ["message nested too deeply"]}
        if errors:
            raw_id = message.get("id")  # an id the envelope refused is echoed only if JSON-RPC allows it
            request_id = echoable_id(raw_id)
            self._error(request_id, INVALID_REQUEST, f"Invalid Request: {first_error(ValidationError(errors))}")
            return
        method = message.get("method")
        if method is None:
            self._on_client_answer(message)
            return
        params = message.get("params") or {}
        # A 2026-07-28 request on a stream (WebSocket) conversation is served on its own; server/discover is not,
        # so an SDK client in `auto` mode still falls back to the handshake here (a pinned 2026 client works).
        if ("id" in message and method != "server/discover" and not self.modern and not self.initialized
                and _envelope_version(params) is not None):
            self._dispatch_modern(message)
            return
        if "id" not in message:
            handler = self._notifications.get(method)
            if handler is not None:
                try:
                    handler(params)
                except Exception:  # notifications have no reply; never let one kill the connection
                    log.exception("notification %s failed", method)
            return
        self._dispatch(message["id"], method, params)

    def _refused_unencodable(self, message: dict[str, Any]) -> bool:
        """Text no backend can be sent (a lone surrogate, see `broker.wire`) is refused here, for every method
        and transport, before anything looks at it: a request gets -32602 (-32600 outside its params), a
        client's answer to a backend's question reaches that backend as an error, a notification is dropped."""
        where = wire.lone_surrogate(message)
        if where is None:
            return False
        problem = wire.describe_surrogate(where)
        if "method" not in message:  # a client's answer: the backend that asked must not wait for it forever
            if "id" in message:
                self._on_client_answer({"id": message["id"], "error": {"code": INVALID_PARAMS,
                                                                       "message": f"Invalid answer: {problem}"}})
        elif "id" in message:
            code, kind = (INVALID_PARAMS, "Invalid params") if where.startswith("params") else \
                (INVALID_REQUEST, "Invalid Request")
            self._error(echoable_id(message["id"]), code, f"{kind}: {problem}")
        else:
            log.info("dropped notification with unencodable text at %s", where)
        return True

    def _dispatch(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        handler = self._methods.get(method)
        if handler is None or not self._in_era(method):
            self._error(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
            return

        def run() -> Any:
            if method in FORWARDED:
                self.admission.take_rate()
            if self.modern and method in INPUT_RESUMABLE:  # what an `input_required` token will be bound to
                self._bindings[request_id] = request_binding(method, params, self.scope)
            if self.modern and method in INPUT_RESUMABLE and params.get("requestState") is not None:
                return self._resume_with_input(request_id, params)
            if self.modern and isinstance(params.get("inputResponses"), dict):
                self._offered[request_id] = params["inputResponses"]  # answers given before being asked
            return handler(request_id, params)

        self._answer_with(request_id, method, params, run)

    def _answer_with(self, request_id: Any, method: str, params: dict[str, Any], run: Callable[[], Any]) -> None:
        """Run a request's handler and answer it: its result, its RPC error, or an internal error."""
        started = time.perf_counter()
        try:
            try:
                result = run()
            except Refused as refused:  # admission said no: answered with its JSON-RPC error
                raise RPCError(refused.rpc_code or INTERNAL_ERROR, refused.message, refused.rpc_data) from None
        except RPCError as err:
            self.send({"jsonrpc": "2.0", "id": request_id, "error": err.to_error()})
            if method == "tools/call":
                observe.immediate_call(self, params, "rejected", time.perf_counter() - started, err.code)
            return
        except Exception as err:
            if is_redis_down(err):  # not a bug: say so, so the client retries instead of giving up
                log.warning("method %s: Redis unreachable: %r", method, err)
                self._error(request_id, INTERNAL_ERROR, outage.MESSAGE, {"reason": outage.CODE})
                return
            log.exception("method %s failed", method)
            self._error(request_id, INTERNAL_ERROR, f"Internal error: {type(err).__name__}")
            return
        if result is not DEFERRED:
            self._respond(request_id, result)
            if method == "tools/call":  # answered here: from the cache, or arguments refused as an isError result
                outcome = "rejected" if isinstance(result, dict) and result.get("isError") else "cached"
                observe.immediate_call(self, params, outcome, time.perf_counter() - started)

    def _dispatch_modern(self, message: dict[str, Any]) -> None:
        """A 2026-07-28 request on a stream transport (the WebSocket): its envelope names its era, so it is
        served as a stateless exchange of its own, answered on this stream, whatever this connection is."""
        verdict = classify_inbound_request(message, headers=None)
        if isinstance(verdict, InboundLadderRejection):
            self._error(message["id"], verdict.code, verdict.message, verdict.data)
            return
        meta = message["params"]["_meta"]
        state = {"protocolVersion": verdict.protocol_version, "clientInfo": verdict.client_info or {},
                 "capabilities": verdict.client_capabilities if isinstance(verdict.client_capabilities, dict) else {},
                 "initialized": True, "principal": self.principal.id}
        exchange = ClientConnection(self.services, self._emit, resume=state, scope=self.scope,
                                    principal=self.principal)
        exchange.client_headers = self.client_headers
        level = meta.get(LOG_LEVEL_META_KEY)
        exchange.log_level = level if level in LOG_LEVELS else None
        if isinstance(message["id"], (str, int)):
            self._modern_requests[message["id"]] = exchange  # alive while in flight: its callbacks hold it
        exchange.handle_message(message)

    def _in_era(self, method: str) -> bool:
        """server/discover is the 2026-07-28 probe: a handshake-era conversation answers method-not-found, so an
        SDK client in `auto` mode falls back to `initialize`; the stateless era has no handshake, ping, log
        level or resources/subscribe."""
        if method in ("server/discover", "subscriptions/listen"):
            return self.modern
        return not (self.modern and method in REMOVED_IN_MODERN)

    # ------------------------------------------------------------ session
    def _state(self) -> dict[str, Any]:
        return {"protocolVersion": self.protocol_version, "clientInfo": self.client_info,
                "capabilities": self.client_capabilities, "initialized": self.initialized,
                "principal": self.principal.id}

    def _restore(self, state: dict[str, Any]) -> None:
        self.protocol_version = state.get("protocolVersion") or LATEST_HANDSHAKE_VERSION
        self.client_info = state.get("clientInfo") or {}
        self.client_capabilities = state.get("capabilities") or {}
        self.initialized = bool(state.get("initialized"))
        self.subscriptions = {(str(s), str(u)) for s, u in state.get("subscriptions") or []}
        self.modern = self.protocol_version in MODERN_PROTOCOL_VERSIONS

    def _keep_session_alive(self) -> bool:
        """Use refreshes the session's TTL (at most every quarter TTL, so it cannot lapse while in use);
        False if it is gone: expired (an idle socket's frame after the TTL) or deleted on another process."""
        now = time.monotonic()
        if now - self._touched < min(TOUCH_INTERVAL_S, self.services.sessions.ttl_s / 4):
            return True
        self._touched = now
        try:
            return self.services.sessions.touch(self.session_id)
        except outage.REDIS_DOWN:  # the request itself will say Redis is down
            return True

    def _session_gone(self, decoded: Any) -> None:
        """The session ended under this transport: each request of the frame gets an error, and the
        conversation ends (the transport closes). The session is never recreated, so nobody can take it over."""
        message = (f"Session expired: {self.session_id!r} ended after {self.services.sessions.ttl_s} s without "
                   "traffic (or was deleted); initialize a new session")
        requests = [m for m in (decoded if isinstance(decoded, list) else [decoded])
                    if isinstance(m, dict) and "method" in m and "id" in m]
        for request in requests or [{"id": None}]:
            self._error(echoable_id(request["id"]), INVALID_REQUEST, message)
        self.expired = True
        self.close()

    def resume(self) -> int:
        """Deliver what finished while the client was away; keep waiting for the rest. How many were pending.

        The calls are routed here first (workers publish their progress and outcomes on this process's
        channel from now on: the process that queued them may be dead), then the stored outcomes are read;
        one that lands in between is answered once (the hub hands each call's outcome over once)."""
        pending = self.services.sessions.pending(self.session_id)
        if not pending:
            return 0
        call_ids = list(pending)
        hub = self.services.hub
        hub.start()
        wait_s = 0.0
        for call_id, entry in pending.items():
            on_outcome, on_event = self._callbacks(entry["rid"], call_id, entry["method"], entry["server"],
                                                   entry.get("progressToken"))
            self._in_flight[entry["rid"]] = call_id
            spec = self.services.config.servers.get(entry["server"])
            limit = (spec.settings.max_timeout_s if spec is not None else 300.0) * 2 + QUEUE_GRACE_S
            wait_s = max(wait_s, limit)
            hub.expect(call_id, on_outcome, on_event, limit)
        self.services.sessions.route(call_ids, hub.channel, int(wait_s))
        stored = self.services.redis.mget([keys.result(c) for c in call_ids])
        for data in stored:
            if data:
                hub.deliver_local(json.loads(data))
        return len(pending)

    # ------------------------------------------------------------ lifecycle methods
    def _initialize(self, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = _init_params.load(params)
        except ValidationError as err:
            raise _invalid(err) from None
        requested = loaded["protocolVersion"]
        self.protocol_version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        self.client_info = loaded["clientInfo"]
        self.client_capabilities = loaded["capabilities"]
        self.services.sessions.save(self.session_id, self._state())
        result: dict[str, Any] = {
            "protocolVersion": self.protocol_version,
            "capabilities": self._capabilities(),
            "serverInfo": SERVER_INFO,
            "instructions": "mcp-broker: the tools and prompts of several MCP servers, named <server>"
            + self.services.config.separator
            + "<name>; their resources as <server>+<uri>.",
            "_meta": {SESSION_META_KEY: self.session_id},
        }
        if self.scope:
            doc = self.services.catalog.documents.get(self.scope, {})
            result["serverInfo"] = {**SERVER_INFO, "name": f"mcp-broker/{self.scope}"}
            if doc.get("instructions"):
                result["instructions"] = doc["instructions"]
            else:
                result.pop("instructions")
        return result

    def _capabilities(self) -> dict[str, Any]:
        """What the broker offers: everything for the aggregate; a backend's own capabilities on its endpoint
        (a client must not be told of, say, prompts a server does not have)."""
        relayed = {"tools": {"listChanged": True}, "prompts": {"listChanged": True},
                   "resources": {"listChanged": True, "subscribe": True}, "completions": {}, "logging": {}}
        if not self.scope:
            return relayed
        self.services.catalog.ensure_fresh()
        backend = self.services.catalog.documents.get(self.scope, {}).get("capabilities") or {}
        offered = {name: relayed[name] for name in relayed if name in backend}
        if "resources" in offered:  # subscriptions only where the backend has them
            offered["resources"] = {**offered["resources"],
                                    "subscribe": bool((backend.get("resources") or {}).get("subscribe"))}
        return offered

    def _discover(self, _id: Any, _params: dict[str, Any]) -> dict[str, Any]:
        """2026-07-28: what `initialize` told, asked per request. No list_changed or subscribe flags: those
        are delivered on `subscriptions/listen`, which the broker does not serve yet."""
        capabilities = {name: value for name, value in self._capabilities().items() if name != "logging"}
        result: dict[str, Any] = {"supportedVersions": list(MODERN_PROTOCOL_VERSIONS), "capabilities": capabilities}
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        return result

    def _subscriptions_listen(self, request_id: Any, params: dict[str, Any]) -> Any:
        """2026-07-28's standing stream: acknowledged with the honoured filter, then the list changes and
        resource updates it asked for, each tagged with the listen request's id, until the client hangs up.
        Resources are subscribed at their backends like resources/subscribe (fan-in, reference counted)."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise RPCError(INVALID_PARAMS, "Invalid params: notifications must be an object")
        if self._listen is not None:
            raise RPCError(INVALID_REQUEST, "Invalid Request: this exchange already listens")
        honored: dict[str, Any] = {flag: True for flag in LISTEN_FLAGS if wanted.get(flag) is True}
        uris = wanted.get("resourceSubscriptions")
        targets = []
        if isinstance(uris, list) and uris:
            targets = [self._resource_target({"uri": uri}) for uri in uris]  # unknown server: -32002
            honored["resourceSubscriptions"] = list(uris)
        self._listen = {"id": request_id, "kinds": {LISTEN_FLAGS[flag] for flag in honored if flag in LISTEN_FLAGS}}
        self.services.connections.add(self)
        for server, uri in targets:
            self.subscriptions.add((server, uri))
            self._subscribe_backend(server, uri)
        self.notify("notifications/subscriptions/acknowledged",
                    {"notifications": honored, "_meta": {SUBSCRIPTION_ID_META_KEY: request_id}}, related=request_id)
        return DEFERRED  # the stream is the answer: it ends when the client goes

    def _subscribe_backend(self, server: str, uri: str) -> None:
        """Record this exchange as a subscriber and ask the backend (its answer concerns no client request)."""
        subscribers = keys.resource_subscribers(server, uri)
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.sadd(subscribers, self.session_id)
        pipe.expire(subscribers, self.services.sessions.ttl_s)
        pipe.execute()
        self._background(server, "resources/subscribe", {"uri": uri})

    def _background(self, server: str, method: str, params: dict[str, Any]) -> None:
        spec = self.services.config.server(server)
        call_id = uuid.uuid4().hex
        self.services.hub.start()
        self.services.hub.expect(call_id, lambda _outcome: None, None, spec.settings.timeout_s * 2 + QUEUE_GRACE_S)
        self.services.outbox.put(spec.queue, Call(
            call_id, server, method, params=params, reply_to=self.services.hub.channel,
            timeout_s=spec.settings.timeout_s, expires_at=time.time() + spec.settings.timeout_s + QUEUE_GRACE_S,
        ).to_message())

    def _stop_listening(self) -> None:
        """The listen stream ended: leave each resource's subscribers; the last one out unsubscribes the backend."""
        for server, uri in sorted(self.subscriptions):
            subscribers = keys.resource_subscribers(server, uri)
            pipe = self.services.redis.pipeline(transaction=False)
            pipe.srem(subscribers, self.session_id)
            pipe.scard(subscribers)
            _removed, remaining = pipe.execute()
            if not remaining and server in self.services.config.servers:
                self._background(server, "resources/unsubscribe", {"uri": uri})
        self.subscriptions.clear()
        self._listen = None

    def _instructions(self) -> str | None:
        if self.scope:
            return self.services.catalog.documents.get(self.scope, {}).get("instructions") or None
        return ("mcp-broker: the tools and prompts of several MCP servers, named <server>"
                + self.services.config.separator + "<name>; their resources as <server>+<uri>.")

    def _on_initialized(self, _params: dict[str, Any]) -> None:
        self.initialized = True
        self.services.sessions.save(self.session_id, {"initialized": True})

    # ------------------------------------------------------------ lists
    def _list(self, method: str, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
        attribute, result_key, _ = LISTS[method]
        try:
            cursor = _page_params.load(params)["cursor"]
        except ValidationError as err:
            raise _invalid(err) from None
        catalog = self.services.catalog
        catalog.ensure_fresh()
        self.services.request_missing_catalogs()
        items = catalog.server_items(attribute, self.scope) if self.scope else getattr(catalog, attribute)
        items = [item for item in items if self.admission.visible(attribute, item)]
        try:
            page = catalog.page(items, cursor, self.services.page_size)
        except CursorError as err:
            raise RPCError(INVALID_PARAMS, f"Invalid params: {err}") from None
        result: dict[str, Any] = {result_key: page["items"]}
        if "nextCursor" in page:
            result["nextCursor"] = page["nextCursor"]
        return result

    # ------------------------------------------------------------ forwarded requests
    def _tools_call(self, request_id: Any, params: dict[str, Any], waited: bool = False) -> Any:
        try:
            loaded = _call_params.load(params)
        except ValidationError as err:
            raise _invalid(err) from None
        name, arguments, meta = loaded["name"], loaded["arguments"] or {}, loaded["_meta"] or {}
        self.admission.check("tool", name)
        size = wire.encoded_size(arguments)  # bytes, as on /v1 and in batches
        if size > self.services.max_argument_bytes:
            raise RPCError(INVALID_PARAMS, f"Invalid params: arguments of {size} bytes are over the limit of "
                                           f"{self.services.max_argument_bytes} bytes")
        try:
            route = self.services.router.route_tool(self.admission.qualified(name))
        except UnknownTool as err:
            self.services.request_missing_catalogs()
            router = self.services.router
            server = router.unpublished_server(self.admission.qualified(name))
            if server is not None and not waited and not router.broken_reason(server):
                # a configured server still starting: wait for its tools (one known to fail says so at once)
                wait_s = call_timeout(self.services.config.server(server).settings, meta.get(TIMEOUT_META_KEY))
                return self._when_published(request_id, server, wait_s, "tools/call", params,
                                            lambda: self._tools_call(request_id, params, waited=True))
            # on a per-server endpoint the client named the tool unprefixed: say it in its own words
            raise RPCError(INVALID_PARAMS, f"Unknown tool: {name}" if self.scope else str(err)) from None
        problem = route.entry.argument_errors(arguments)
        if problem is not None:
            message = f"Invalid arguments for tool {name}: {problem}"
            if is_version_at_least(self.protocol_version, "2025-11-25"):
                # 2025-11-25 (SEP-1303): input validation errors are tool execution errors the model can read.
                return {"content": [{"type": "text", "text": message}], "isError": True}
            raise RPCError(INVALID_PARAMS, message)
        server, tool = route.entry.server, route.entry.tool
        cache = self.services.cache
        ttl = cache.ttl(server, tool)
        if ttl > 0 and meta.get(BYPASS_META_KEY) is not False:
            hit = cache.lookup(server, tool, arguments)
            if hit is not None:
                return self._client_result("tools/call", server, hit[0])
        elif ttl > 0:
            cache.forget_local(server, tool, arguments)  # the fresh result replaces it; don't serve the old copy
        call = Call(uuid.uuid4().hex, server, "tools/call", tool=tool, arguments=arguments,
                    cache_ttl=ttl if ttl > 0 else None)
        return self._forward(request_id, call, meta)

    def _when_published(self, request_id: Any, server: str, wait_s: float, method: str, params: dict[str, Any],
                        retry: Callable[[], Any]) -> Any:
        """A call to a tool of a configured server whose catalog is not published yet (its worker is starting
        its backend): wait for the catalog, up to the call's own time limit, on a thread of its own (the
        transport keeps reading), then serve the call as if it had just arrived; still missing, it fails
        with the reason. The request id counts as in flight meanwhile (a duplicate id is refused, a cancel
        drops the wait)."""
        if request_id in self._in_flight:
            raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
        marker = f"{CATALOG_WAIT_PREFIX}{uuid.uuid4().hex}"
        self._in_flight[request_id] = marker

        def wait() -> None:
            self.services.catalog.wait_published(server, wait_s)
            if self._closed or self._in_flight.get(request_id) != marker:
                return  # cancelled, or the client went away
            del self._in_flight[request_id]
            self._answer_with(request_id, method, params, retry)

        threading.Thread(target=wait, name="catalog-wait", daemon=True).start()
        return DEFERRED

    def _resources_read(self, request_id: Any, params: dict[str, Any]) -> Any:
        server, uri = self._resource_target(params)
        meta = params.get("_meta") or {}  # checked by the schema in _resource_target
        if meta.get(BYPASS_META_KEY) is not False and params.get("requestState") is None:
            hit = self.services.cache.lookup(server, READ_RESOURCE, {"uri": uri})
            if hit is not None:  # a public result the backend allowed anyone to reuse: what is left of its ttl
                cached, remaining_ms = hit
                return self._client_result("resources/read", server, {**cached, "ttlMs": max(0, remaining_ms)})
        return self._forward(request_id, Call(uuid.uuid4().hex, server, "resources/read", params={"uri": uri}), meta)

    def _prompts_get(self, request_id: Any, params: dict[str, Any]) -> Any:
        try:
            loaded = _prompt_params.load(params)
        except ValidationError as err:
            raise _invalid(err) from None
        self.admission.check("prompt", loaded["name"])
        target = self.services.catalog.lookup_prompt(self.admission.qualified(loaded["name"]))
        if target is None:
            raise RPCError(INVALID_PARAMS, f"Unknown prompt: {loaded['name']}")
        server, name = target
        call = Call(uuid.uuid4().hex, server, "prompts/get",
                    params={"name": name, "arguments": loaded["arguments"] or {}})
        return self._forward(request_id, call, loaded["_meta"] or {})

    def _resource_target(self, params: dict[str, Any]) -> tuple[str, str]:
        """(server, backend uri) of a resources/* request's `uri`."""
        try:
            loaded = _read_params.load(params)
        except ValidationError as err:
            raise _invalid(err) from None
        target = (self.scope, loaded["uri"]) if self.scope else self.services.catalog.split_uri(loaded["uri"])
        if target is None:
            raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {loaded['uri']} (expected <server>+<uri>)",
                           {"uri": loaded["uri"]})
        self.admission.check_server("resources of server", target[0])
        return target

    def _subscribe(self, request_id: Any, params: dict[str, Any]) -> Any:
        """Fan-in: the session is recorded as a subscriber and the backend is asked (subscribing twice to one
        uri is harmless to it), so the backend's resources/updated reaches every subscribed client."""
        server, uri = self._resource_target(params)
        self.subscriptions.add((server, uri))
        self.services.sessions.save(self.session_id, {"subscriptions": sorted(self.subscriptions)})
        subscribers = keys.resource_subscribers(server, uri)
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.sadd(subscribers, self.session_id)
        pipe.expire(subscribers, self.services.sessions.ttl_s)
        pipe.execute()
        return self._forward(request_id, Call(uuid.uuid4().hex, server, "resources/subscribe", params={"uri": uri}), {})

    def _unsubscribe(self, request_id: Any, params: dict[str, Any]) -> Any:
        """The backend is unsubscribed only when its last subscribed session leaves."""
        server, uri = self._resource_target(params)
        self.subscriptions.discard((server, uri))
        self.services.sessions.save(self.session_id, {"subscriptions": sorted(self.subscriptions)})
        subscribers = keys.resource_subscribers(server, uri)
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.srem(subscribers, self.session_id)
        pipe.scard(subscribers)
        _removed, remaining = pipe.execute()
        if remaining:
            return {}
        return self._forward(request_id, Call(uuid.uuid4().hex, server, "resources/unsubscribe", params={"uri": uri}),
                             {})

    def resource_updated(self, server: str, uri: str) -> None:
        """A backend resource changed: tell this client if it subscribed (in its own namespace)."""
        if (server, uri) not in self.subscriptions:
            return
        shown = uri if self.scope else self.services.catalog.namespaced_uri(server, uri)
        self.notify("notifications/resources/updated", {"uri": shown})

    def _complete(self, request_id: Any, params: dict[str, Any]) -> Any:
        try:
            loaded = _complete_params.load(params)
        except ValidationError as err:
            raise _invalid(err) from None
        ref = dict(loaded["ref"])
        if ref.get("type") == "ref/prompt":
            self.admission.check("prompt", str(ref.get("name", "")))
            target = self.services.catalog.lookup_prompt(self.admission.qualified(str(ref.get("name", ""))))
            if target is None:
                raise RPCError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
            server, ref["name"] = target
        elif ref.get("type") == "ref/resource":
            uri = str(ref.get("uri", ""))
            split = (self.scope, uri) if self.scope else self.services.catalog.split_uri(uri)
            if split is None:
                raise RPCError(INVALID_PARAMS, f"Unknown resource template: {ref.get('uri')}")
            self.admission.check_server("resources of server", split[0])
            server, ref["uri"] = split
        else:
            raise RPCError(INVALID_PARAMS, "Invalid params: ref.type must be ref/prompt or ref/resource")
        call = Call(uuid.uuid4().hex, server, "completion/complete",
                    params={"ref": ref, "argument": loaded["argument"], "context": loaded["context"]})
        return self._forward(request_id, call, {})

    def _forward(self, request_id: Any, call: Call, meta: dict[str, Any]) -> Any:
        """Queue a request for its server's workers (`call` says what to ask; here it gets how it travels and
        comes back); the answer is sent when it arrives."""
        if request_id in self._in_flight:
            raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
        spec = self.services.config.server(call.server)
        timeout = call_timeout(spec.settings, meta.get(TIMEOUT_META_KEY))
        progress_token = meta.get("progressToken")
        call_id, method, server = call.call_id, call.method, call.server
        self.admission.hold_slot(call_id, timeout * 2 + QUEUE_GRACE_S + 5)
        call.reply_to = self.services.hub.channel
        call.timeout_s = timeout
        call.expires_at = time.time() + timeout + QUEUE_GRACE_S
        call.progress = progress_token is not None
        call.progress_token = progress_token
        call.session, call.rid, call.key = self.session_id, request_id, self.principal.id
        ours = (TIMEOUT_META_KEY, "progressToken", BYPASS_META_KEY)
        forwarded_meta = {k: v for k, v in meta.items() if k not in ours and not k.startswith(ENVELOPE_META_PREFIX)}
        if forwarded_meta:
            call.meta = forwarded_meta
        if spec.settings.forward_headers:
            wanted = [name.lower() for name in spec.settings.forward_headers]
            call.headers = {name: self.client_headers[name] for name in wanted if name in self.client_headers}
        message = call.to_message()
        on_outcome, on_event = self._callbacks(request_id, call_id, method, server, progress_token)
        hub = self.services.hub
        hub.start()
        self._in_flight[request_id] = call_id
        hub.expect(call_id, on_outcome, on_event, timeout * 2 + QUEUE_GRACE_S + 5, message)
        queue = spec.queue
        if spec.settings.isolation == "per_client":  # to the worker holding this client's backend session
            queue = self.services.router.queue_for(spec, self.session_id)
        self.services.outbox.put(queue, message)
        return DEFERRED

    def _callbacks(
        self, request_id: Any, call_id: str, method: str, server: str, progress_token: Any
    ) -> tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], None]]:
        def on_outcome(message: dict[str, Any]) -> None:
            if self._in_flight.get(request_id) != call_id:
                self._pass_on(call_id, message)  # resumed on another web process, or cancelled
                return
            del self._in_flight[request_id]
            self.admission.release_slot(call_id)
            self._offered.pop(request_id, None)
            if "error" in message:
                self.send({"jsonrpc": "2.0", "id": request_id, "error": message["error"]})
            else:
                self._respond(request_id, self._client_result(method, server, message["result"]))
            self.services.sessions.forget(self.session_id, [call_id])

        def on_event(event: dict[str, Any]) -> None:
            if self.modern and self._in_flight.get(request_id) != call_id:
                self._pass_on(call_id, event)  # a suspended call's progress or next question: where it resumed
                return
            if "progress" in event and progress_token is not None:
                note = event["progress"]
                notification = {"progressToken": progress_token, "progress": note["progress"]}
                if note.get("total") is not None:
                    notification["total"] = note["total"]
                if note.get("message"):
                    notification["message"] = note["message"]
                self.notify("notifications/progress", notification, related=request_id)
            elif "log" in event:
                if self.modern and self.log_level is None:
                    return  # 2026-07-28: no log messages unless the request asked for them (`logLevel`)
                if level_passes(event["log"].get("level"), self.log_level):
                    self.notify("notifications/message", event["log"], related=request_id)
            elif "server_request" in event:
                if self.modern:
                    self._input_required(event["server_request"], request_id, call_id, method, server,
                                         progress_token)
                else:
                    self._ask_client(event["server_request"], request_id)

        return on_outcome, on_event

    def _client_result(self, method: str, server: str, result: dict[str, Any]) -> dict[str, Any]:
        """A backend's result as this client's protocol revision and namespace expect it."""
        if "resultType" in result and not is_version_at_least(self.protocol_version, "2026-07-28"):
            result = {k: v for k, v in result.items() if k != "resultType"}
        if method == "resources/read" and not self.scope:
            catalog = self.services.catalog
            contents = [{**c, "uri": catalog.namespaced_uri(server, c["uri"])} if "uri" in c else c
                        for c in result.get("contents", [])]
            result = {**result, "contents": contents}
        return result

    # ------------------------------------------------------------ backend → client, 2026-07-28
    def _input_required(self, backend_request: dict[str, Any], request_id: Any, call_id: str, method: str,
                        server: str, progress_token: Any) -> None:
        """A handshake-era backend asked the client something mid-call, but a 2026-07-28 client cannot be sent
        requests: the call stays suspended in its worker, and the client's request is answered `input_required`
        with the question and a signed `requestState` naming the suspended call; the client's retry carries
        the answer back (`_resume_with_input`)."""
        bmethod = backend_request["method"]
        needed = CLIENT_CAPABILITY_OF.get(bmethod)
        if needed is None or needed not in self.client_capabilities:
            # the backend hears what a client without it would answer; the client is told what is missing
            message = f"Client does not support {bmethod} (it did not declare the {needed!r} capability)"
            self._answer_backend(keys.answer(backend_request["id"]),
                                 {"error": {"code": METHOD_NOT_FOUND, "message": message}})
            if self._in_flight.get(request_id) == call_id:
                del self._in_flight[request_id]
                self.admission.release_slot(call_id)
                self.services.hub.forget(call_id)
                self._error(request_id, MISSING_CLIENT_CAPABILITY, f"Missing required client capability: {needed}",
                            {"requiredCapabilities": {needed: {}}} if needed else None)
            return
        if self._in_flight.get(request_id) != call_id:
            return  # cancelled, or answered already
        params = dict(backend_request.get("params") or {})
        meta = dict(params.get("_meta") or {})
        key = str(meta.pop(INPUT_KEY_META_KEY, "") or backend_request["id"])
        if meta:
            params["_meta"] = meta
        else:
            params.pop("_meta", None)
        offered = self._offered.get(request_id, {}).get(key)
        if isinstance(offered, dict):  # the request already carried the answer to this question
            self._answer_backend(keys.answer(backend_request["id"]), {"result": offered})
            return
        round_ = self._questions.setdefault(request_id, [])
        round_.append({"key": key, "ask": backend_request["id"], "question": {"method": bmethod, "params": params}})
        if len(round_) == 1:  # questions asked together arrive together: gather them for a moment
            timer = threading.Timer(QUESTION_WINDOW_S, self._ask_round,
                                    (request_id, call_id, method, server, progress_token))
            timer.daemon = True
            timer.start()

    def _ask_round(self, request_id: Any, call_id: str, method: str, server: str, progress_token: Any) -> None:
        """Answer the client's request `input_required` with this round's questions and the signed state."""
        asks = self._questions.pop(request_id, [])
        if not asks or self._in_flight.get(request_id) != call_id:
            return  # cancelled, or answered already
        del self._in_flight[request_id]
        self.admission.release_slot(call_id)  # suspended for the client's answer: its retry takes a slot again
        state = {"call": call_id, "asks": asks, "server": server, "token": progress_token}
        sealed = self.services.request_state().seal(state, self.principal.id, self._bindings.pop(request_id),
                                                    self._ask_timeout(server))
        self._respond(request_id, {"resultType": "input_required", "requestState": sealed,
                                   "inputRequests": {ask["key"]: ask["question"] for ask in asks}})

    def _resume_with_input(self, request_id: Any, params: dict[str, Any]) -> Any:
        """The retry of a request answered `input_required`: hand the client's answer to the suspended call
        and wait for its next question or its result (both come back on this request)."""
        seal = self.services.request_state()
        try:
            state = seal.open(params.get("requestState"), self.principal.id, self._bindings[request_id])
        except RequestStateRefused as err:
            log.warning("requestState refused for key %r: %s", self.principal.id, err)
            raise RPCError(INVALID_PARAMS, STATE_REFUSED) from None
        responses = params.get("inputResponses")
        if responses is not None and not isinstance(responses, dict):
            raise RPCError(INVALID_PARAMS, "Invalid params: inputResponses must be an object")
        answers = {ask["ask"]: (responses or {}).get(ask["key"]) for ask in state["asks"]}
        if not all(isinstance(answer, dict) for answer in answers.values()):  # not all answered: the round stands
            return {"resultType": "input_required", "requestState": params["requestState"],
                    "inputRequests": {ask["key"]: ask["question"] for ask in state["asks"]}}
        if request_id in self._in_flight:
            raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
        try:
            seal.consume(state)  # single use: the answers go to the suspended call once, from one retry
        except RequestStateRefused as err:
            log.warning("requestState refused for key %r: %s", self.principal.id, err)
            raise RPCError(INVALID_PARAMS, STATE_REFUSED) from None
        call_id, server = state["call"], state["server"]
        spec = self.services.config.server(server)
        try:
            self.admission.hold_slot(call_id, spec.settings.max_timeout_s * 2 + QUEUE_GRACE_S)
        except Refused:
            seal.unconsume(state)  # refused for the key's limit, not the token: it may be retried
            raise
        on_outcome, on_event = self._callbacks(request_id, call_id, state["method"], server, state.get("token"))
        hub = self.services.hub
        hub.start()
        self._in_flight[request_id] = call_id
        hub.expect(call_id, on_outcome, on_event, spec.settings.max_timeout_s * 2 + QUEUE_GRACE_S)
        # the worker still answers the process that started the call: it passes them on to this one
        self.services.redis.set(keys.resumed_at(call_id), hub.channel, ex=int(self._ask_timeout(server) * 4) + 60)
        for ask_id, answer in answers.items():
            self._answer_backend(keys.answer(ask_id), {"result": answer})
        return DEFERRED

    def _pass_on(self, call_id: str, message: dict[str, Any]) -> None:
        """A suspended call's event or outcome reached the process that started it, but its client's retry
        was taken by another web process: publish it on that process's channel."""
        if not self.modern:
            return
        target = self.services.redis.get(keys.resumed_at(call_id))
        if isinstance(target, bytes):
            target = target.decode()
        if target and target != self.services.hub.channel:
            self.services.redis.publish(target, dumps(message))

    def _ask_timeout(self, server: str) -> float:
        spec = self.services.config.servers.get(server)
        return spec.settings.timeout_s if spec is not None else 30.0

    # ------------------------------------------------------------ backend → client
    def _ask_client(self, backend_request: dict[str, Any], related: Any) -> None:
        """Relay a backend's sampling/elicitation/roots request; a client without the capability gets the
        error it would have answered itself."""
        method, answer_key = backend_request["method"], keys.answer(backend_request["id"])
        needed = CLIENT_CAPABILITY_OF.get(method)
        if needed is None or needed not in self.client_capabilities:
            error = {"code": METHOD_NOT_FOUND, "message": f"Client does not support {method} "
                                                         f"(it did not declare the {needed!r} capability)"}
            self._answer_backend(answer_key, {"error": error})
            return
        our_id = f"mcpb-{backend_request['id']}"
        self._asked[our_id] = answer_key
        request = {"jsonrpc": "2.0", "id": our_id, "method": method}
        if backend_request.get("params"):
            request["params"] = backend_request["params"]
        self.send(request, related)

    def _on_client_answer(self, message: dict[str, Any]) -> None:
        answer_key = self._asked.pop(message["id"], None) if isinstance(message.get("id"), str) else None
        if answer_key is None:
            return  # an answer to nothing we asked
        self._answer_backend(answer_key, {k: message[k] for k in ("result", "error") if k in message})

    def _answer_backend(self, answer_key: str, answer: dict[str, Any]) -> None:
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.rpush(answer_key, dumps(answer))
        pipe.expire(answer_key, 600)
        pipe.execute()

    def _set_level(self, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise RPCError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        self.log_level = level
        return {}

    def _on_cancelled(self, params: dict[str, Any]) -> None:
        request_id = params.get("requestId")
        exchange = self._modern_requests.get(request_id) if isinstance(request_id, (str, int)) else None
        if exchange is not None:
            exchange._on_cancelled(params)
            return
        call_id = self._in_flight.pop(request_id, None) if isinstance(request_id, (str, int)) else None
        if call_id is None or call_id.startswith(CATALOG_WAIT_PREFIX):
            return  # (a call still waiting for its server's catalog just stops waiting)
        self.admission.release_slot(call_id)
        self.services.hub.forget(call_id)
        self.services.sessions.forget(self.session_id, [call_id])
        cancel_call(self.services.redis, call_id)

    def in_flight_calls(self) -> list[str]:
        """Call ids this conversation still waits for."""
        return [c for c in self._in_flight.values() if not c.startswith(CATALOG_WAIT_PREFIX)]

    # ------------------------------------------------------------ end
    def close(self) -> None:
        """The transport is gone: stop waiting here. The session keeps its calls, so a reconnect resumes them."""
        for exchange in list(self._modern_requests.values()):
            exchange.close()
        if self._listen is not None:
            self._stop_listening()
        self._closed = True
        for call_id in list(self._in_flight.values()):
            self.admission.release_slot_when_answered(call_id)  # it may still run (and the session resume it)
            self.services.hub.forget(call_id)
        self._in_flight.clear()
        self.services.connections.discard(self)
