"""The Flask application factory: `gunicorn -k gevent 'web.app:create_app()'`."""

from __future__ import annotations

import contextlib
import logging
import os

from flask import Flask, Response, jsonify
from flask_sock import Sock

from broker.config import load_config
from broker.context.env import results_env
from broker.observe import configure_call_log
from broker.security import load_keyring
from web import services as web_services
from web.admin import register_admin
from web.api import register_api
from web.auth import register_auth, register_loopback_guard
from web.errors import register_errors
from web.limits import register_connection_limits
from web.origin import register_browser_guards
from web.status import register_status
from web.translator import register_translator
from web.transports.http import register_http
from web.transports.ws import SUBPROTOCOL, register_websocket

MAX_FRAME_BYTES = 4 * 1024 * 1024  # a bigger message is refused with -32600 and the socket stays open
HARD_FRAME_FACTOR = 4  # a frame this many times bigger closes the socket (1009): it is not read at all


def create_app() -> Flask:
    """Validate the config now (a bad file stops start-up with a clear message), wire the endpoints."""
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format=log_format)
    configure_call_log("web")  # one bare JSON line per call, apart from the text log
    config = load_config()
    results_env()  # a bad MCP_BROKER_MAX_RESULT_TOKENS / _RESULT_PAGES_TTL_S stops the start here (ConfigError)
    app = Flask("mcp_broker")
    app.config["BROKER_CONFIG"] = config
    max_frame = int(os.environ.get("MCP_BROKER_MAX_FRAME_BYTES", str(MAX_FRAME_BYTES)))
    app.config["SOCK_SERVER_OPTIONS"] = {
        "subprotocols": [SUBPROTOCOL],
        "ping_interval": float(os.environ.get("MCP_BROKER_PING_INTERVAL", "25")),
        "max_message_size": max_frame * HARD_FRAME_FACTOR,
    }
    app.config["MAX_CONTENT_LENGTH"] = max_frame  # an HTTP message's body: 413 over it (/v1 sets its own)
    register_errors(app)  # JSON for every error; 503 JSON while Redis is unreachable (/v1 and /mcp map their own)
    keyring = load_keyring()  # a key setting that holds no key stops the start here (KeysConfigError)
    register_loopback_guard(app, keyring)  # no keys: loopback peers only, whatever gunicorn bound
    register_browser_guards(app)  # Host, Origin, content type: before anything else (web/origin.py)
    register_auth(app, keyring)  # first: nothing is looked at before the caller is known
    register_connection_limits(app)  # per key, across web processes (web/limits.py)
    app.config["ALLOWED_ORIGINS"] = [o for o in os.environ.get("MCP_BROKER_ALLOWED_ORIGINS", "").split(",") if o]
    sock = Sock(app)
    register_websocket(app, sock)
    register_http(app)
    register_api(app)
    register_translator(app)
    register_status(app)
    register_admin(app)
    web_services.config_listeners.append(lambda new: app.config.__setitem__("BROKER_CONFIG", new))

    @app.before_request
    def _config_fresh() -> None:
        """A config reload reaches this process even if its listener missed the announcement."""
        with contextlib.suppress(Exception):  # never fail a request over it
            web_services.check_published_config(web_services.get_services(app.config.get("BROKER_CONFIG")))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", servers=sorted(app.config["BROKER_CONFIG"].servers))

    return app
