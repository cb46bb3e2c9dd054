"""The modern era (MCP 2026-07-28) over Streamable HTTP: one self-contained exchange per POST, beside the
handshake era's sessions.

A request whose `MCP-Protocol-Version` header names a revision outside the
handshake set is a modern request, chosen per request exactly as the SDK's
own `StreamableHTTPSessionManager` does (`web/transports/http.py`). It carries its whole context in
`params._meta` (protocol version, client info and capabilities), so any web
process can serve it: no session, no `Mcp-Session-Id`. The envelope and the
routing headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) are checked
with the SDK's own classifier (-32602 / -32020 / -32022 with `data.supported`),
then the request runs through the same `Conversation` as every other one:
catalog, router, queues, cache. The answer is one JSON body, or an SSE stream
when notifications (progress, log messages) come first. Closing the stream
cancels the request: a watcher on the connection notices it within ~0.25 s even while nothing has been
written (`web/transports/disconnect.py`); a `notifications/cancelled` POSTed to any web process cancels
it too (`web/transports/modern_cancel.py`). A backend's sampling/elicitation request reaches such a
client as an `input_required` result (see `broker.protocol.handlers.input_required`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request
from mcp.server.streamable_http import CONTENT_TYPE_JSON
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundLadderRejection,
    validate_mcp_param_headers,
)
from mcp_types import INVALID_REQUEST, UNSUPPORTED_PROTOCOL_VERSION

from broker.admission import Admission
from broker.calls import cancel_calls
from broker.protocol import MODERN, Conversation, RPCError, classify_modern, dumps, echoable_id
from broker.router import UnknownTool
from broker.services import BrokerServices
from web.auth import current_principal
from web.transports import modern_cancel
from web.transports.common import (
    KEEPALIVE_EVENT,
    KEEPALIVE_S,
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
from web.transports.disconnect import DisconnectWatch, request_socket

WAIT_S = 3600.0


def _status_of(message: dict[str, Any]) -> int:
    """HTTP status of a JSON answer: the SDK's table for errors (400 bad input, 404 unknown method), else 200."""
    error = message.get("error")
    return ERROR_CODE_HTTP_STATUS.get(error.get("code"), 200) if isinstance(error, dict) else 200


def _param_header_rejection(services: BrokerServices, scope: str | None, body: dict[str, Any],
                            headers: dict[str, str]) -> InboundLadderRejection | None:
    """SEP-2243: a tools/call's `Mcp-Param-*` headers must mirror the arguments the tool's schema marks with
    `x-mcp-header` (an intermediary may route on them), checked with the SDK's own comparison."""
    params = body.get("params")
    if body.get("method") != "tools/call" or not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
    if not arguments and not any(name.startswith("mcp-param-") for name in headers):
        return None
    name = services.catalog.namespaced(scope, params["name"]) if scope else params["name"]
    if not Admission(services, current_principal(), scope).may(params["name"]):
        return None  # refused by the call itself, before anything of the tool (its schema) shows
    try:
        schema = services.router.route_tool(name).entry.definition.get("inputSchema")
    except UnknownTool:
        return None  # answered by the call itself
    return validate_mcp_param_headers(schema, arguments, headers) if isinstance(schema, dict) else None


