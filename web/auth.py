"""Authentication at the edge: every MCP handshake and API request, before any work is done; and the
session-owner rule (a session belongs to the key that opened it: for any other key it does not exist).

`Authorization: Bearer <key>` (clients and scripts) or HTTP Basic with the key
as the password (so a browser can open the status page). A refusal is a 401
with a JSON body; it is logged with the peer and the reason, never the key.
With OAuth configured (broker.oauth), a bearer that is no key is checked as an
access token: refused with RFC 6750's challenge (web/oauth.py), or 503
`issuer_unavailable` when its authorization server cannot be reached (the token
may be good: a 401 would send a connector through its browser flow again).

With no keys every caller is the anonymous admin, so the app itself serves
loopback peers only (403 for any other), whatever address gunicorn was told to
bind: `gunicorn.conf.py` narrows the bind address too, but gunicorn reads it
only from its working directory (`--chdir` elsewhere, `-c /dev/null`: not at
all). `MCP_BROKER_BIND_HOST` is the operator's explicit opt-out (something in
front of the broker authenticates).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
from typing import Any

from flask import Flask, Response, current_app, request

from broker.oauth.settings import insecure_issuers
from broker.oauth.tokens import IssuerUnavailable, TokenRejected, TokenVerifier
from broker.protocol import Conversation
from broker.security import ANONYMOUS, KeyRing, Principal
from broker.services import BrokerServices
from web.errors import api_error
from web.oauth import accepted_audiences, openapi_security_schemes, refusal, register_resource_metadata
from web.origin import is_loopback

log = logging.getLogger("mcp_broker.auth")

PRINCIPAL_KEY = "mcp_broker.principal"
PUBLIC_PATHS = ("/healthz", "/readyz")
ISSUER_RETRY_MS = 2000  # an authorization server that did not answer: the token may be fine, retry soon


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


def owned_session(services: BrokerServices, session_id: str) -> dict[str, Any] | None:
    """The session's saved state if the caller's key opened it; None for an unknown, expired, deleted or
    another key's session (which a caller cannot tell apart: a session belongs to the key that opened it)."""
    return services.sessions.load_owned(session_id, current_principal().id)


def is_callers(conversation: Conversation) -> bool:
    """The conversation this process holds belongs to the caller's key (the same rule, without Redis)."""
    return conversation.principal.id == current_principal().id


def register_loopback_guard(app: Flask, keyring: KeyRing) -> None:
    """Without keys, refuse every peer that is not on this machine (403), before anything else looks at the
    request: no Host or Origin header makes a remote peer local. Call first."""
    if keyring.enabled:
        return
    loopback_only = not os.environ.get("MCP_BROKER_BIND_HOST")
    log.warning("no API keys configured (MCP_BROKER_API_KEYS / MCP_BROKER_KEYS_FILE): every caller is the "
                "anonymous admin; %s", "serving loopback peers only" if loopback_only else
                "MCP_BROKER_BIND_HOST is set: serving any peer (something in front must authenticate)")
    if not loopback_only:
        return

    @app.before_request
    def _loopback_only() -> Response | None:
        if is_loopback(request.remote_addr):
            return None
        log.warning("refused %s %s from %s: no API keys configured, loopback only",
                    request.method, request.path, request.remote_addr)
        return api_error(403, "forbidden_remote", "Forbidden: this broker has no API keys configured and serves "
                                                  "only its own machine (loopback)")


def is_public(path: str) -> bool:
    """Probes, and the well-known documents (the OAuth metadata a client must read before it has a token; any
    other well-known path is a 404, not a 401: a client probing for metadata learns there is none)."""
    return path in PUBLIC_PATHS or path.startswith("/.well-known/")


