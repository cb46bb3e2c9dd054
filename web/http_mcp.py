"""The `/mcp` Streamable HTTP endpoint (POST / GET / DELETE), on the same sessions, router and queues.

A session's conversation is a `Conversation` whose messages are routed,
by request id, to the HTTP response stream that carried the request (a POST
answered as SSE, or as one JSON body for clients that accept only JSON);
messages that belong to no request (list_changed, log messages) go to the
session's standalone GET stream. Every SSE event is kept in a Redis stream
(`broker/events.py`) so a cut stream resumes with `Last-Event-ID`, on any web
process. Rules follow the SDK's own server transport: 406 without the right
Accept, 415 without JSON, 400 without a session id, 404 for an unknown one,
202 for posts that carry only notifications or responses.

Every request on a session refreshes its TTL in Redis and learns there whether
it still exists: an expired or deleted session is gone on every process (404),
even where this process still holds its conversation. Conversations idle here
for longer than the TTL are evicted by a sweep, so abandoned sessions do not
pile up in memory (before: 20,000 abandoned sessions cost +124 MiB for good).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, stream_with_context
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from werkzeug.exceptions import HTTPException

from broker import keys, outage, wire
from broker.events import ENDED, EventLog, parse_event_id
from broker.metrics import RECORDER
from broker.outage import is_redis_down
from broker.protocol import Conversation, dumps, echoable_id
from broker.security import ANONYMOUS, Principal
from broker.services import BrokerServices
from web.auth import current_principal
from web.errors import error_response
from web.http_modern import handle_modern_post
from web.origin import origin_allowed
from web.services import get_services

log = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
GET_STREAM = "get"
KEEPALIVE_S = 15.0
RETRY_MS = 1000  # SSE `retry:`: how long a client waits before resuming a cut stream (SEP-1699)
JSON_WAIT_S = 3600.0
SWEEP_INTERVAL_S = 30.0  # longest gap between two sweeps for idle conversations (shorter with a short TTL)


def _rpc_error_response(status: int, code: int, message: str, request_id: Any = None, data: Any = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = {"jsonrpc": "2.0", "id": request_id, "error": error}
    response = jsonify(body)
    response.status_code = status
    return response


def answer_key(request: dict[str, Any]) -> str:
    """JSON of the id the answer to `request` carries: its own, or null for an id JSON-RPC does not allow
    (a boolean, a float, an object: the broker cannot echo it), so its POST still ends with that answer."""
    rid = request.get("id")
    return json.dumps(echoable_id(rid))


class HttpConversation:
    """One session in this web process: its protocol state and where each of its messages must go."""

    def __init__(self, services: BrokerServices, events: EventLog, session_id: str | None, scope: str | None,
                 resume: dict[str, Any] | None = None, principal: Principal = ANONYMOUS) -> None:
        self.events = events
        self._routes: dict[str, str] = {}  # JSON of a request id → stream id
        self._tokens: dict[str, str] = {}  # JSON of a progress token → stream id
        self._lock = threading.Lock()
        self.streams: set[str] = {GET_STREAM}
        self.connection = Conversation(services, self.route, session_id, resume=resume, scope=scope,
                                           principal=principal)
        self.session_id = self.connection.session_id
        self.used = time.monotonic()

    def expect(self, stream_id: str, message: dict[str, Any]) -> None:
        with self._lock:
            self.streams.add(stream_id)
            self._routes[answer_key(message)] = stream_id
            params = message.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            token = meta.get("progressToken") if isinstance(meta, dict) else None  # malformed: refused later
            if token is not None:
                self._tokens[json.dumps(token)] = stream_id

    def route(self, message: dict[str, Any], related: Any = None) -> None:
        """The stream a message belongs on: its request's (a response, or anything sent on behalf of a
        request: progress, log messages, the backend's sampling/elicitation requests), else the GET stream."""
        stream_id = GET_STREAM
        with self._lock:
            if "id" in message and ("result" in message or "error" in message):
                stream_id = self._routes.pop(json.dumps(message["id"]), GET_STREAM)
            elif related is not None:
                stream_id = self._routes.get(json.dumps(related), GET_STREAM)
            elif message.get("method") == "notifications/progress":
                token = json.dumps((message.get("params") or {}).get("progressToken"))
                stream_id = self._tokens.get(token, GET_STREAM)
        self.events.append(self.session_id, stream_id, message)


