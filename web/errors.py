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
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, RequestEntityTooLarge

from broker import wire

log = logging.getLogger(__name__)

INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603


class WireJSONProvider(DefaultJSONProvider):
    """Flask's JSON, written by `broker.wire.dumps`: never `NaN`, never an unencodable string."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return wire.dumps(obj, **kwargs)


def is_mcp_path(path: str) -> bool:
    return path == "/mcp" or (path.startswith("/servers/") and path.endswith("/mcp"))


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
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": describe(err)}}
    else:
        name = (err.name or "error").lower().replace(" ", "_")
        body = {"error": {"code": name, "message": err.description or err.name or "error"}}
    response = Response(wire.dumps(body), status=status, mimetype="application/json")
    if isinstance(err, MethodNotAllowed) and err.valid_methods:
        response.headers["Allow"] = ", ".join(err.valid_methods)
    if status == 413:
        response.headers["Connection"] = "close"  # the unread rest of the body must not be parsed as a request
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

    json_gunicorn_errors()


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
