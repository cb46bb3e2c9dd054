"""What every MCP transport needs, written once: the WebSocket (`ws.py`) and Streamable HTTP in either era
(`http.py`, `http_handshake.py`, `http_modern.py`).

- Origin and Host: checked app-wide, before any transport sees a request (`web/origin.py`, registered
  ahead of every route in `web/app.py`: a foreign Origin on an MCP endpoint or a WebSocket handshake is
  refused there with 403). A transport does not check them again.
- The catalog mode a URL asks for (`?tools=full|search`, `requested_catalog_mode`); a bad value is a 400.
- How a URL asks for tool results (`?results=`, `?result_format=`, `?max_result_tokens=`:
  `requested_results`); a bad value is a 400 before anything else.
- Which paths are MCP endpoints (`is_mcp_path`): their errors are JSON-RPC errors, elsewhere the API's.
- JSON-RPC error answers: the broker's one builder (`RPCError`, broker/rpc_error.py) as an HTTP
  response (`rpc_error_response`); the error for an unreachable Redis is `broker.outage.unavailable_error`.
- The checks of a JSON-RPC POST: Accept (406), Content-Type (415), a body that parses (400, -32700).
- SSE: the response headers, the event and keepalive lines, the open-stream gauge.

(The session-owner rule, that a session is the key's that opened it, is in `web/auth.py`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Response, request
from marshmallow import ValidationError
from mcp.server.streamable_http import CONTENT_TYPE_JSON, CONTENT_TYPE_SSE
from mcp_types import INVALID_REQUEST, PARSE_ERROR

from broker import wire
from broker.context.shaping import ResultsChoice
from broker.metrics import RECORDER
from broker.protocol import RPCError, dumps
from broker.schemas import CATALOG_MODES, ResultsQuerySchema, first_error

MCP_RULES = ("/mcp", "/servers/<scope>/mcp")  # every transport mounts these two (all servers, one server)
SESSION_HEADER = "Mcp-Session-Id"  # as we write it (the SDK's MCP_SESSION_ID_HEADER is its lower-case name)
SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
KEEPALIVE_S = 15.0  # an idle event stream sends a comment this often (proxies close silent connections)
KEEPALIVE_EVENT = ": keepalive\n\n"
CATALOG_MODE_PARAM = "tools"  # `/mcp?tools=search`: the endpoint's catalog mode


def is_mcp_path(path: str) -> bool:
    return path == "/mcp" or (path.startswith("/servers/") and path.endswith("/mcp"))


def is_websocket_upgrade() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def requested_catalog_mode() -> str | None:
    """The endpoint's `?tools=full|search` (broker.context.modes), or None when the URL does not say."""
    return request.args.get(CATALOG_MODE_PARAM) or None


def catalog_mode_problem() -> str | None:
    """What is wrong with the URL's `?tools=`, or None (checked before anything else is done)."""
    mode = requested_catalog_mode()
    if mode is None or mode in CATALOG_MODES:
        return None
    return f"Bad Request: ?{CATALOG_MODE_PARAM}= must be one of {', '.join(CATALOG_MODES)}, not {mode[:40]!r}"


RESULTS_PARAMS = ("results", "result_format", "max_result_tokens")


def _asks_for_results() -> bool:
    """Whether the URL says anything of results (most do not: no schema is loaded for them)."""
    args = request.args
    return any(name in args for name in RESULTS_PARAMS)


def requested_results() -> ResultsChoice:
    """How the URL asks for tool results: `?results=shaped|raw`, `?result_format=raw|compact|toon`,
    `?max_result_tokens=N` (broker.context.shaping); refused before anything else when bad
    (`results_query_problem`), so here it loads."""
    if not _asks_for_results():
        return ResultsChoice()
    try:
        query = ResultsQuerySchema().load(request.args)
    except ValidationError:
        return ResultsChoice()
    return ResultsChoice(query["results"], query["result_format"], query["max_result_tokens"])


def results_query_problem() -> str | None:
    """What is wrong with the URL's results parameters, or None."""
    if not _asks_for_results():
        return None
    try:
        ResultsQuerySchema().load(request.args)
    except ValidationError as err:
        return f"Bad Request: query string: {first_error(err)}"
    return None


