"""The `/mcp` and `/servers/<name>/mcp` Streamable HTTP routes: decide a request's protocol era, hand it on.

The era is decided per request by `broker.protocol.era.era_of_http_request`, as the SDK's own
`StreamableHTTPSessionManager` decides it (header-only routing): an `MCP-Protocol-Version` header naming
a revision outside the handshake set (an unknown one too, so the SDK's classifier can name what is
supported) is the modern era (`http_modern.py`); none, or a handshake revision, is the handshake era with
its sessions (`http_handshake.py`). That call is the only place the HTTP side asks; the table below hands
the request to its era's endpoint, which answers POST, GET and DELETE in its own way.

Whatever goes wrong under these routes, the client gets a JSON-RPC error, never an HTML page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from flask import Blueprint, Flask, Response, request
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST
from werkzeug.exceptions import HTTPException

from broker.outage import is_redis_down, unavailable_error
from broker.protocol import HANDSHAKE, MODERN, Era, RPCError, era_of_http_request
from web.errors import error_response
from web.services import current_services
from web.transports.common import MCP_RULES, catalog_mode_problem, results_query_problem, rpc_error_response
from web.transports.http_handshake import HandshakeEndpoint
from web.transports.http_modern import ModernEndpoint

log = logging.getLogger(__name__)


class EraEndpoint(Protocol):
    """What an era serves on a mount point (`scope`: None for `/mcp`, else the one server's name)."""

    def post(self, scope: str | None) -> Response: ...
    def get(self, scope: str | None) -> Response: ...
    def delete(self, scope: str | None) -> Response: ...


class HttpRoutes:
    """The Streamable HTTP routes of one app: the era table, and the checks every era shares."""

    def __init__(self) -> None:
        self.eras: dict[Era, EraEndpoint] = {HANDSHAKE: HandshakeEndpoint(current_services),
                                             MODERN: ModernEndpoint(current_services)}

    def handler(self, method: str) -> Callable[..., Response]:
        def handle(scope: str | None = None) -> Response:
            if scope is not None and scope not in current_services().config.servers:
                return rpc_error_response(404, RPCError(INVALID_REQUEST, f"Unknown server {scope!r}"))
            problem = catalog_mode_problem()
            if problem is not None:
                return rpc_error_response(400, RPCError(INVALID_REQUEST, problem))
            results_problem = results_query_problem()
            if results_problem is not None:
                return rpc_error_response(400, RPCError(INVALID_REQUEST, results_problem))
            endpoint = self.eras[era_of_http_request(request.headers)]
            return getattr(endpoint, method)(scope)  # type: ignore[no-any-return]

        return handle


def register_http(app: Flask) -> HttpRoutes:
    routes = HttpRoutes()
    blueprint = Blueprint("mcp_http", __name__)
    for rule, suffix in zip(MCP_RULES, ("all", "scoped"), strict=True):
        for method in ("post", "delete", "get"):
            # a plain GET (the SSE stream); werkzeug sends WebSocket upgrades of the same path to the WebSocket rule
            blueprint.add_url_rule(rule, f"{method}_{suffix}", routes.handler(method), methods=[method.upper()])

    @blueprint.errorhandler(Exception)
    def _as_json_rpc(err: Exception) -> Response:
        """Whatever goes wrong, a JSON-RPC client gets a JSON-RPC error, never an HTML page."""
        if isinstance(err, HTTPException):
            return error_response(err)  # e.g. 413: a body over MCP_BROKER_MAX_FRAME_BYTES
        if is_redis_down(err):
            log.warning("%s %s: Redis unreachable: %r", request.method, request.path, err)
            response = rpc_error_response(503, unavailable_error())
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unexpected error on %s %s", request.method, request.path)
        return rpc_error_response(500, RPCError(INTERNAL_ERROR, "Internal error: the broker failed on this request"))

    app.register_blueprint(blueprint)
    return routes
