"""The Flask application factory: `gunicorn -k gevent 'web.app:create_app()'`."""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify
from flask_sock import Sock

from broker.config import load_config
from web.ws import SUBPROTOCOL, register_websocket

MAX_FRAME_BYTES = 16 * 1024 * 1024


def create_app() -> Flask:
    """Validate the config now (a bad file stops start-up with a clear message), wire the endpoints."""
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format=log_format)
    config = load_config()
    app = Flask("mcp_broker")
    app.config["BROKER_CONFIG"] = config
    app.config["SOCK_SERVER_OPTIONS"] = {
        "subprotocols": [SUBPROTOCOL],
        "ping_interval": float(os.environ.get("MCP_BROKER_PING_INTERVAL", "25")),
        "max_message_size": int(os.environ.get("MCP_BROKER_MAX_FRAME_BYTES", str(MAX_FRAME_BYTES))),
    }
    sock = Sock(app)
    register_websocket(app, sock)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify(status="ok", servers=sorted(config.servers))

    return app
