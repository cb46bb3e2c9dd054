"""MCP 2026-07-28 over Streamable HTTP: one stateless exchange per POST, beside the handshake-era sessions.

A request whose `MCP-Protocol-Version` header names a revision outside the
handshake set is a 2026-07-28 request, chosen per request exactly as the SDK's
own `StreamableHTTPSessionManager` does. It carries its whole context in
`params._meta` (protocol version, client info and capabilities), so any web
process can serve it: no session, no `Mcp-Session-Id`. The envelope and the
routing headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) are checked
with the SDK's own classifier (-32602 / -32020 / -32022 with `data.supported`),
then the request runs through the same `Conversation` as every other one:
catalog, router, queues, cache. The answer is one JSON body, or an SSE stream
when notifications (progress, log messages) come first. Closing the stream
cancels the request. A backend's sampling/elicitation request reaches such a
client as an `input_required` result (see `broker.protocol.handlers.input_required`).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Response, request, stream_with_context
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    validate_mcp_param_headers,
)
from mcp_types import INVALID_REQUEST, PARSE_ERROR
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from broker import wire
from broker.admission import Admission
from broker.calls import cancel_call
from broker.metrics import RECORDER
from broker.protocol import LOG_LEVEL_META_KEY, LOG_LEVELS, Conversation, dumps, echoable_id
from broker.router import UnknownTool
from web.auth import current_principal

if TYPE_CHECKING:
    from web.http_mcp import HttpEndpoint

UNSUPPORTED_PROTOCOL_VERSION = -32022
KEEPALIVE_S = 15.0
WAIT_S = 3600.0


def _error(status: int, code: int, message: str, request_id: Any = None, data: Any = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return Response(dumps({"jsonrpc": "2.0", "id": request_id, "error": error}), status=status,
                    mimetype="application/json")


def _status_of(message: dict[str, Any]) -> int:
    """HTTP status of a JSON answer: the SDK's table for errors (400 bad input, 404 unknown method), else 200."""
    error = message.get("error")
    return ERROR_CODE_HTTP_STATUS.get(error.get("code"), 200) if isinstance(error, dict) else 200


def _param_header_rejection(endpoint: HttpEndpoint, scope: str | None, body: dict[str, Any],
                            headers: dict[str, str]) -> InboundLadderRejection | None:
    """SEP-2243: a tools/call's `Mcp-Param-*` headers must mirror the arguments the tool's schema marks with
    `x-mcp-header` (an intermediary may route on them), checked with the SDK's own comparison."""
    params = body.get("params")
    if body.get("method") != "tools/call" or not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
    if not arguments and not any(name.startswith("mcp-param-") for name in headers):
        return None
    services = endpoint.services
    name = services.catalog.namespaced(scope, params["name"]) if scope else params["name"]
    if not Admission(services, current_principal(), scope).may(params["name"]):
        return None  # refused by the call itself, before anything of the tool (its schema) shows
    try:
        schema = services.router.route_tool(name).entry.definition.get("inputSchema")
    except UnknownTool:
        return None  # answered by the call itself
    return validate_mcp_param_headers(schema, arguments, headers) if isinstance(schema, dict) else None


def handle_modern_post(endpoint: HttpEndpoint, scope: str | None) -> Response:
    """One 2026-07-28 POST: validate the envelope, run the request, answer as JSON or SSE."""
    accept = request.headers.get("Accept", "")
    wants_sse, wants_json = "text/event-stream" in accept, "application/json" in accept
    if not wants_json and not wants_sse:
        return _error(406, INVALID_REQUEST, "Not Acceptable: Client must accept application/json")
    if not (request.mimetype or "").startswith("application/json"):
        return _error(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")
    try:
        body = wire.loads(request.get_data(cache=False) or b"")
    except (ValueError, RecursionError) as err:
        return _error(400, PARSE_ERROR, f"Parse error: {err}")
    version = request.headers.get("MCP-Protocol-Version", "")
    if isinstance(body, dict) and "method" in body and "id" not in body:  # a notification: nothing to answer
        if version not in MODERN_PROTOCOL_VERSIONS:
            return _error(400, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                          data={"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": version})
        return Response(status=202)
    if not isinstance(body, dict) or "method" not in body or "id" not in body:
        return _error(400, INVALID_REQUEST, "Invalid Request: a 2026-07-28 POST carries one JSON-RPC request")
    request_id = echoable_id(body["id"])
    if request_id is None:
        return _error(400, INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if body.get("method") == "subscriptions/listen" and not wants_sse:  # its answer IS a stream of notifications
        return _error(406, INVALID_REQUEST, "Not Acceptable: subscriptions/listen needs text/event-stream",
                      request_id)
    headers = {name.lower(): value for name, value in request.headers.items()}
    verdict = classify_inbound_request(body, headers=headers)
    if isinstance(verdict, InboundLadderRejection):
        return _error(ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), verdict.code, verdict.message, request_id,
                      verdict.data)
    mismatch = _param_header_rejection(endpoint, scope, body, headers)
    if mismatch is not None:
        return _error(400, mismatch.code, mismatch.message, request_id, mismatch.data)

    principal = current_principal()
    answers: queue.Queue[dict[str, Any]] = queue.Queue()
    state = {"protocolVersion": verdict.protocol_version, "clientInfo": verdict.client_info or {},
             "capabilities": verdict.client_capabilities if isinstance(verdict.client_capabilities, dict) else {},
             "initialized": True, "principal": principal.id}
    connection = Conversation(endpoint.services, lambda message, _related=None: answers.put(message),
                                  resume=state, scope=scope, principal=principal)
    connection.client_headers = headers
    params = body.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    level = meta.get(LOG_LEVEL_META_KEY) if isinstance(meta, dict) else None
    connection.log_level = level if level in LOG_LEVELS else None  # none asked for: none sent
    connection.handle_message(body)

    def is_answer(message: dict[str, Any]) -> bool:
        return message.get("id") == body["id"] and ("result" in message or "error" in message)

    try:
        first = answers.get(timeout=WAIT_S)
        while not wants_sse and not is_answer(first):  # a JSON-only client gets the answer alone
            first = answers.get(timeout=WAIT_S)
    except queue.Empty:
        connection.close()
        return _error(504, INVALID_REQUEST, "Gateway Timeout: no answer", request_id)
    if is_answer(first):
        connection.close()
        return Response(dumps(first), status=_status_of(first), mimetype="application/json")

    def events() -> Iterator[str]:
        message: dict[str, Any] | None = first
        answered = False
        RECORDER.level("mcp_broker_open_sockets", ("sse",), 1)
        try:
            while not answered:
                if message is None:
                    yield ": keepalive\n\n"
                else:
                    answered = is_answer(message)
                    yield f"event: message\ndata: {dumps(message)}\n\n"
                if not answered:
                    try:
                        message = answers.get(timeout=KEEPALIVE_S)
                    except queue.Empty:
                        message = None
        finally:
            RECORDER.level("mcp_broker_open_sockets", ("sse",), -1)
            if not answered:  # the client went away: in 2026-07-28, closing the stream cancels the request
                for call_id in list(connection.in_flight_calls()):
                    cancel_call(endpoint.services.redis, call_id)
            connection.close()

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"})
