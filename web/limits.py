"""`max_connections`: how many requests, event streams and WebSockets one API key may hold open at once,
counted across every web process (leases in Redis, broker.leases).

One key holding 3,000 idle sockets (gevent's `worker_connections`) once locked every other client and
the health probes out. So every authenticated request takes a connection lease before its view runs and
gives it back when it ends (a WebSocket or a stream when it closes): past the key's limit it is refused
with a 429 JSON error, before any upgrade. The limit is the key's own `max_connections`, else
`MCP_BROKER_KEY_MAX_CONNECTIONS` (default 1000); without keys (one local user) nothing is counted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from flask import Flask, Response, request

from broker.admission import Admission, Refused
from web.auth import current_principal, is_public
from web.errors import refused_response
from web.services import current_services
from web.transports.common import is_websocket_upgrade

DEFAULT_MAX_CONNECTIONS = 1000
HELD_FOR_AT_MOST_S = 30 * 86400.0  # a lease is released at teardown; this only bounds a bug's damage
LEASE_ENVIRON_KEY = "mcp_broker.connection_lease"


def register_connection_limits(app: Flask, environ: Mapping[str, str] | None = None) -> None:
    """Call after `register_auth`: the caller must be known."""
    env = os.environ if environ is None else environ
    default = int(env.get("MCP_BROKER_KEY_MAX_CONNECTIONS", str(DEFAULT_MAX_CONNECTIONS)))

    @app.before_request
    def _take_connection() -> Response | None:
        keyring = app.config.get("KEYRING")
        if keyring is None or not keyring.enabled or is_public(request.path):
            return None  # without keys there is one (local) user; probes are anonymous
        principal = current_principal()
        admission = Admission(current_services(), principal)
        lease_id = uuid.uuid4().hex
        try:
            if not admission.hold_connection(lease_id, principal.max_connections or default, HELD_FOR_AT_MOST_S):
                return None
        except Refused as refused:
            return refused_response(refused)
        request.environ[LEASE_ENVIRON_KEY] = (admission, lease_id)
        return None

    @app.after_request
    def _hand_to_response(response: Response) -> Response:
        """Given back when the response is closed: after the last byte of an event stream, or when its
        client leaves (a teardown handler would run before a stream has even begun). Not a WebSocket's: its
        view returns only once the socket is closed, and flask-sock's response is never closed under
        gunicorn (it raises StopIteration instead), so the teardown handler gives that one back."""
        if is_websocket_upgrade():
            return response
        held = request.environ.pop(LEASE_ENVIRON_KEY, None)
        if held is not None:
            response.call_on_close(lambda: held[0].release_connection(held[1]))
        return response

    @app.teardown_request
    def _give_connection_back(_error: BaseException | None) -> None:
        held = request.environ.pop(LEASE_ENVIRON_KEY, None)  # no response was made (an error)
        if held is not None:
            held[0].release_connection(held[1])
