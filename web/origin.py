"""Guards against the user's own browser: DNS rebinding (the Host allow-list) and cross-site requests (the
Origin rule, JSON content types), checked for every route before anything else looks at the request.

The threat: a page on another site, open in the browser of someone who can reach the broker (on
localhost, or on an internal network), makes that browser talk to the broker.

- **DNS rebinding.** The page's own name is made to resolve to 127.0.0.1: the browser then treats the
  broker as the page's own origin and lets it read the answers. What gives it away is the `Host`
  header, which still names the attacker's domain. So only allow-listed `Host` names are served
  (`MCP_BROKER_ALLOWED_HOSTS`; by default, when no API keys are set, the loopback names). With keys,
  any host is served unless the variable says otherwise: the attacker's page cannot send a key the
  browser only holds for the broker's own origin. `/healthz` and `/readyz` are exempt (probes reach a
  pod by its IP; they are public and show nothing of a backend, web/status.py).
- **Cross-site requests.** A browser sends `Origin` on every cross-origin POST/DELETE and on WebSocket
  handshakes; those are refused (403) unless the origin is allowed (`MCP_BROKER_ALLOWED_ORIGINS`,
  default the loopback origins), on every route, not only `/mcp`. And a page can send a cross-origin
  POST without asking first (no CORS preflight) only as a form or `text/plain`: so the JSON routes accept
  only a JSON content type (JSON Lines for `/v1/batches`), which a browser sends cross-origin only after
  a preflight the broker never grants.

This is the only Origin and Host check: the MCP transports (`web/transports/`) rely on it, since it
runs before any route (an MCP endpoint is checked on every method, not only the state-changing ones).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from flask import Flask, Response, request
from mcp_types import INVALID_REQUEST

from broker.batch_input import JSONL_MIMETYPES
from broker.protocol import RPCError
from web.errors import api_error
from web.transports.common import is_mcp_path, is_websocket_upgrade, rpc_error_response

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
PROBE_PATHS = ("/healthz", "/readyz")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
JSON = frozenset({"application/json"})
JSON_BODIES: dict[str, frozenset[str]] = {  # POST route → the content types its body may have
    "/v1/calls": JSON,
    "/v1/batches": JSON | JSONL_MIMETYPES,
}
JSON_BODY_PREFIXES: dict[str, frozenset[str]] = {"/v1/tools/": JSON}  # POST /v1/tools/<name> (web/translator.py)


def json_body_types(path: str) -> frozenset[str] | None:
    """The content types a POST to `path` may have, or None if the route does not restrict them."""
    return JSON_BODIES.get(path) or next((types for prefix, types in JSON_BODY_PREFIXES.items()
                                          if path.startswith(prefix)), None)


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """A browser page may only reach us from an allowed origin (default: loopback). No `Origin`: not a
    browser, or a same-origin GET."""
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = urlsplit(origin).hostname or ""
    return not allowed and host in LOOPBACK_HOSTS


def is_loopback(remote_addr: str | None) -> bool:
    """A peer on this machine: 127.0.0.0/8, ::1 (or IPv4-mapped), or a Unix socket (no address)."""
    if not remote_addr:
        return True  # a Unix socket: only this machine can connect
    try:
        address = ipaddress.ip_address(remote_addr.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def host_name(host_header: str | None) -> str | None:
    """The name of a `Host` header (`[::1]:8000` → `::1`), lower-cased; None if it is not one."""
    if not host_header:
        return None
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None


def host_allowed(host_header: str | None, allowed: tuple[str, ...] | None) -> bool:
    """`allowed` None = any host; `.example.com` allows its subdomains; `*` anything."""
    if allowed is None or "*" in allowed:
        return True
    name = host_name(host_header)
    if not name:
        return False
    return any(name == entry or (entry.startswith(".") and name.endswith(entry)) for entry in allowed)


def allowed_hosts(environ: Mapping[str, str], keys_enabled: bool) -> tuple[str, ...] | None:
    """`MCP_BROKER_ALLOWED_HOSTS` (comma separated), else loopback without keys and any host with them."""
    configured = [h.strip().lower() for h in environ.get("MCP_BROKER_ALLOWED_HOSTS", "").split(",") if h.strip()]
    if configured:
        return tuple(h.strip("[]") for h in configured)
    return None if keys_enabled else LOOPBACK_HOSTS


def _refuse(status: int, code: str, message: str) -> Response:
    """JSON-RPC shaped on the MCP endpoints (their clients read those), the API's shape elsewhere."""
    if is_mcp_path(request.path) and not is_websocket_upgrade():
        return rpc_error_response(status, RPCError(INVALID_REQUEST, message))
    return api_error(status, code, message)


def register_browser_guards(app: Flask, environ: Mapping[str, str] | None = None) -> None:
    """Check Host, Origin and content type of every request first. Call before `register_auth`."""
    env = os.environ if environ is None else environ

    @app.before_request
    def _browser_guards() -> Response | None:
        keyring = app.config.get("KEYRING")
        hosts = allowed_hosts(env, bool(keyring is not None and keyring.enabled))
        if request.path not in PROBE_PATHS and not host_allowed(request.headers.get("Host"), hosts):
            return _refuse(421, "host_not_allowed", "Misdirected Request: this broker does not serve the host "
                                                    f"{request.headers.get('Host')!r} (MCP_BROKER_ALLOWED_HOSTS)")
        changes_state = request.method not in SAFE_METHODS or is_websocket_upgrade()
        origins = [o.strip() for o in app.config.get("ALLOWED_ORIGINS", []) if o.strip()]
        if (changes_state or is_mcp_path(request.path)) and not origin_allowed(request.headers.get("Origin"), origins):
            return _refuse(403, "forbidden_origin", "Forbidden: origin not allowed")
        accepted = json_body_types(request.path) if request.method == "POST" else None
        if accepted is not None and request.mimetype not in accepted:
            return _refuse(415, "unsupported_media_type", f"Unsupported Media Type: {request.path} takes "
                                                          f"{' or '.join(sorted(accepted))}, not "
                                                          f"{request.mimetype or 'a body without a type'!r}")
        return None