def client_headers() -> dict[str, str]:
    """The request's headers, names lower-cased (what the protocol and the SDK's classifier read)."""
    return {name.lower(): value for name, value in request.headers.items()}


# ---------------------------------------------------------------- JSON-RPC errors
def rpc_error_response(status: int, error: RPCError, request_id: Any = None) -> Response:
    """A JSON-RPC error as the HTTP answer to a request (its clients read those, never an HTML page)."""
    return Response(dumps(error.to_message(request_id)), status=status, mimetype=CONTENT_TYPE_JSON)


def empty_response(status: int) -> Response:
    """An answer with no body and no Content-Type (Flask's default would label nothing as text/html)."""
    response = Response(status=status)
    response.headers.remove("Content-Type")
    return response


# ---------------------------------------------------------------- a JSON-RPC POST
@dataclass(frozen=True)
class JsonPost:
    """A POST's JSON-RPC body, and how its client takes the answer."""

    body: Any
    wants_sse: bool


def read_json_post(not_acceptable: str) -> JsonPost | Response:
    """The POST's parsed body, or the refusal the SDK's own server transport gives: 406 (`not_acceptable`)
    when the client accepts neither JSON nor an event stream, 415 without a JSON body, 400 (-32700) when
    the body is not JSON."""
    accept = request.headers.get("Accept", "")
    wants_sse, wants_json = CONTENT_TYPE_SSE in accept, CONTENT_TYPE_JSON in accept
    if not wants_json and not wants_sse:
        return rpc_error_response(406, RPCError(INVALID_REQUEST, not_acceptable))
    if not (request.mimetype or "").startswith(CONTENT_TYPE_JSON):
        return rpc_error_response(415, RPCError(INVALID_REQUEST, "Unsupported Media Type: Content-Type must be "
                                                                 "application/json"))
    try:
        body = wire.loads(request.get_data(cache=False) or b"")
    except (ValueError, RecursionError) as err:
        return rpc_error_response(400, RPCError(PARSE_ERROR, f"Parse error: {err}"))
    return JsonPost(body, wants_sse)


def accepts_event_stream() -> bool:
    return CONTENT_TYPE_SSE in request.headers.get("Accept", "")


# ---------------------------------------------------------------- SSE
def sse_event(message: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: message\ndata: {dumps(message)}\n\n"


def sse_response(events: Iterator[str]) -> Response:
    """An event stream, unbuffered on the way (no proxy holds it back, nothing caches it).

    `events` runs after the view has returned, without Flask's request context: it takes what it needs
    (services, session, principal) when it is made. Flask's `stream_with_context` pushed the request and app
    contexts again around it, which matched the URL again and ran the teardown hooks a second time, for nothing
    the streams read: per handshake POST, RequestContext push+pop 2 -> 1 and 212 -> 105 own-CPU us (a
    greenlet-aware probe of the web under `bench.web_cpu`'s load, 1,500 calls, box shared: absolute values high;
    the whole bench's web CPU per call moves within its noise, 3.32 -> 3.41 ms, 3 rounds A/B).

    The SDK's handshake-era client opens a connection per POST, and no server can change that: it closes a
    POST's response at its answer's event (`_handle_sse_response`), and httpcore2 hands that event's chunk up
    before it parses the chunked body's terminator behind it, even from the same read, so the response is
    unfinished and its connection is closed. Measured on the stack: with TCP_CORK held from the final event
    until gunicorn's terminator (both arrived in one recv), 20 of 20 POSTs still took a new connection, as
    without. A final blank line ended by a lone CR would hold httpx2's dispatch to the stream's end, but
    eventsource-parser (the TypeScript SDK's) never dispatches such an event: lost answers. Clients that read
    a response to its end keep the connection (tests/test_http_mcp.py), as the worker's own client does
    (workers/backends/keepalive.py); so does the modern era's SDK client (JSON answers)."""
    return Response(events, mimetype=CONTENT_TYPE_SSE, headers=SSE_HEADERS)


@contextmanager
def open_socket(kind: str) -> Iterator[None]:
    """Counts an open WebSocket (`ws`) or event stream (`sse`) for `mcp_broker_open_sockets`."""
    RECORDER.level("mcp_broker_open_sockets", (kind,), 1)
    try:
        yield
    finally:
        RECORDER.level("mcp_broker_open_sockets", (kind,), -1)
