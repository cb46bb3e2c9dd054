"""MCP, the client side of the broker: one JSON-RPC conversation, transport-agnostic (the kernel).

The broker is ONE MCP server to its client. It answers the handshake, `ping`
and the list methods itself (from the Redis catalog), answers cached tool
results itself, and turns every other request it forwards (`tools/call`,
`resources/read`, `prompts/get`, `completion/complete`) into a queued call
whose answer arrives later, out of order, on the reply hub. A transport
(the WebSocket, Streamable HTTP in either era) only feeds frames in and takes frames
out. Bad input gets the JSON-RPC error MCP prescribes and the conversation
goes on. The conversation's state lives in Redis (`sessions.py`), so a client
that reconnects anywhere resumes it.

This module is the kernel: the conversation's state, output (send, notify, respond), input (frames,
messages, dispatch through `registry.METHODS`), the calls in flight, the session (touch, expiry, resume),
cancellation and close. What each method does is in `handlers/`; what differs between the protocol eras
is asked of `self.era` (`era.py`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.shared.inbound import InboundModernRoute
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND

from broker import keys, observe, outage
from broker.admission import Admission, Refused
from broker.calls import QUEUE_GRACE_S, cancel_call
from broker.context.shaping import ResultsChoice
from broker.outage import is_redis_down
from broker.protocol.era import HANDSHAKE, Era, era_of_version
from broker.protocol.framing import (
    DEFERRED,
    NOT_AN_OBJECT,
    RPCError,
    batch_messages,
    classify_modern,
    decode_frame,
    echoable_id,
    message_error,
    unencodable_error,
)
from broker.protocol.handlers import relay, subscriptions
from broker.protocol.handlers.forward import CATALOG_WAIT_PREFIX
from broker.protocol.handlers.lifecycle import LOG_LEVELS
from broker.protocol.handlers.lists import changed_notices
from broker.protocol.handlers.outcomes import Waiting
from broker.protocol.meta import LOG_LEVEL_META_KEY
from broker.protocol.registry import CAPABILITIES, METHODS, NOTIFICATIONS
from broker.security import ANONYMOUS, Principal

if TYPE_CHECKING:
    from broker.services import BrokerServices

log = logging.getLogger(__name__)

TOUCH_INTERVAL_S = 10.0
Emit = Callable[[dict[str, Any], Any], None]  # the transport's (message, related request id)


class Conversation:
    """One client's conversation with the broker."""

    def __init__(
        self,
        services: BrokerServices,
        emit: Emit,
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
        self.protocol_version = HANDSHAKE.latest
        self.era: Era = HANDSHAKE  # (a modern exchange: envelope per request, no server-to-client requests)
        self.initialized = False
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.in_flight: dict[Any, str] = {}  # client request id → call id
        self.asked: dict[str, str] = {}  # our id of a server-to-client request → the backend request's id
        self.log_level: str | None = None  # set by logging/setLevel; None = what the backend sends
        self.subscriptions: set[tuple[str, str]] = set()  # (server, backend uri) of resources/subscribe
        self.questions: dict[Any, list[dict[str, Any]]] = {}  # request id → backend questions of this round
        self.offered: dict[Any, dict[str, Any]] = {}  # request id → inputResponses it brought unasked
        self.listen: dict[str, Any] | None = None  # the subscriptions/listen stream this exchange serves
        self.bindings: dict[Any, dict[str, str]] = {}  # request id → method/target/arguments of a modern request
        self.closed = False
        self._touched = time.monotonic()
        self.client_headers: dict[str, str] = {}  # the transport's request headers (lower-case names), for
        # servers that pass some on (`broker.forward_headers`); set by the transport
        self.catalog_mode: str | None = None  # the endpoint's `?tools=` (broker.context.modes); set by the transport
        self.results_choice = ResultsChoice()  # the endpoint's `?results=` etc. (broker.context.shaping); set by the
        # transport
        self.expired = False  # the session expired or was deleted while this transport was open: it ends
        self.kept = True  # its session is in Redis (a modern exchange's is not: nobody resumes it, so its calls
        # get no session records, and their outcomes live `MCP_BROKER_DELIVERED_TTL_S`, as a /v1 call's)
        if resume is not None:
            self._restore(resume)
        else:
            services.sessions.create(self.session_id, self.state())
        self._modern_requests: weakref.WeakValueDictionary[Any, Conversation] = weakref.WeakValueDictionary()
        if self.era.hears_list_changes:  # the modern era hears of list changes only on subscriptions/listen
            services.connections.add(self)

    @classmethod
    def for_modern_request(cls, services: BrokerServices, emit: Emit, route: InboundModernRoute,
                           meta: dict[str, Any], scope: str | None, principal: Principal,
                           headers: dict[str, str]) -> Conversation:
        """The exchange of one modern request, whose envelope the SDK's classifier accepted (`route`); `meta`
        is the request's `_meta` (its `logLevel`: none asked for, none sent)."""
        capabilities = route.client_capabilities if isinstance(route.client_capabilities, dict) else {}
        state = {"protocolVersion": route.protocol_version, "clientInfo": route.client_info or {},
                 "capabilities": capabilities, "initialized": True, "principal": principal.id}
        exchange = cls(services, emit, resume=state, scope=scope, principal=principal)
        exchange.client_headers = headers
        exchange.kept = False
        level = meta.get(LOG_LEVEL_META_KEY)
        exchange.log_level = level if level in LOG_LEVELS else None
        return exchange

    # ------------------------------------------------------------ output
    def send(self, message: dict[str, Any], related: Any = None) -> None:
        if not self.closed:
            self._emit(message, related)

    def notify(self, method: str, params: dict[str, Any] | None = None, related: Any = None) -> None:
        shaped = self.era.notification(self, method, params, related)
        if shaped is None:
            return  # not sent in this era (a modern change notification nobody listens for)
        params, related = shaped
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})}, related)

    def respond(self, request_id: Any, result: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": self.era.result(result)})

    def error(self, request_id: Any, code: int, message: str, data: Any = None) -> None:
        self.send(RPCError(code, message, data).to_message(request_id))

    def lists_changed(self, attributes: set[str]) -> None:
        """The catalog's lists that moved (`BrokerServices` tells every conversation that hears of them)."""
        for notice in changed_notices(attributes):
            self.notify(notice)

    def resource_updated(self, server: str, uri: str) -> None:
        """A backend resource changed (told by `BrokerServices` on every web process)."""
        subscriptions.resource_updated(self, server, uri)

    def offered_capabilities(self) -> dict[str, Any]:
        """What the broker's methods offer in this conversation's era (`registry.CAPABILITIES`)."""
        return {name: dict(flags) for name, flags in CAPABILITIES[self.era.name].items()}

    # ------------------------------------------------------------ input
    def handle_text(self, data: str | bytes) -> None:
        """One frame from the client: a JSON-RPC message or a batch (array) of them."""
        try:
            decoded = decode_frame(data, self.services.max_frame_bytes)
        except RPCError as err:
            self.send(err.to_message(None))
            return
        if not self._keep_session_alive():
            self._session_gone(decoded)
            return
        try:
            messages = batch_messages(decoded, self.services.max_batch_messages)
        except RPCError as err:
            self.send(err.to_message(None))
            return
        for message in messages:
            self.handle_message(message)

    def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict):
            self.send(NOT_AN_OBJECT.to_message(None))
            return
        unencodable = unencodable_error(message)
        if unencodable is not None:
            self._refuse_unencodable(message, unencodable)
            return
        problem = message_error(message)
        if problem is not None:  # an id the message's shape refused is echoed only if JSON-RPC allows it
            self.send(problem.to_message(echoable_id(message.get("id"))))
            return
        method = message.get("method")
        if method is None:
            relay.on_client_answer(self, message)
            return
        params = message.get("params") or {}
        if self.era.serves_apart(self, message, params):
            self._serve_apart(message)
            return
        if "id" not in message:
            handler = NOTIFICATIONS.get(method)
            if handler is not None:
                try:
                    handler(self, params)
                except Exception:  # notifications have no reply; never let one kill the connection
                    log.exception("notification %s failed", method)
            return
        self._dispatch(message["id"], method, params)

    def _refuse_unencodable(self, message: dict[str, Any], error: RPCError) -> None:
        """A request gets the error; a client's answer reaches the backend that asked as that error (it must
        not wait for it forever); a notification is dropped."""
        if "method" not in message:
            if "id" in message:
                relay.on_client_answer(self, {"id": message["id"], "error": error.to_error()})
        elif "id" in message:
            self.send(error.to_message(echoable_id(message["id"])))
        else:
            log.info("dropped notification with unencodable text: %s", error.message)

    def _dispatch(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        spec = METHODS.get(method)
        if spec is None or not self.era.allows(spec):
            self.error(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
            return

        def run() -> Any:
            if spec.admission is not None:
                spec.admission(self.admission)
            early = self.era.before_handler(self, request_id, spec, params)
            if early is not None:
                return early
            return spec.handler(self, request_id, spec.load(params))

        self.answer_with(request_id, method, params, run)

    def answer_with(self, request_id: Any, method: str, params: dict[str, Any], run: Callable[[], Any]) -> None:
        """Run a request's handler and answer it: its result, its RPC error, or an internal error."""
        started = time.perf_counter()
        try:
            try:
                result = run()
            except Refused as refused:  # admission said no: answered with its JSON-RPC error
                raise RPCError(refused.rpc_code or INTERNAL_ERROR, refused.message, refused.rpc_data) from None
        except RPCError as err:
            self.send(err.to_message(request_id))
            if method == "tools/call":
                observe.immediate_call(self, params, "rejected", time.perf_counter() - started, err.code)
            return
        except Exception as err:
            if is_redis_down(err):  # not a bug: say so, so the client retries instead of giving up
                log.warning("method %s: Redis unreachable: %r", method, err)
                self.send(outage.unavailable_error().to_message(request_id))
                return
            log.exception("method %s failed", method)
            self.error(request_id, INTERNAL_ERROR, f"Internal error: {type(err).__name__}")
            return
        if result is not DEFERRED:
            self.respond(request_id, result)
            if method == "tools/call":  # answered here: from the cache, or arguments refused as an isError result
                outcome = "rejected" if isinstance(result, dict) and result.get("isError") else "cached"
                observe.immediate_call(self, params, outcome, time.perf_counter() - started)

    def _serve_apart(self, message: dict[str, Any]) -> None:
        """A modern request on a stream transport (the WebSocket): its envelope names its era, so it is
        served as an exchange of its own, answered on this stream, whatever this conversation is."""
        route = classify_modern(message)
        if isinstance(route, RPCError):
            self.send(route.to_message(message["id"]))
            return
        exchange = Conversation.for_modern_request(self.services, self._emit, route, message["params"]["_meta"],
                                                   self.scope, self.principal, self.client_headers)
        exchange.catalog_mode = self.catalog_mode
        exchange.results_choice = self.results_choice
        if isinstance(message["id"], (str, int)):
            self._modern_requests[message["id"]] = exchange  # alive while in flight: its callbacks hold it
        exchange.handle_message(message)

    # ------------------------------------------------------------ session
    def state(self) -> dict[str, Any]:
        """What the session keeps of the conversation (`broker.sessions`)."""
        return {"protocolVersion": self.protocol_version, "clientInfo": self.client_info,
                "capabilities": self.client_capabilities, "initialized": self.initialized,
                "principal": self.principal.id}

    def _restore(self, state: dict[str, Any]) -> None:
        self.protocol_version = state.get("protocolVersion") or HANDSHAKE.latest
        self.client_info = state.get("clientInfo") or {}
        self.client_capabilities = state.get("capabilities") or {}
        self.initialized = bool(state.get("initialized"))
        self.subscriptions = {(str(s), str(u)) for s, u in state.get("subscriptions") or []}
        self.era = era_of_version(self.protocol_version)

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
            self.error(echoable_id(request["id"]), INVALID_REQUEST, message)
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
            waiting = Waiting(self, entry["rid"], call_id, entry["method"], entry["server"], entry.get("progressToken"))
            self.in_flight[entry["rid"]] = call_id
            spec = self.services.config.servers.get(entry["server"])
            limit = (spec.settings.max_timeout_s if spec is not None else 300.0) * 2 + QUEUE_GRACE_S
            wait_s = max(wait_s, limit)
            hub.expect(call_id, waiting.on_outcome, waiting.on_event, limit)
        self.services.sessions.route(call_ids, hub.channel, int(wait_s))
        stored = self.services.redis.mget([keys.result(c) for c in call_ids])
        for data in stored:
            if data:
                hub.deliver_local(json.loads(data))
        return len(pending)

    # ------------------------------------------------------------ calls in flight
    def cancel(self, request_id: Any) -> None:
        """The client gave up on a request: stop waiting, free its slot, and cancel its call."""
        exchange = self._modern_requests.get(request_id) if isinstance(request_id, (str, int)) else None
        if exchange is not None:
            exchange.cancel(request_id)
            return
        call_id = self.in_flight.pop(request_id, None) if isinstance(request_id, (str, int)) else None
        if call_id is None or call_id.startswith(CATALOG_WAIT_PREFIX):
            return  # (a call still waiting for its server's catalog just stops waiting)
        self.admission.release_slot(call_id)
        self.services.hub.forget(call_id)
        self.forget_calls([call_id])
        cancel_call(self.services.redis, call_id)

    def forget_calls(self, call_ids: list[str]) -> None:
        """Answered or cancelled: its session no longer waits for them (nothing to write for a modern exchange,
        which records none: 4 Redis commands a call fewer, bench.web_cpu)."""
        if self.kept:
            self.services.sessions.forget(self.session_id, call_ids)

    def in_flight_calls(self) -> list[str]:
        """Call ids this conversation still waits for."""
        return [c for c in self.in_flight.values() if not c.startswith(CATALOG_WAIT_PREFIX)]

    # ------------------------------------------------------------ end
    def close(self) -> None:
        """The transport is gone: stop waiting here. The session keeps its calls, so a reconnect resumes them."""
        for exchange in list(self._modern_requests.values()):
            exchange.close()
        if self.listen is not None:
            subscriptions.stop_listening(self)
        self.closed = True
        for call_id in list(self.in_flight.values()):
            self.admission.release_slot_when_answered(call_id)  # it may still run (and the session resume it)
            self.services.hub.forget(call_id)
        self.in_flight.clear()
        self.services.connections.discard(self)