class ModernEndpoint:
    """The modern era's handlers for both mount points: a POST is the whole exchange; there is no session to
    stream from (GET) or to end (DELETE)."""

    def __init__(self, services: Callable[[], BrokerServices]) -> None:
        self._services = services

    def post(self, scope: str | None) -> Response:
        """One modern POST: validate the envelope, run the request, answer as JSON or SSE."""
        services = self._services()
        read = read_json_post("Not Acceptable: Client must accept application/json")
        if isinstance(read, Response):
            return read
        body, wants_sse = read.body, read.wants_sse
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, "")
        if isinstance(body, dict) and "method" in body and "id" not in body:  # a notification: nothing to answer
            if version not in MODERN.versions:
                supported = {"supported": list(MODERN.versions), "requested": version}
                return rpc_error_response(400, RPCError(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                                                        supported))
            if body.get("method") == "notifications/cancelled":  # a courtesy: the closed stream is the signal
                modern_cancel.publish(services.redis, current_principal().id, scope, body.get("params"))
            return empty_response(202)
        if not isinstance(body, dict) or "method" not in body or "id" not in body:
            return rpc_error_response(400, RPCError(INVALID_REQUEST, "Invalid Request: a 2026-07-28 POST carries "
                                                                     "one JSON-RPC request"))
        request_id = echoable_id(body["id"])
        if request_id is None:
            bad_id = RPCError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
            return rpc_error_response(400, bad_id)
        if body.get("method") == "subscriptions/listen" and not wants_sse:  # its answer IS a stream of notifications
            needs_sse = RPCError(INVALID_REQUEST, "Not Acceptable: subscriptions/listen needs text/event-stream")
            return rpc_error_response(406, needs_sse, request_id)
        headers = client_headers()
        verdict = classify_modern(body, headers)
        if isinstance(verdict, RPCError):
            return rpc_error_response(ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), verdict, request_id)
        mismatch = _param_header_rejection(services, scope, body, headers)
        if mismatch is not None:
            return rpc_error_response(400, RPCError(mismatch.code, mismatch.message, mismatch.data), request_id)

        answers: queue.Queue[dict[str, Any] | None] = queue.Queue()  # None: given up (closed or cancelled)
        params = body.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        principal = current_principal()
        conversation = Conversation.for_modern_request(services, lambda message, _related=None: answers.put(message),
                                                       verdict, meta if isinstance(meta, dict) else {}, scope,
                                                       principal, headers)
        conversation.catalog_mode = requested_catalog_mode()
        conversation.results_choice = requested_results()
        given_up = threading.Event()

        def give_up() -> None:
            """The client closed the stream or cancelled the request: cancel its calls (on any worker), wake
            the waiting POST, which ends with no answer."""
            if given_up.is_set():
                return
            given_up.set()
            conversation.cancel(body["id"])
            cancel_calls(services.redis, list(conversation.in_flight_calls()))
            answers.put(None)

        def is_answer(message: dict[str, Any] | None) -> bool:
            return message is not None and message.get("id") == body["id"] and ("result" in message or
                                                                               "error" in message)

        cleanup = contextlib.ExitStack()  # unwound by `finish`, when the POST is answered or given up
        cleanup.callback(conversation.close)
        cleanup.enter_context(modern_cancel.cancellable(principal.id, scope, body["id"],
                                                        modern_cancel.client_name(meta), give_up))
        conversation.handle_message(body)
        if not any(is_answer(m) for m in list(answers.queue)):  # it waits (a worker, a catalog): watch the client
            cleanup.callback(DisconnectWatch(request_socket(request.environ), give_up).start().stop)
        finish = cleanup.close

        try:
            first = answers.get(timeout=WAIT_S)
            while first is not None and not wants_sse and not is_answer(first):  # JSON-only: the answer alone
                first = answers.get(timeout=WAIT_S)
        except queue.Empty:
            finish()
            return rpc_error_response(504, RPCError(INVALID_REQUEST, "Gateway Timeout: no answer"), request_id)
        if first is None:  # given up before anything was sent: the client reads nothing of this
            finish()
            return empty_response(204)
        if is_answer(first):
            finish()
            return Response(dumps(first), status=_status_of(first), mimetype=CONTENT_TYPE_JSON)

        def events() -> Iterator[str]:
            message: dict[str, Any] | None = first
            answered = False
            try:
                with open_socket("sse"):
                    while not answered and not given_up.is_set():
                        if message is None:
                            yield KEEPALIVE_EVENT
                        else:
                            answered = is_answer(message)
                            yield sse_event(message)
                        if not answered:
                            try:
                                message = answers.get(timeout=KEEPALIVE_S)
                            except queue.Empty:
                                message = None
            finally:
                if not answered:  # the client went away: in the modern era, closing the stream cancels the request
                    give_up()
                finish()

        return sse_response(events())

    def get(self, scope: str | None) -> Response:
        return _no_session_in_modern_era()

    def delete(self, scope: str | None) -> Response:
        return _no_session_in_modern_era()


def _no_session_in_modern_era() -> Response:
    """A GET or DELETE naming a revision outside the handshake set: no session, no stream of its own (the
    handshake transport's answer to a version it does not know, as before the eras had a module each)."""
    version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
    return rpc_error_response(400, RPCError(INVALID_REQUEST, f"Bad Request: unsupported protocol version {version}"))
