"""The `/mcp` WebSocket endpoint (subprotocol `mcp`): one JSON-RPC message per text frame.

The socket's own greenlet/thread only reads frames and hands them to the
protocol; answers to queued calls are written by the reply hub as they
arrive, so many calls are in flight on one socket and come back out of order.

Sessions: the handshake response carries `Mcp-Session-Id`. A client that
reconnects with that id (`Mcp-Session-Id` header or `?session=`), to any web
process, resumes its session; an unknown or expired id is refused with 404
before the upgrade.

Redis unreachable: a new session is saved, and the reply hub subscribed, BEFORE the 101 response, so an
outage is refused with HTTP 503 JSON (`redis_unavailable`). Measured before: the session was saved after
the upgrade, and Flask's HTML 500 page went into the socket (the client saw close 1002). After the
upgrade, a frame that meets an unreachable Redis is answered with a JSON-RPC error naming it; nothing
is ever written to the socket but WebSocket frames.

A socket opened with an OAuth access token is closed (1008, "token expired") at the token's `exp`: a
socket outliving its token would keep a revoked or downgraded user in. Reconnecting with a fresh token
resumes the session (`Mcp-Session-Id`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from typing import Any

import flask_sock
import simple_websocket
from flask import Flask, Response, request
from flask_sock import Sock
from mcp_types import INTERNAL_ERROR
from simple_websocket import ConnectionClosed
from wsproto.events import AcceptConnection

from broker.outage import REDIS_DOWN, is_redis_down, unavailable_error
from broker.protocol import Conversation, RPCError, dumps, text_emitter
from web.auth import current_principal, owned_session
from web.errors import api_error
from web.services import current_services
from web.transports.common import (
    MCP_RULES,
    SESSION_HEADER,
    catalog_mode_problem,
    client_headers,
    is_websocket_upgrade,
    open_socket,
    requested_catalog_mode,
    requested_results,
    results_query_problem,
)

log = logging.getLogger(__name__)

SUBPROTOCOL = "mcp"
SESSION_ENVIRON_KEY = "mcp_broker.session_id"
NEW_SESSION_ENVIRON_KEY = "mcp_broker.session_new"


def requested_session(environ: dict[str, Any]) -> str | None:
    return environ.get("HTTP_MCP_SESSION_ID") or request.args.get("session") or None


class SessionWebSocket(simple_websocket.Server):
    """simple-websocket's server, plus the `Mcp-Session-Id` header on the handshake response
    (simple-websocket has no option for extra response headers)."""

    def __init__(self, environ: dict[str, Any], **kwargs: Any) -> None:
        self.session_id: str = environ.get(SESSION_ENVIRON_KEY) or uuid.uuid4().hex
        super().__init__(environ, **kwargs)

    def choose_subprotocol(self, request: Any) -> str | None:
        chosen = super().choose_subprotocol(request)
        send = self.ws.send
        header = (SESSION_HEADER.encode(), self.session_id.encode())

        def send_with_session(event: Any) -> bytes:
            if isinstance(event, AcceptConnection):
                event = dataclasses.replace(event, extra_headers=[*event.extra_headers, header])
                self.ws.send = send  # type: ignore[method-assign]
            return send(event)

        self.ws.send = send_with_session  # type: ignore[method-assign]
        return chosen


# flask-sock builds `Server(...)` by this module-level name; ours adds the session header.
flask_sock.Server = SessionWebSocket  # type: ignore[misc]


def register_websocket(app: Flask, sock: Sock) -> None:
    @app.before_request
    def _check_upgrade() -> Response | None:
        """Refuse before the upgrade: an unknown server, an unknown session (a foreign origin, DNS rebinding:
        web/origin.py, before this)."""
        upgrade = request.method == "GET" and is_websocket_upgrade()
        # Not `is_mcp_path` on purpose: this pre-upgrade check has always taken any upgrade under `/servers/`
        # (not only `.../mcp`), and the layout change keeps it as it was; the route then decides.
        if not upgrade or not (request.path == "/mcp" or request.path.startswith("/servers/")):
            return None
        services = current_services()
        scope = (request.view_args or {}).get("scope")
        if scope is not None and scope not in services.config.servers:
            return api_error(404, "unknown_server", f"Unknown server {scope!r}")
        problem = catalog_mode_problem()
        if problem is not None:
            return api_error(400, "invalid_catalog_mode", problem)
        results_problem = results_query_problem()
        if results_problem is not None:
            return api_error(400, "invalid_results_query", results_problem)
        wanted = requested_session(request.environ)
        if wanted is None:
            # Touch Redis before the 101: an outage is answered 503 JSON here, not after the upgrade.
            session_id = uuid.uuid4().hex
            services.sessions.create(session_id, {"principal": current_principal().id})
            services.hub.start()
            request.environ[SESSION_ENVIRON_KEY] = session_id
            request.environ[NEW_SESSION_ENVIRON_KEY] = True
            return None
        services.hub.start()
        if owned_session(services, wanted) is None:
            return api_error(404, "unknown_session", f"Unknown or expired session {wanted!r}: initialize a new one")
        request.environ[SESSION_ENVIRON_KEY] = wanted
        return None

    all_servers, one_server = MCP_RULES

    @sock.route(all_servers)
    def mcp_socket(ws: SessionWebSocket) -> None:
        serve(ws, None)

    @sock.route(one_server)
    def server_socket(ws: SessionWebSocket, scope: str) -> None:
        serve(ws, scope)

    def serve(ws: SessionWebSocket, scope: str | None) -> None:
        try:
            services = current_services()
            resumed = request.environ.get(SESSION_ENVIRON_KEY) and not request.environ.get(NEW_SESSION_ENVIRON_KEY)
            state = owned_session(services, ws.session_id) if resumed else None
            connection = Conversation(services, text_emitter(ws.send), ws.session_id, resume=state,
                                      scope=scope, principal=current_principal())
        except Exception as err:  # after the 101: only a frame and a close may go out, never an HTTP page
            _refuse_after_upgrade(ws, err)
            return
        connection.client_headers = client_headers()
        connection.catalog_mode = requested_catalog_mode()
        connection.results_choice = requested_results()
        with open_socket("ws"):
            try:
                if state is not None:
                    log.info("session %s resumed (%d call(s) pending)", ws.session_id, connection.resume())
                expires_at = connection.principal.expires_at
                while True:
                    frame = ws.receive(timeout=None if expires_at is None else max(0.0, expires_at - time.time()))
                    if frame is None:  # only on the timeout: the OAuth token that opened the socket expired
                        ws.close(1008, "token expired: reconnect with a fresh access token")
                        break
                    try:
                        connection.handle_text(frame)
                    except REDIS_DOWN as err:  # e.g. a client's answer that could not be handed on
                        log.warning("socket %s: Redis unreachable: %r", ws.session_id, err)
                        connection.send(unavailable_error().to_message())
                    if connection.expired:  # told why in a JSON-RPC error; the session cannot come back
                        ws.close(1008, "session expired")
                        break
            except ConnectionClosed:
                pass
            except Exception as err:
                _refuse_after_upgrade(ws, err)
            finally:
                connection.close()


def _refuse_after_upgrade(ws: SessionWebSocket, err: Exception) -> None:
    """The socket is open and the conversation cannot go on: a JSON-RPC error saying why, then close 1011."""
    if is_redis_down(err):
        log.warning("socket %s closed: Redis unreachable: %r", ws.session_id, err)
        error, reason = unavailable_error(), "Redis unavailable"
    else:
        log.exception("socket %s failed", ws.session_id)
        error, reason = RPCError(INTERNAL_ERROR, f"Internal error: {type(err).__name__}"), "internal error"
    with contextlib.suppress(Exception):
        ws.send(dumps(error.to_message()))
        ws.close(1011, reason)
