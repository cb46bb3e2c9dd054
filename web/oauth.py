"""What a hosted connector sees of the broker as an OAuth 2.1 resource server (MCP authorization spec).

- Protected Resource Metadata (RFC 9728), public JSON, at `/.well-known/oauth-protected-resource` (the
  broker as a whole) and at the path-suffixed forms the spec names for each MCP endpoint:
  `/.well-known/oauth-protected-resource/mcp` and `/.well-known/oauth-protected-resource/servers/<name>/mcp`.
  Each names its `resource` (the endpoint's own URL: RFC 9728 §3.3 wants the identifier the well-known
  URL was formed from), the trusted `authorization_servers` and the `scopes_supported`.
- The 401 challenge: `WWW-Authenticate: Bearer resource_metadata="…"` (the metadata of the path asked
  for), with `scope` when scopes are required and `error="invalid_token"` when a token was sent but is
  no good, on every protected path (both MCP transports, /v1, /status…); 403 `insufficient_scope` the same.

The resource identifier's base is the `resource` setting, else the request's own scheme and host (for
audiences only under an exact `MCP_BROKER_ALLOWED_HOSTS` name, never `*` or a `.example.com` wildcard, or
a loopback name sent by a loopback peer: `host_names_this_broker`). Behind a proxy
that terminates TLS, set it (`MCP_BROKER_OAUTH_RESOURCE=https://broker.example.com`), or the metadata
names `http://` and audiences will not match. A token is accepted on a path when its `aud` names
the base, the whole broker's `/mcp`, the path's own endpoint, or one of `audiences`: a token for one
server's endpoint works there only; one for `/mcp` works on every endpoint (its allow-list still decides).
"""

from __future__ import annotations

import os
import re
from typing import Any

from flask import Flask, Response, jsonify, request

from broker.oauth.settings import OAuthSettings
from broker.oauth.tokens import TokenRejected
from web.errors import api_error
from web.origin import LOOPBACK_HOSTS, allowed_hosts, host_name, is_loopback

WELL_KNOWN = "/.well-known/oauth-protected-resource"
MCP_PATH = re.compile(r"^/(?:mcp|servers/[^/]+/mcp)$")


def base_url(settings: OAuthSettings) -> str:
    return settings.resource or f"{request.scheme}://{request.host}"


def resource_of(settings: OAuthSettings, path: str) -> str:
    """The resource identifier of an endpoint: its URL for an MCP endpoint, the base for anything else."""
    return base_url(settings) + (path if MCP_PATH.match(path) else "")


def metadata_url(settings: OAuthSettings, path: str) -> str:
    return base_url(settings) + WELL_KNOWN + (path if MCP_PATH.match(path) else "")


def host_names_this_broker() -> bool:
    """Whether the `Host` header (which the client writes) may name this broker's URL: an exact name of
    `MCP_BROKER_ALLOWED_HOSTS`, or a loopback name sent by a loopback peer. Never `*` or a `.example.com`
    wildcard: under those any name passes the Host guard, so the header would pick the audience."""
    name = host_name(request.headers.get("Host"))
    if not name:
        return False
    if name in LOOPBACK_HOSTS:
        return is_loopback(request.remote_addr)
    exact = [h for h in allowed_hosts(os.environ, True) or () if h != "*" and not h.startswith(".")]
    return name in exact


def accepted_audiences(settings: OAuthSettings, path: str) -> list[str]:
    """What a token's `aud` may name on this path. Without a `resource` setting the broker's own URL comes
    from the `Host` header: trusted only as `host_names_this_broker` says, else a token minted for another
    resource of the same issuer would pass under that resource's host name. Under any other Host only
    `audiences` are accepted."""
    if settings.resource is None and not host_names_this_broker():
        return list(settings.audiences)
    base = base_url(settings)
    return list(dict.fromkeys([base, f"{base}/", f"{base}/mcp", resource_of(settings, path), *settings.audiences]))


def openapi_security_schemes(settings: OAuthSettings) -> dict[str, Any]:
    """What `/openapi.json` offers beside the bearer key: one `openIdConnect` scheme per trusted issuer (its
    OIDC discovery URL, OpenID Connect Discovery §4), so a generated client or tool host can find the
    authorization and token endpoints. Built from the settings alone: no issuer is fetched at start."""
    return {f"oauth{index if index > 1 else ''}": {
        "type": "openIdConnect", "description": f"an OAuth access token from {issuer.issuer}",
        "openIdConnectUrl": issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"}
        for index, issuer in enumerate(settings.issuers, start=1)}


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(settings: OAuthSettings, rejected: TokenRejected | None = None) -> str:
    """The `WWW-Authenticate` value for this request's path (RFC 6750 §3, RFC 9728 §5.1)."""
    params = [("resource_metadata", metadata_url(settings, request.path))]
    if settings.scopes_required or (rejected is not None and rejected.error == "insufficient_scope"):
        params.append(("scope", " ".join(settings.scopes_required or settings.scopes_supported)))
    if rejected is not None:
        params += [("error", rejected.error), ("error_description", rejected.description[:300])]
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in params if value)


def refusal(settings: OAuthSettings, rejected: TokenRejected | None) -> Response:
    """401 (no token, or a bad one) or 403 (insufficient scope): JSON body, RFC 6750 challenge."""
    if rejected is None:
        response = api_error(401, "unauthorized", "Unauthorized: send Authorization: Bearer <API key or OAuth "
                                                  "access token>; how to get a token: "
                                                  f"{metadata_url(settings, request.path)}")
    else:
        words = "Unauthorized" if rejected.http_status == 401 else "Forbidden"
        response = api_error(rejected.http_status, rejected.error, f"{words}: {rejected.description}")
    response.headers["WWW-Authenticate"] = challenge(settings, rejected)
    return response


def register_resource_metadata(app: Flask, settings: OAuthSettings | None) -> None:
    """The RFC 9728 documents (public: a client reads them before it has a token). Without OAuth the paths
    stay unmatched (404 JSON)."""
    if settings is None:
        return

    def document(path: str) -> Response:
        body = {"resource": resource_of(settings, path),
                "authorization_servers": [i.issuer for i in settings.issuers],
                "bearer_methods_supported": ["header"],
                "resource_name": "mcp-broker"}
        if settings.scopes_supported:
            body["scopes_supported"] = list(settings.scopes_supported)
        response = jsonify(body)
        response.headers["Access-Control-Allow-Origin"] = "*"  # public metadata; browser-based clients read it
        response.headers["Cache-Control"] = "max-age=300"
        return response

    @app.get(WELL_KNOWN)
    def _resource_metadata() -> Response:
        return document("")

    @app.get(f"{WELL_KNOWN}/mcp")
    def _resource_metadata_mcp() -> Response:
        return document("/mcp")

    @app.get(f"{WELL_KNOWN}/servers/<name>/mcp")
    def _resource_metadata_server(name: str) -> Response:
        return document(f"/servers/{name}/mcp")
