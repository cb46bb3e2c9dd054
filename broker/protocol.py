"""MCP, the client side of the broker: one JSON-RPC conversation, transport-agnostic.

The broker is ONE MCP server to its client. It answers the handshake, `ping`
and the list methods itself (from the Redis catalog) and turns each
`tools/call` into a queued call whose answer arrives later, out of order, on
the reply hub. A transport (WebSocket now, Streamable HTTP later) only feeds
frames in and takes frames out. Bad input gets the JSON-RPC error MCP
prescribes and the conversation goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from marshmallow import ValidationError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, is_version_at_least

from broker import keys
from broker.catalog import Catalog, CursorError
from broker.config import BrokerConfig, BrokerSettings
from broker.outbox import Outbox
from broker.replies import ReplyHub
from broker.router import Router, UnknownTool
from broker.schemas import (
    CallToolParamsSchema,
    InitializeParamsSchema,
    JSONRPCMessageSchema,
    PaginatedParamsSchema,
    first_error,
)

log = logging.getLogger(__name__)

SERVER_INFO = {"name": "mcp-broker", "version": "0.1.0"}
SESSION_META_KEY = "io.mcp-broker/sessionId"
TIMEOUT_META_KEY = "io.mcp-broker/timeoutS"  # a client's own time limit for one call (capped by max_timeout_s)
QUEUE_GRACE_S = 60.0  # how long a call may wait in its queue on top of its own time limit
CATALOG_REQUEST_INTERVAL_S = 10.0

_envelope = JSONRPCMessageSchema()
_call_params = CallToolParamsSchema()
_init_params = InitializeParamsSchema()
_page_params = PaginatedParamsSchema()


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
    page_size: int = 500
    _last_catalog_request: float = 0.0

    def request_missing_catalogs(self) -> None:
        """Ask workers to (re)publish catalogs that are missing, at most every few seconds."""
        now = time.monotonic()
        if not self.catalog.missing or now - self._last_catalog_request < CATALOG_REQUEST_INTERVAL_S:
            return
        self._last_catalog_request = now
        for server in self.catalog.missing:
            self.request_catalog(server, self.config.server(server).queue)


def call_timeout(settings: BrokerSettings, requested: Any) -> float:
    """The server's `timeout_s`, or the client's own limit for this call, capped at `max_timeout_s`."""
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        return float(min(requested, settings.max_timeout_s))
    return settings.timeout_s


def cancel_call(r: redis.Redis, call_id: str) -> None:
    """Mark the call cancelled (a queued copy is skipped) and tell the workers (a running copy is cancelled)."""
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.cancelled(call_id), "1", ex=3600)
    pipe.publish(keys.CANCEL_CHANNEL, call_id)
    pipe.execute()


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class ClientConnection:
    """One client's conversation with the broker."""

    def __init__(self, services: BrokerServices, send: Callable[[str], None]) -> None:
        self.services = services
        self._send_text = send
        self._send_lock = threading.Lock()
        self.session_id = uuid.uuid4().hex
        self.protocol_version = LATEST_HANDSHAKE_VERSION
        self.initialized = False
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self._in_flight: dict[Any, str] = {}  # client request id → call id
        self._closed = False
        self._methods: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
            "initialize": self._initialize,
            "ping": lambda _id, _p: {},
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
        }
        self._notifications: dict[str, Callable[[dict[str, Any]], None]] = {
            "notifications/initialized": self._on_initialized,
            "notifications/cancelled": self._on_cancelled,
        }

    # ------------------------------------------------------------ output
    def send(self, message: dict[str, Any]) -> None:
        if self._closed:
            return
        text = _dumps(message)
        with self._send_lock:
            self._send_text(text)

    def _respond(self, request_id: Any, result: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _error(self, request_id: Any, code: int, message: str, data: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "error": RPCError(code, message, data).to_error()})

    # ------------------------------------------------------------ input
    def handle_text(self, data: str | bytes) -> None:
        """One frame from the client: a JSON-RPC message or a batch (array) of them."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                self._error(None, PARSE_ERROR, "Parse error: frame is not UTF-8 text")
                return
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError) as err:
            self._error(None, PARSE_ERROR, f"Parse error: {err}")
            return
        if isinstance(decoded, list):
            if not decoded:
                self._error(None, INVALID_REQUEST, "Invalid Request: empty batch")
            for item in decoded:
                self.handle_message(item)
        else:
            self.handle_message(decoded)

    def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            self._error(None, INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")
            return
        try:
            errors = _envelope.validate(message)
        except RecursionError:
            errors = {"_schema": ["message nested too deeply"]}
        if errors:
            request_id = message.get("id") if isinstance(message.get("id"), (str, int)) else None
            self._error(request_id, INVALID_REQUEST, f"Invalid Request: {first_error(ValidationError(errors))}")
            return
        method = message.get("method")
        if method is None:
            return  # a response to a server-to-client request; none are sent yet
        params = message.get("params") or {}
        if "id" not in message:
            handler = self._notifications.get(method)
            if handler is not None:
                try:
                    handler(params)
                except Exception:  # notifications have no reply; never let one kill the connection
                    log.exception("notification %s failed", method)
            return
        self._dispatch(message["id"], method, params)

    def _dispatch(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        handler = self._methods.get(method)
        if handler is None:
            self._error(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
            return
        try:
            result = handler(request_id, params)
        except RPCError as err:
            self.send({"jsonrpc": "2.0", "id": request_id, "error": err.to_error()})
            return
        except Exception as err:
            log.exception("method %s failed", method)
            self._error(request_id, INTERNAL_ERROR, f"Internal error: {type(err).__name__}")
            return
        if result is not DEFERRED:
            self._respond(request_id, result)

    # ------------------------------------------------------------ lifecycle methods
    def _initialize(self, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = _init_params.load(params)
        except ValidationError as err:
            raise RPCError(INVALID_PARAMS, f"Invalid params: {first_error(err)}") from None
        requested = loaded["protocolVersion"]
        self.protocol_version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        self.client_info = loaded["clientInfo"]
        self.client_capabilities = loaded["capabilities"]
        return {
            "protocolVersion": self.protocol_version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
            "instructions": "mcp-broker: the tools of several MCP servers, named <server>"
            + self.services.config.separator
            + "<tool>.",
            "_meta": {SESSION_META_KEY: self.session_id},
        }

    def _on_initialized(self, _params: dict[str, Any]) -> None:
        self.initialized = True

    # ------------------------------------------------------------ tools
    def _tools_list(self, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
        try:
            cursor = _page_params.load(params)["cursor"]
        except ValidationError as err:
            raise RPCError(INVALID_PARAMS, f"Invalid params: {first_error(err)}") from None
        catalog = self.services.catalog
        catalog.ensure_fresh()
        self.services.request_missing_catalogs()
        try:
            page = catalog.page(catalog.tools, cursor, self.services.page_size)
        except CursorError as err:
            raise RPCError(INVALID_PARAMS, f"Invalid params: {err}") from None
        result: dict[str, Any] = {"tools": page["items"]}
        if "nextCursor" in page:
            result["nextCursor"] = page["nextCursor"]
        return result

    def _tools_call(self, request_id: Any, params: dict[str, Any]) -> Any:
        try:
            loaded = _call_params.load(params)
        except ValidationError as err:
            raise RPCError(INVALID_PARAMS, f"Invalid params: {first_error(err)}") from None
        name, arguments, meta = loaded["name"], loaded["arguments"] or {}, loaded["_meta"] or {}
        try:
            route = self.services.router.route_tool(name)
        except UnknownTool as err:
            self.services.request_missing_catalogs()
            raise RPCError(INVALID_PARAMS, str(err)) from None
        problem = route.entry.argument_errors(arguments)
        if problem is not None:
            message = f"Invalid arguments for tool {name}: {problem}"
            if is_version_at_least(self.protocol_version, "2025-11-25"):
                # 2025-11-25 (SEP-1303): input validation errors are tool execution errors the model can read.
                return {"content": [{"type": "text", "text": message}], "isError": True}
            raise RPCError(INVALID_PARAMS, message)
        if request_id in self._in_flight:
            raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")

        timeout = call_timeout(route.spec.settings, meta.get(TIMEOUT_META_KEY))
        progress_token = meta.get("progressToken")
        call_id = uuid.uuid4().hex
        now = time.time()
        call = {
            "call_id": call_id,
            "server": route.entry.server,
            "tool": route.entry.tool,
            "arguments": arguments,
            "reply_to": self.services.hub.channel,
            "timeout_s": timeout,
            "expires_at": now + timeout + QUEUE_GRACE_S,
            "progress": progress_token is not None,
            "session": self.session_id,
        }
        forwarded_meta = {k: v for k, v in meta.items() if k not in (TIMEOUT_META_KEY, "progressToken")}
        if forwarded_meta:
            call["meta"] = forwarded_meta

        def on_outcome(message: dict[str, Any]) -> None:
            self._in_flight.pop(request_id, None)
            if "error" in message:
                self.send({"jsonrpc": "2.0", "id": request_id, "error": message["error"]})
            else:
                self._respond(request_id, self._client_result(message["result"]))

        def on_progress(note: dict[str, Any]) -> None:
            notification = {"progressToken": progress_token, "progress": note["progress"]}
            if note.get("total") is not None:
                notification["total"] = note["total"]
            if note.get("message"):
                notification["message"] = note["message"]
            self.send({"jsonrpc": "2.0", "method": "notifications/progress", "params": notification})

        hub = self.services.hub
        hub.start()
        self._in_flight[request_id] = call_id
        hub.expect(call_id, on_outcome, on_progress if progress_token is not None else None,
                   timeout * 2 + QUEUE_GRACE_S + 5)
        self.services.outbox.put(route.queue, call)
        return DEFERRED

    def _client_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A backend's result as this client's protocol revision expects it."""
        if "resultType" in result and not is_version_at_least(self.protocol_version, "2026-07-28"):
            result = {k: v for k, v in result.items() if k != "resultType"}
        return result

    def _on_cancelled(self, params: dict[str, Any]) -> None:
        request_id = params.get("requestId")
        call_id = self._in_flight.pop(request_id, None) if isinstance(request_id, (str, int)) else None
        if call_id is None:
            return
        self.services.hub.forget(call_id)
        cancel_call(self.services.redis, call_id)

    # ------------------------------------------------------------ end
    def close(self) -> None:
        """The transport is gone: stop waiting for this connection's calls (their results stay stored)."""
        self._closed = True
        for call_id in list(self._in_flight.values()):
            self.services.hub.forget(call_id)
        self._in_flight.clear()