class HttpEndpoint:
    """Flask handlers for one mount point (`/mcp`, or `/servers/<name>/mcp` with a scope)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._conversations: dict[tuple[str, str | None], HttpConversation] = {}
        self._lock = threading.Lock()
        self._events: EventLog | None = None
        self._swept = time.monotonic()

    # ------------------------------------------------------------ shared
    @property
    def services(self) -> BrokerServices:
        return get_services(self.app.config.get("BROKER_CONFIG"))

    @property
    def events(self) -> EventLog:
        if self._events is None:
            self._events = EventLog(self.services.redis)
        return self._events

    def conversation(self, session_id: str, scope: str | None) -> HttpConversation | None:
        """This process's conversation for the session, rebuilt from Redis if another process started it; None
        if the session is unknown, expired, deleted, or another key's. Using it refreshes its TTL."""
        principal = current_principal()
        sessions = self.services.sessions
        self.sweep()
        found = self._conversations.get((session_id, scope))
        if found is None:
            state = sessions.load_owned(session_id, principal.id)
            if state is None:
                return None
            with self._lock:
                found = self._conversations.get((session_id, scope))
                if found is None:
                    found = HttpConversation(self.services, self.events, session_id, scope, resume=state,
                                             principal=principal)
                    self._conversations[(session_id, scope)] = found
        elif found.connection.principal.id != principal.id:
            return None  # a session belongs to the key that opened it
        if not sessions.touch(session_id):  # expired or deleted (maybe on another process): gone here too
            self._evict((session_id, scope), found)
            return None
        found.used = time.monotonic()
        return found

    def _evict(self, key: tuple[str, str | None], conversation: HttpConversation) -> None:
        with self._lock:
            if self._conversations.get(key) is conversation:
                del self._conversations[key]
        conversation.connection.close()

    def sweep(self) -> int:
        """Evict conversations idle on this process for longer than the session TTL (at most every half TTL,
        30 s at most): their session has expired, or lives on where it is used and is rebuilt from Redis if it
        comes back. One with calls in flight stays while its session lives. How many were evicted."""
        ttl = self.services.sessions.ttl_s
        now = time.monotonic()
        if now - self._swept < min(SWEEP_INTERVAL_S, ttl / 2):
            return 0
        self._swept = now
        idle = [(key, c) for key, c in list(self._conversations.items()) if now - c.used > ttl]
        stale = [(key, c) for key, c in idle
                 if not c.connection.in_flight_calls() or not self.services.sessions.exists(key[0])]
        for key, conversation in stale:
            self._evict(key, conversation)
        if stale:
            log.info("evicted %d idle Streamable HTTP conversation(s); %d held", len(stale),
                     len(self._conversations))
        return len(stale)

    def _guard(self, scope: str | None, check_version: bool = True) -> Response | None:
        if scope is not None and scope not in self.services.config.servers:
            return _rpc_error_response(404, INVALID_REQUEST, f"Unknown server {scope!r}")
        allowed = [o.strip() for o in self.app.config.get("ALLOWED_ORIGINS", []) if o.strip()]
        if not origin_allowed(request.headers.get("Origin"), allowed):
            return _rpc_error_response(403, INVALID_REQUEST, "Forbidden: origin not allowed")
        version = request.headers.get(VERSION_HEADER)
        if check_version and version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return _rpc_error_response(400, INVALID_REQUEST, f"Bad Request: unsupported protocol version {version}")
        return None

    def _session_of(self, scope: str | None) -> HttpConversation | Response:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return _rpc_error_response(400, INVALID_REQUEST, "Bad Request: Missing session ID")
        conversation = self.conversation(session_id, scope)
        if conversation is None:
            return _rpc_error_response(404, INVALID_REQUEST, "Not Found: Invalid or expired session ID")
        return conversation

    # ------------------------------------------------------------ POST
    def post(self, scope: str | None = None) -> Response:
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # not a handshake revision: a stateless 2026-07-28 request (the SDK's own rule)
            refused = self._guard(scope, check_version=False)
            return refused if refused is not None else handle_modern_post(self, scope)
        refused = self._guard(scope)
        if refused is not None:
            return refused
        accept = request.headers.get("Accept", "")
        wants_sse, wants_json = "text/event-stream" in accept, "application/json" in accept
        if not wants_json and not wants_sse:
            return _rpc_error_response(406, INVALID_REQUEST,
                                       "Not Acceptable: Client must accept application/json and text/event-stream")
        if not (request.mimetype or "").startswith("application/json"):
            return _rpc_error_response(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be "
                                                              "application/json")
        try:
            body = wire.loads(request.get_data(cache=False) or b"")
        except (ValueError, RecursionError) as err:
            return _rpc_error_response(400, PARSE_ERROR, f"Parse error: {err}")
        messages = body if isinstance(body, list) else [body]
        if not messages or not all(isinstance(m, dict) for m in messages):
            return _rpc_error_response(400, INVALID_REQUEST, "Invalid Request: expected JSON-RPC message(s)")
        limit = self.services.max_batch_messages
        if len(messages) > limit:
            message = f"Invalid Request: a batch of {len(messages)} messages is over the limit of {limit}"
            return _rpc_error_response(400, INVALID_REQUEST, message)
        initializing = any(m.get("method") == "initialize" and "id" in m for m in messages)
        if initializing:
            self.sweep()
            conversation = HttpConversation(self.services, self.events, None, scope, principal=current_principal())
            with self._lock:
                self._conversations[(conversation.session_id, scope)] = conversation
        else:
            found = self._session_of(scope)
            if isinstance(found, Response):
                return found
            conversation = found
        conversation.connection.client_headers = {name.lower(): value for name, value in request.headers.items()}
        requests = [m for m in messages if "method" in m and "id" in m]
        if not requests:
            for message in messages:
                conversation.connection.handle_message(message)
            return self._with_session(Response(status=202), conversation)
        stream_id = f"p{time.time_ns():x}"
        for message in requests:
            conversation.expect(stream_id, message)
        for message in messages:
            conversation.connection.handle_message(message)
        answers = {answer_key(m) for m in requests}
        if wants_sse:
            events = self._sse(conversation, stream_id, "0", answers)
            response = Response(stream_with_context(events), mimetype="text/event-stream",
                                headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"})
        else:
            response = self._json_answers(conversation, stream_id, answers, batch=isinstance(body, list))
        return self._with_session(response, conversation)

    def _json_answers(self, conversation: HttpConversation, stream_id: str, answers: set[str],
                      batch: bool) -> Response:
        collected: list[dict[str, Any]] = []
        after, deadline = "0", time.monotonic() + JSON_WAIT_S
        while answers and time.monotonic() < deadline:
            for entry_id, message in self.events.read(conversation.session_id, stream_id, after, 1000):
                after = entry_id
                if "id" in message and json.dumps(message["id"]) in answers:
                    answers.discard(json.dumps(message["id"]))
                    collected.append(message)
        return Response(dumps(collected if batch else collected[0]), mimetype="application/json")

    def _sse(self, conversation: HttpConversation, stream_id: str, after: str,
             answers: set[str] | None) -> Iterator[str]:
        """Events of one stream as SSE; a POST stream ends when every request it carried is answered.

        It opens with a priming event (SEP-1699): an id naming the current position, empty data and a
        `retry:` interval, so a client whose stream is cut before the first real event can still resume
        it with Last-Event-ID, and knows when to try."""
        session_id = conversation.session_id
        RECORDER.level("mcp_broker_open_sockets", ("sse",), 1)
        try:
            yield f"id: {stream_id}.{after}\nretry: {RETRY_MS}\ndata:\n\n"
            last_sent = time.monotonic()
            while answers is None or answers:
                batch = self.events.read(session_id, stream_id, after, int(KEEPALIVE_S * 1000))
                if not batch and not self.services.redis.exists(keys.session(session_id)):
                    return  # the session ended (deleted or expired) while this stream was quiet
                for entry_id, message in batch:
                    if message is ENDED:
                        return  # the session was deleted: its streams end
                    after = entry_id
                    if answers is not None and "id" in message and ("result" in message or "error" in message):
                        answers.discard(json.dumps(message["id"]))
                    yield f"id: {stream_id}.{entry_id}\nevent: message\ndata: {dumps(message)}\n\n"
                    last_sent = time.monotonic()
                if not batch and time.monotonic() - last_sent >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
        finally:
            RECORDER.level("mcp_broker_open_sockets", ("sse",), -1)

    @staticmethod
    def _with_session(response: Response, conversation: HttpConversation) -> Response:
        response.headers[SESSION_HEADER] = conversation.session_id
        return response

    # ------------------------------------------------------------ GET
    def get(self, scope: str | None = None) -> Response:
        refused = self._guard(scope)
        if refused is not None:
            return refused
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return _rpc_error_response(406, INVALID_REQUEST, "Not Acceptable: Client must accept text/event-stream")
        found = self._session_of(scope)
        if isinstance(found, Response):
            return found
        conversation = found
        last_event = request.headers.get("Last-Event-ID")
        if last_event:
            parsed = parse_event_id(last_event)
            if parsed is None:
                return _rpc_error_response(400, INVALID_REQUEST, f"Bad Request: unknown Last-Event-ID {last_event!r}")
            stream_id, after = parsed
            answers = None if stream_id == GET_STREAM else self._unanswered(conversation, stream_id, after)
            events = self._sse(conversation, stream_id, after, answers)
        else:
            events = self._sse(conversation, GET_STREAM, self.events.last_id(conversation.session_id, GET_STREAM),
                               None)
        response = Response(stream_with_context(events), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"})
        return self._with_session(response, conversation)

    def _unanswered(self, conversation: HttpConversation, stream_id: str, after: str) -> set[str]:
        """Requests of a POST stream still waiting for an answer after `after` (to know when a resumed stream ends)."""
        with conversation._lock:
            pending = {rid for rid, sid in conversation._routes.items() if sid == stream_id}
        for _entry, message in self.events.read(conversation.session_id, stream_id, after, 0):
            if "id" in message and ("result" in message or "error" in message):
                pending.discard(json.dumps(message["id"]))
        return pending

    # ------------------------------------------------------------ DELETE
    def delete(self, scope: str | None = None) -> Response:
        refused = self._guard(scope)
        if refused is not None:
            return refused
        found = self._session_of(scope)
        if isinstance(found, Response):
            return found
        conversation = found
        conversation.connection.close()
        with self._lock:
            self._conversations.pop((conversation.session_id, scope), None)
        self.services.sessions.delete(conversation.session_id)
        self.events.drop_session(conversation.session_id, sorted(conversation.streams))
        return Response(status=200)


def register_http_mcp(app: Flask) -> HttpEndpoint:
    endpoint = HttpEndpoint(app)
    blueprint = Blueprint("mcp_http", __name__)
    for rule, scoped in (("/mcp", False), ("/servers/<scope>/mcp", True)):
        suffix = "scoped" if scoped else "all"
        blueprint.add_url_rule(rule, f"post_{suffix}", endpoint.post, methods=["POST"])
        blueprint.add_url_rule(rule, f"delete_{suffix}", endpoint.delete, methods=["DELETE"])
        # a plain GET (the SSE stream); werkzeug sends WebSocket upgrades of the same path to the WebSocket rule
        blueprint.add_url_rule(rule, f"get_{suffix}", endpoint.get, methods=["GET"])

    @blueprint.errorhandler(Exception)
    def _as_json_rpc(err: Exception) -> Response:
        """Whatever goes wrong, a JSON-RPC client gets a JSON-RPC error, never an HTML page."""
        if isinstance(err, HTTPException):
            return error_response(err)  # e.g. 413: a body over MCP_BROKER_MAX_FRAME_BYTES
        if is_redis_down(err):
            log.warning("%s %s: Redis unreachable: %r", request.method, request.path, err)
            response = _rpc_error_response(503, INTERNAL_ERROR, outage.MESSAGE, data={"reason": outage.CODE})
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _rpc_error_response(500, INTERNAL_ERROR, "Internal error: the broker failed on this request")

    app.register_blueprint(blueprint)
    return endpoint
