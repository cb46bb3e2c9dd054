"""Every answer the broker sends is JSON, errors included, on every path, whoever raises them.

Three layers could answer with HTML before this module (issue 13, finding 8: `/servers/%2e%2e/mcp`
and 5,000-character names got Flask's and gunicorn's HTML pages):

- Flask, for a path no route matches (404), a method a route does not take (405), a body over
  `MAX_CONTENT_LENGTH` (413) or an exception no blueprint handled (500): `register_errors` answers all
  of them in JSON (`{"error": {"code", "message"}}`, as under `/v1`; a JSON-RPC error on the MCP
  endpoints, so an MCP client can read it).
- gunicorn, for a request it refuses before the app sees it: a request line over `limit_request_line`
  (4,094 bytes: 414), headers over `limit_request_field_size` / `limit_request_fields` (431), a
  malformed request (400). gunicorn has no setting for the body of those answers; it writes them with
  `gunicorn.util.write_error`, which `json_gunicorn_errors` replaces in the web worker process with one
  that writes the same status as JSON.
- Python's `json`, whose defaults write `NaN`: `WireJSONProvider` makes every `jsonify` go through
  `broker.wire.dumps` (always valid JSON, always UTF-8).

An answer with no body (an OPTIONS, a 202 to a notification) has no Content-Type at all (`untyped_when_empty`):
Flask's default `text/html` labelled them HTML. The two deliberate exceptions are `/status` (an HTML page)
and `/metrics` (Prometheus' text format).

One builder a shape: `api_error` for `{"error": {"code", "message", ...}}` (the API, the guards, the
status pages), `web.transports.common.rpc_error_response` for a JSON-RPC error (the MCP endpoints).

Redis unreachable is answered 503 with a JSON error on every route (`redis_unavailable`). Flask's
default would be its HTML 500 page (measured: `GET /v1/batches/<id>` answered 500 while Redis
restarted); a client needs to tell "the broker's Redis is down, retry shortly" from a bug.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, RequestEntityTooLarge

from broker import wire
from broker.admission import Refused
from broker.outage import REDIS_DOWN, unavailable_body
from broker.protocol import RPCError
from web.transports.common import is_mcp_path, rpc_error_response

log = logging.getLogger(__name__)


class WireJSONProvider(DefaultJSONProvider):
    """Flask's JSON, written by `broker.wire.dumps`: never `NaN`, never an unencodable string."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return wire.dumps(obj, **kwargs)


def api_error(status: int, code: str, message: str, **extra: Any) -> Response:
    """`{"error": {"code", "message", **extra}}` with `status`: a stable machine-readable code and words
    naming the problem. `retry_after_ms` in `extra` is also sent as `Retry-After` (whole seconds, at least
    1); a 413 closes the connection (the unread rest of the body must not be parsed as a request)."""
    response = jsonify(error={"code": code, "message": message, **extra})
    response.status_code = status
    if "retry_after_ms" in extra:
        response.headers["Retry-After"] = str(max(1, -(-int(extra["retry_after_ms"]) // 1000)))
    if status == 413:
        response.headers["Connection"] = "close"
    return response


def refused_response(refused: Refused) -> Response:
    """Admission's refusal (broker.admission) in the API's shape: its reason is the error code."""
    extra = {"retry_after_ms": refused.retry_after_ms} if refused.retry_after_ms is not None else {}
    return api_error(refused.http_status, refused.reason, refused.message, **extra)


def redis_unavailable(err: BaseException) -> Response:
    """503 `{"error": {"code": "redis_unavailable", "message", "detail"}}` with `Retry-After: 1`."""
    log.warning("%s %s: Redis unreachable: %r", request.method, request.path, err)
    response = jsonify(unavailable_body(err))
    response.status_code = 503
    response.headers["Retry-After"] = "1"
    return response


def describe(err: HTTPException) -> str:
    """What went wrong, in words that name the limit when there is one."""
    if isinstance(err, RequestEntityTooLarge):
        limit = request.max_content_length
        if limit is not None:
            return f"Request Entity Too Large: the body is over the limit of {limit} bytes"
    return f"{err.name}: {err.description}" if err.description else str(err.name)


def error_response(err: HTTPException) -> Response:
    """A JSON answer for an HTTP error: a JSON-RPC error on the MCP endpoints, else `{"error": ...}`."""
    status = err.code or 500
    if is_mcp_path(request.path):
        code = INTERNAL_ERROR if status >= 500 else INVALID_REQUEST
        response = rpc_error_response(status, RPCError(code, describe(err)))
        if status == 413:
            response.headers["Connection"] = "close"  # the unread rest of the body must not be parsed as a request
    else:
        name = (err.name or "error").lower().replace(" ", "_")
        response = api_error(status, name, err.description or err.name or "error")
    if isinstance(err, MethodNotAllowed) and err.valid_methods:
        response.headers["Allow"] = ", ".join(err.valid_methods)
    return response


def register_errors(app: Flask) -> None:
    """JSON for what no blueprint answered itself (their own handlers run first)."""
    app.json = WireJSONProvider(app)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        return error_response(err)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(InternalServerError(f"the broker failed on this request ({type(err).__name__})"))

    for kind in REDIS_DOWN:  # the API and the MCP endpoints map it in their own catch-all handlers
        app.register_error_handler(kind, redis_unavailable)
    app.after_request(untyped_when_empty)
    json_gunicorn_errors()


def untyped_when_empty(response: Response) -> Response:
    """An answer with no body carries no Content-Type: Flask labels every Response `text/html` by default, so
    its automatic OPTIONS answers (every route) and the 202s of MCP notifications said HTML for nothing."""
    if response.mimetype == "text/html" and not response.is_streamed and response.calculate_content_length() == 0:
        response.headers.remove("Content-Type")
    return response


def _json_write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error` with a JSON body (same status line, headers and non-blocking write)."""
    from gunicorn import util

    code = reason.lower().replace(" ", "_") or "error"
    body = json.dumps({"error": {"code": code, "message": f"{reason}: {mesg}" if mesg else reason}})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, (head + body).encode("latin-1"))


def json_gunicorn_errors() -> None:
    """Under gunicorn (imported by the process serving this app), its own error pages become JSON.

    The web worker calls `util.write_error` by attribute at the moment it answers, so replacing it in the
    worker process (where the app is created: the app is never preloaded) is enough."""
    util = sys.modules.get("gunicorn.util")
    if util is not None and hasattr(util, "write_error") and hasattr(util, "write_nonblock"):
        util.write_error = _json_write_error
