"""The handshake era over Streamable HTTP (POST / GET / DELETE on `/mcp`), on the same sessions, router and queues.

A session's conversation is a `Conversation` whose messages are routed,
by request id, to the HTTP response stream that carried the request (a POST
answered as SSE, or as one JSON body for clients that accept only JSON);
messages that belong to no request (list_changed, log messages) go to the
session's standalone GET stream. Every SSE event is kept in a Redis stream
(`broker/events.py`) so a cut stream resumes with `Last-Event-ID`, on any web
process; a POST's live response takes its events in-process as they are
written (`web/transports/post_stream.py`), not back from Redis. Rules follow the SDK's own server
transport: 406 without the right Accept, 415 without JSON, 400 without a
session id, 404 for an unknown one, 202 for posts that carry only
notifications or responses.

Every request on a session refreshes its TTL in Redis and learns there whether
it still exists: an expired or deleted session is gone on every process (404),
even where this process still holds its conversation. Conversations idle here
for longer than the TTL are evicted by a sweep, so abandoned sessions do not
pile up in memory (before: 20,000 abandoned sessions cost +124 MiB for good).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request
from mcp.server.streamable_http import CONTENT_TYPE_JSON
from mcp_types import INVALID_REQUEST

from broker import keys
from broker.calls import cancel_calls
from broker.events import ENDED, EventLog, parse_event_id
from broker.protocol import Conversation, RPCError, dumps, echoable_id
from broker.security import ANONYMOUS, Principal
from broker.services import BrokerServices
from web.auth import current_principal, is_callers, owned_session
from web.transports.common import (
    KEEPALIVE_EVENT,
    KEEPALIVE_S,
    SESSION_HEADER,
    JsonPost,
    accepts_event_stream,
    client_headers,
    empty_response,
    open_socket,
    read_json_post,
    requested_catalog_mode,
    requested_results,
    rpc_error_response,
    sse_event,
    sse_response,
)
from web.transports.post_stream import LIVE_MAX, Events, PostStream

log = logging.getLogger(__name__)

GET_STREAM = "get"
RETRY_MS = 1000  # SSE `retry:`: how long a client waits before resuming a cut stream (SEP-1699)
JSON_WAIT_S = 3600.0
SWEEP_INTERVAL_S = 30.0  # longest gap between two sweeps for idle conversations (shorter with a short TTL)


def answer_key(request: dict[str, Any]) -> str:
    """JSON of the id the answer to `request` carries: its own, or null for an id JSON-RPC does not allow
    (a boolean, a float, an object: the broker cannot echo it), so its POST still ends with that answer."""
    rid = request.get("id")
    return json.dumps(echoable_id(rid))


def is_response(message: dict[str, Any]) -> bool:
    return "id" in message and ("result" in message or "error" in message)


class HttpSession:
    """One session in this web process: its conversation and where each of its messages must go."""

    def __init__(self, services: BrokerServices, events: EventLog, session_id: str | None, scope: str | None,
                 resume: dict[str, Any] | None = None, principal: Principal = ANONYMOUS) -> None:
        self.events = events
        self._routes: dict[str, str] = {}  # JSON of a request id → stream id
        self._tokens: dict[str, str] = {}  # JSON of a progress token → stream id
        self._lock = threading.Lock()
        self._appending = threading.Lock()  # an event's write and its hand-over, in the order of the stream
        self._live: dict[str, Events] = {}  # POST stream → its response
        self.streams: set[str] = {GET_STREAM}
        self.conversation = Conversation(services, self.route, session_id, resume=resume, scope=scope,
                                         principal=principal)
        self.session_id = self.conversation.session_id
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
        stream_id, answered = GET_STREAM, None
        with self._lock:
            if is_response(message):
                answered = json.dumps(message["id"])
                stream_id = self._routes.get(answered, GET_STREAM)
            elif related is not None:
                stream_id = self._routes.get(json.dumps(related), GET_STREAM)
            elif message.get("method") == "notifications/progress":
                token = json.dumps((message.get("params") or {}).get("progressToken"))
                stream_id = self._tokens.get(token, GET_STREAM)
        with self._appending:
            entry_id = self.events.append(self.session_id, stream_id, message)  # at once, never held: see
            live = self._live.get(stream_id)  # EventLog.append; then handed to its response on this process
            if live is not None:
                try:
                    live.put_nowait((entry_id, message))
                except queue.Full:  # its response reads slowly: it reads on from Redis, which has them all
                    with self._lock:
                        self._live.pop(stream_id, None)
        if answered is not None:  # only now, with the answer in its stream: a request is always in one of
            with self._lock:  # the two for a resume with Last-Event-ID (`HandshakeEndpoint._unanswered`)
                if self._routes.get(answered) == stream_id:
                    del self._routes[answered]

    def listen(self, stream_id: str) -> Events:
        """Every event written to `stream_id` from now on, also handed over here (see `PostStream`)."""
        live: Events = queue.Queue(maxsize=LIVE_MAX)
        with self._lock:
            self._live[stream_id] = live
        return live

    def unlisten(self, stream_id: str) -> None:
        with self._lock:
            self._live.pop(stream_id, None)

    def end_streams(self) -> None:
        """The session ended on this process: its listening responses end (other readers see the end mark
        `EventLog.drop_session` writes)."""
        with self._lock:
            live = list(self._live.values())
        for events in live:  # never waits: a full one's reader goes on from Redis, where the end is marked
            with contextlib.suppress(queue.Full):
                events.put_nowait(("", ENDED))

    def unanswered(self, stream_id: str) -> set[str]:
        """Requests this session routed to `stream_id` whose answers have not been routed yet."""
        with self._lock:
            return {rid for rid, sid in self._routes.items() if sid == stream_id}


class HandshakeEndpoint:
    """The handshake era's handlers for both mount points (`/mcp`, or `/servers/<name>/mcp` with a scope)."""

    def __init__(self, services: Callable[[], BrokerServices]) -> None:
        self._services = services
        self._sessions: dict[tuple[str, str | None], HttpSession] = {}
        self._lock = threading.Lock()
        self._events: EventLog | None = None
        self._swept = time.monotonic()

    # ------------------------------------------------------------ shared
    @property
    def services(self) -> BrokerServices:
        return self._services()

    @property
    def events(self) -> EventLog:
        if self._events is None:
            self._events = EventLog(self.services.redis)
        return self._events

    def session(self, session_id: str, scope: str | None) -> HttpSession | None:
        """This process's session, rebuilt from Redis if another process started it; None if the session is
        unknown, expired, deleted, or another key's. Using it refreshes its TTL."""
        sessions = self.services.sessions
        self.sweep()
        found = self._sessions.get((session_id, scope))
        if found is None:
            state = owned_session(self.services, session_id)
            if state is None:
                return None
            with self._lock:
                found = self._sessions.get((session_id, scope))
                if found is None:
                    found = HttpSession(self.services, self.events, session_id, scope, resume=state,
                                        principal=current_principal())
                    self._sessions[(session_id, scope)] = found
        elif not is_callers(found.conversation):
            return None  # a session belongs to the key that opened it
        if not sessions.touch(session_id):  # expired or deleted (maybe on another process): gone here too
            self._evict((session_id, scope), found)
            return None
        found.used = time.monotonic()
        return found

    def _evict(self, key: tuple[str, str | None], session: HttpSession) -> None:
        with self._lock:
            if self._sessions.get(key) is session:
                del self._sessions[key]
        session.conversation.close()

    def sweep(self) -> int:
        """Evict conversations idle on this process for longer than the session TTL (at most every half TTL,
        30 s at most): their session has expired, or lives on where it is used and is rebuilt from Redis if it
        comes back. One with calls in flight stays while its session lives. How many were evicted."""
        ttl = self.services.sessions.ttl_s
        now = time.monotonic()
        if now - self._swept < min(SWEEP_INTERVAL_S, ttl / 2):
            return 0
        self._swept = now
        idle = [(key, s) for key, s in list(self._sessions.items()) if now - s.used > ttl]
        stale = [(key, s) for key, s in idle
                 if not s.conversation.in_flight_calls() or not self.services.sessions.exists(key[0])]
        for key, session in stale:
            self._evict(key, session)
        if stale:
            log.info("evicted %d idle Streamable HTTP conversation(s); %d held", len(stale), len(self._sessions))
        return len(stale)

    def _new_session(self, scope: str | None) -> HttpSession:
        self.sweep()
        session = HttpSession(self.services, self.events, None, scope, principal=current_principal())
        with self._lock:
            self._sessions[(session.session_id, scope)] = session
        return session

    def _session_of_request(self, scope: str | None) -> HttpSession | Response:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return rpc_error_response(400, RPCError(INVALID_REQUEST, "Bad Request: Missing session ID"))
        session = self.session(session_id, scope)
        if session is None:
            return rpc_error_response(404, RPCError(INVALID_REQUEST, "Not Found: Invalid or expired session ID"))
        return session

    @staticmethod
    def _with_session(response: Response, session: HttpSession) -> Response:
        response.headers[SESSION_HEADER] = session.session_id
        return response

    # ------------------------------------------------------------ POST
    def post(self, scope: str | None) -> Response:
        read = read_json_post("Not Acceptable: Client must accept application/json and text/event-stream")
        if isinstance(read, Response):
            return read
        messages = read.body if isinstance(read.body, list) else [read.body]
        if not messages or not all(isinstance(m, dict) for m in messages):
            return rpc_error_response(400, RPCError(INVALID_REQUEST, "Invalid Request: expected JSON-RPC message(s)"))
        limit = self.services.max_batch_messages
        if len(messages) > limit:
            message = f"Invalid Request: a batch of {len(messages)} messages is over the limit of {limit}"
            return rpc_error_response(400, RPCError(INVALID_REQUEST, message))
        initializing = any(m.get("method") == "initialize" and "id" in m for m in messages)
        session = self._new_session(scope) if initializing else self._session_of_request(scope)
        if isinstance(session, Response):
            return session
        session.conversation.client_headers = client_headers()
        session.conversation.catalog_mode = requested_catalog_mode()
        session.conversation.results_choice = requested_results()
        requests = [m for m in messages if "method" in m and "id" in m]
        if not requests:
            for message in messages:
                session.conversation.handle_message(message)
            return self._with_session(empty_response(202), session)
        stream_id = f"p{time.time_ns():x}"
        stream = PostStream(self.events, session, stream_id, lambda: self._alive(session))
        for message in requests:
            session.expect(stream_id, message)
        try:
            for message in messages:
                session.conversation.handle_message(message)
            answers = {answer_key(m) for m in requests}
            if read.wants_sse:
                response = sse_response(self._sse(session, stream_id, "0", answers, stream))
                response.call_on_close(stream.close)  # also when its body is never read
            else:
                with contextlib.closing(stream):
                    response = self._json_answers(session, answers, read, stream)
        except BaseException:
            stream.close()
            raise
        return self._with_session(response, session)

    @staticmethod
    def _alive(session: HttpSession) -> bool:
        """Whether the session is still in Redis. Asked by the event stream too, which runs without Flask's
        request context (`sse_response`): the session's own services, not the app's."""
        return bool(session.conversation.services.redis.exists(keys.session(session.session_id)))

    def _json_answers(self, session: HttpSession, answers: set[str], read: JsonPost, stream: PostStream) -> Response:
        collected = stream.answers(answers, JSON_WAIT_S)
        batch = isinstance(read.body, list)
        return Response(dumps(collected if batch else collected[0]), mimetype=CONTENT_TYPE_JSON)

    def _sse(self, session: HttpSession, stream_id: str, after: str, answers: set[str] | None,
             stream: PostStream | None = None) -> Iterator[str]:
        """Events of one stream as SSE; a POST stream ends when every request it carried is answered.

        It opens with a priming event (SEP-1699): an id naming the current position, empty data and a
        `retry:` interval, so a client whose stream is cut before the first real event can still resume
        it with Last-Event-ID, and knows when to try. A POST's own stream is read through `stream`."""
        session_id, events = session.session_id, session.events  # (no request context here: see sse_response)
        with open_socket("sse"):
            yield f"id: {stream_id}.{after}\nretry: {RETRY_MS}\ndata:\n\n"
            last_sent = time.monotonic()
            while answers is None or answers:
                block_ms = int(KEEPALIVE_S * 1000)
                batch = (stream.read(after, block_ms) if stream is not None
                         else events.read(session_id, stream_id, after, block_ms))
                if not batch and not self._alive(session):
                    return  # the session ended (deleted or expired) while this stream was quiet
                for entry_id, message in batch:
                    if message is ENDED:
                        return  # the session was deleted: its streams end
                    after = entry_id
                    if answers is not None and is_response(message):
                        answers.discard(json.dumps(message["id"]))
                    yield sse_event(message, f"{stream_id}.{entry_id}")
                    last_sent = time.monotonic()
                if not batch and time.monotonic() - last_sent >= KEEPALIVE_S:
                    yield KEEPALIVE_EVENT
                    last_sent = time.monotonic()

    # ------------------------------------------------------------ GET
    def get(self, scope: str | None) -> Response:
        if not accepts_event_stream():
            refusal = RPCError(INVALID_REQUEST, "Not Acceptable: Client must accept text/event-stream")
            return rpc_error_response(406, refusal)
        session = self._session_of_request(scope)
        if isinstance(session, Response):
            return session
        last_event = request.headers.get("Last-Event-ID")
        if last_event:
            parsed = parse_event_id(last_event)
            if parsed is None:
                unknown = RPCError(INVALID_REQUEST, f"Bad Request: unknown Last-Event-ID {last_event!r}")
                return rpc_error_response(400, unknown)
            stream_id, after = parsed
            answers = None if stream_id == GET_STREAM else self._unanswered(session, stream_id, after)
            events = self._sse(session, stream_id, after, answers)
        else:
            events = self._sse(session, GET_STREAM, self.events.last_id(session.session_id, GET_STREAM), None)
        return self._with_session(sse_response(events), session)

    def _unanswered(self, session: HttpSession, stream_id: str, after: str) -> set[str]:
        """Requests of a POST stream whose answers its client has not had by `after` (a resumed stream ends
        when it has sent them all): those still routed to it, read first, and those answered in the stream
        after `after`, read second. A route is dropped only once its answer is in the stream
        (`HttpSession.route`), so every request is found by one of the two reads."""
        pending = session.unanswered(stream_id)
        after_id = after
        while True:
            batch = self.events.read(session.session_id, stream_id, after_id, None)
            if not batch:
                return pending
            for entry_id, message in batch:
                after_id = entry_id
                if message is not ENDED and is_response(message):
                    pending.add(json.dumps(message["id"]))

    # ------------------------------------------------------------ DELETE
    def delete(self, scope: str | None) -> Response:
        session = self._session_of_request(scope)
        if isinstance(session, Response):
            return session
        # A deleted session can never be resumed, so nobody will read its calls' answers: cancel them all, queued
        # (never run) and running (the backend is told), wherever they were sent from (the session's calls are
        # in Redis; this process's conversation may hold some not yet recorded there).
        calls = set(self.services.sessions.pending(session.session_id)) | set(session.conversation.in_flight_calls())
        session.conversation.close()
        session.end_streams()
        cancel_calls(self.services.redis, sorted(calls))  # in one step: a queued one cannot take a freed slot
        with self._lock:
            self._sessions.pop((session.session_id, scope), None)
        self.services.sessions.delete(session.session_id)
        self.events.drop_session(session.session_id, sorted(session.streams))
        return empty_response(200)
