"""Authentication at the edge: every MCP handshake and API request, before any work is done.

`Authorization: Bearer <key>` (clients and scripts) or HTTP Basic with the key
as the password (so a browser can open the status page). A refusal is a 401
with a JSON body; it is logged with the peer and the reason, never the key.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from flask import Flask, jsonify, request

from broker.security import ANONYMOUS, KeyRing, Principal

log = logging.getLogger("mcp_broker.auth")

PRINCIPAL_KEY = "mcp_broker.principal"
PUBLIC_PATHS = ("/healthz", "/readyz")


def bearer_of(authorization: str | None) -> str | None:
    """The key as a Bearer header, accepting Basic (any user, key as password) too."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip()).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return f"Bearer {decoded.partition(':')[2]}"
    return authorization


def current_principal() -> Principal:
    return request.environ.get(PRINCIPAL_KEY, ANONYMOUS)


def register_auth(app: Flask, keyring: KeyRing) -> None:
    app.config["KEYRING"] = keyring

    @app.before_request
    def _authenticate() -> Any:
        if not keyring.enabled or request.path in PUBLIC_PATHS:
            return None
        header = request.headers.get("Authorization")
        principal = keyring.authenticate(bearer_of(header))
        if principal is None:
            reason = "no key" if not header else "wrong key"
            log.warning("auth refused: %s %s from %s (%s)", request.method, request.path, request.remote_addr, reason)
            response = jsonify({"error": {"code": "unauthorized",
                                          "message": "Unauthorized: send Authorization: Bearer <API key>"}})
            response.status_code = 401
            scheme = 'Basic realm="mcp-broker"' if request.path.startswith("/status") else "Bearer"
            response.headers["WWW-Authenticate"] = scheme
            return response
        request.environ[PRINCIPAL_KEY] = principal
        return None
