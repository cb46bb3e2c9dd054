"""The `/mcp` WebSocket endpoint (subprotocol `mcp`): one JSON-RPC message per text frame.

The socket's own greenlet/thread only reads frames and hands them to the
protocol; answers to queued calls are written by the reply hub as they
arrive, so many calls are in flight on one socket and come back out of order.

Sessions: the handshake response carries `Mcp-Session-Id`. A client that
reconnects with that id (`Mcp-Session-Id` header or `?session=`), to any web
process, resumes its session; an unknown or expired id is refused with 404
before the upgrade.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import flask_sock
import simple_websocket
from flask import Flask, jsonify, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from wsproto.events import AcceptConnection

from broker.protocol import ClientConnection
from web.services import get_services

log = logging.getLogger(__name__)

SUBPROTOCOL = "mcp"
SESSION_HEADER = "Mcp-Session-Id"
SESSION_ENVIRON_KEY = "mcp_broker.session_id"


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
    def _check_session() -> Any:
        if request.path != "/mcp" or request.method != "GET":
            return None
        wanted = requested_session(request.environ)
        if wanted is None:
            return None
        services = get_services(app.config.get("BROKER_CONFIG"))
        if not services.sessions.exists(wanted):
            body = {"error": {"code": "unknown_session",
                              "message": f"Unknown or expired session {wanted!r}: initialize a new one"}}
            return jsonify(body), 404
        request.environ[SESSION_ENVIRON_KEY] = wanted
        return None

    @sock.route("/mcp")
    def mcp_socket(ws: SessionWebSocket) -> None:
        services = get_services(app.config.get("BROKER_CONFIG"))
        services.hub.start()
        resumed = request.environ.get(SESSION_ENVIRON_KEY)
        state = services.sessions.load(ws.session_id) if resumed else None
        connection = ClientConnection(services, ws.send, ws.session_id, resume=state)
        try:
            if state is not None:
                log.info("session %s resumed (%d call(s) pending)", ws.session_id, connection.resume())
            while True:
                frame = ws.receive()
                if frame is None:
                    break
                connection.handle_text(frame)
        except ConnectionClosed:
            pass
        finally:
            connection.close()