def register_auth(app: Flask, keyring: KeyRing) -> None:
    """Keys first (a hash lookup), then, when OAuth is configured, the token as an access token
    (broker.oauth): a refusal then carries the RFC 9728 challenge (web/oauth.py)."""
    app.config["KEYRING"] = keyring
    verifier = TokenVerifier.build(keyring.oauth) if keyring.oauth is not None else None
    app.config["OAUTH_VERIFIER"] = verifier
    register_resource_metadata(app, keyring.oauth)
    if keyring.oauth is not None:  # web/translator.py offers them in /openapi.json
        app.config["OPENAPI_SECURITY_SCHEMES"] = openapi_security_schemes(keyring.oauth)
    for url in insecure_issuers(keyring.oauth) if keyring.oauth is not None else ():
        log.warning("oauth: %s is plain http:// off this machine: its keys and answers can be forged on the "
                    "way; use https://", url)
    exact_hosts = [h for h in os.environ.get("MCP_BROKER_ALLOWED_HOSTS", "").split(",") if h.strip() not in ("", "*")
                   and not h.strip().startswith(".")]
    if keyring.oauth is not None and keyring.oauth.resource is None and not exact_hosts:
        log.warning("oauth: no `resource` (MCP_BROKER_OAUTH_RESOURCE) and no exact MCP_BROKER_ALLOWED_HOSTS name: "
                    "tokens are accepted only on loopback names from loopback peers (the Host header cannot be "
                    "trusted to name this broker); set `resource` to the broker's public URL")

    @app.before_request
    def _authenticate() -> Response | None:
        if not keyring.enabled or is_public(request.path):
            return None
        header = request.headers.get("Authorization")
        bearer = bearer_of(header)
        principal = keyring.authenticate(bearer)
        if principal is None and verifier is not None:
            refused = _by_token(verifier, bearer)
            if refused is not None and request.path.startswith("/status") and keyring.principals:
                # a browser asks for a key only on a Basic challenge: offer both (RFC 9110 §11.6.1)
                refused.headers["WWW-Authenticate"] = f'Basic realm="mcp-broker", {refused.headers["WWW-Authenticate"]}'
            return refused
        if principal is None:
            reason = "no key" if not header else "wrong key"
            log.warning("auth refused: %s %s from %s (%s)", request.method, request.path, request.remote_addr, reason)
            response = api_error(401, "unauthorized", "Unauthorized: send Authorization: Bearer <API key>")
            scheme = 'Basic realm="mcp-broker"' if request.path.startswith("/status") else "Bearer"
            response.headers["WWW-Authenticate"] = scheme
            return response
        request.environ[PRINCIPAL_KEY] = principal
        return None


def optional_principal() -> Principal | None:
    """The caller of a public path (a probe may show more to an admin): its key's or token's principal, None
    for anyone else (no refusal: the path is public)."""
    keyring: KeyRing = current_app.config["KEYRING"]
    bearer = bearer_of(request.headers.get("Authorization"))
    principal = keyring.authenticate(bearer)
    verifier: TokenVerifier | None = current_app.config.get("OAUTH_VERIFIER")
    if principal is None and verifier is not None and bearer and bearer[:7].lower() == "bearer ":
        with contextlib.suppress(TokenRejected, IssuerUnavailable):
            principal = verifier.verify(bearer[7:].strip(), accepted_audiences(verifier.settings, request.path))
    return principal


def _by_token(verifier: TokenVerifier, bearer: str | None) -> Response | None:
    """The caller by its OAuth access token (None: let the request through); else the refusal."""
    settings = verifier.settings
    token = bearer[7:].strip() if bearer and bearer[:7].lower() == "bearer " else ""
    if not token:
        log.warning("auth refused: %s %s from %s (no token)", request.method, request.path, request.remote_addr)
        return refusal(settings, None)
    try:
        principal = verifier.verify(token, accepted_audiences(settings, request.path))
    except TokenRejected as rejected:
        log.warning("auth refused: %s %s from %s (%s: %s)", request.method, request.path, request.remote_addr,
                    rejected.error, rejected.description)
        return refusal(settings, rejected)
    except IssuerUnavailable as err:
        log.warning("auth: %s %s: authorization server unavailable: %s", request.method, request.path, err)
        return api_error(503, "issuer_unavailable", f"Service Unavailable: the token cannot be checked now ({err})",
                         retry_after_ms=ISSUER_RETRY_MS)
    request.environ[PRINCIPAL_KEY] = principal
    return None
