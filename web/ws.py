"""The `/mcp` WebSocket endpoint (subprotocol `mcp`): one JSON-RPC message per text frame.

The socket's own greenlet/thread only reads frames and hands them to the
protocol; answers to queued calls are written by the reply hub as they
arrive, so many calls are in flight on one socket and come back out of order.
"""

from __future__ import annotations

import logging

from flask import Flask
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from broker.protocol import ClientConnection
from web.services import get_services

log = logging.getLogger(__name__)

SUBPROTOCOL = "mcp"


def register_websocket(app: Flask, sock: Sock) -> None:
    @sock.route("/mcp")
    def mcp_socket(ws) -> None:  # type: ignore[no-untyped-def]
        services = get_services(app.config.get("BROKER_CONFIG"))
        services.hub.start()
        connection = ClientConnection(services, ws.send)
        try:
            while True:
                frame = ws.receive()
                if frame is None:
                    break
                connection.handle_text(frame)
        except ConnectionClosed:
            pass
        finally:
            connection.close()
