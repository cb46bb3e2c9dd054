"""Operations endpoints: `/metrics` (Prometheus), `/readyz`, `/status` (HTML) and `/status.json`.

All of them read the broker-wide state from Redis (`broker.metrics`, `broker.fleet`), so every web
process gives the same answer. `/readyz` is public, like `/healthz` (load balancers and
orchestrators probe it without a key), but shows per-server detail only to admins (`_sees_detail`);
with API keys configured the others need an admin key
(they show every server and tool), sent as `Authorization: Bearer` (Prometheus' `authorization`)
or as the password of HTTP Basic (a browser opening the status page).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from broker import outage
from broker.config import BrokerConfig
from broker.fleet import readiness, scrape_time_metrics, status
from broker.metrics import BrokerCollector
from broker.redisconn import get_redis
from web.auth import current_principal, optional_principal
from web.errors import api_error
from web.origin import allowed_hosts, host_allowed
from web.services import current_services

log = logging.getLogger(__name__)

STATUS_PAGE = Path(__file__).with_name("status.html")
_registries: dict[int, CollectorRegistry] = {}
_lock = threading.Lock()


def _config() -> BrokerConfig:
    return current_app.config["BROKER_CONFIG"]  # type: ignore[no-any-return]


def _admin_page(view: Callable[[], Response]) -> Callable[[], Response]:
    """A page for admins (403 for any other key, when keys are configured) that reads Redis (503 while
    it is unreachable)."""

    @wraps(view)
    def guarded() -> Response:
        keyring = current_app.config.get("KEYRING")
        if keyring is not None and keyring.enabled and not current_principal().admin:
            return api_error(403, "forbidden", "Forbidden: this page needs an admin key")
        try:
            return view()
        except (redis.RedisError, OSError) as err:
            log.warning("ops endpoint: Redis unavailable: %s", err)
            return api_error(503, outage.CODE, f"Redis is unavailable: {type(err).__name__}")

    return guarded


def _sees_detail() -> bool:
    """Whether this `/readyz` caller may see per-server detail (workers, health records, the reasons and the
    redacted stderr of failed backends): an admin key when keys are configured; without keys (loopback
    only) anyone, but only under an allowed Host name, since probes skip the Host check (web/origin.py)
    and a DNS-rebinding page would otherwise read it."""
    keyring = current_app.config.get("KEYRING")
    if keyring is not None and keyring.enabled:
        principal = optional_principal()
        return principal is not None and principal.admin
    return host_allowed(request.headers.get("Host"), allowed_hosts(os.environ, False))


def public_readiness(detail: dict[str, Any]) -> dict[str, Any]:
    """What anyone may know: ready or not, whether Redis answers, how many servers are ready. No server
    names, no backend errors (a backend's stderr once showed its secret here)."""
    servers = detail.get("servers") or {}
    return {"status": detail.get("status"), "redis": {"ok": bool((detail.get("redis") or {}).get("ok"))},
            "servers_ready": sum(1 for s in servers.values() if s.get("ready")), "servers_total": len(servers)}


def _registry(config: BrokerConfig) -> CollectorRegistry:
    """One registry per config object (the app's), whose collector reads Redis at every scrape."""
    key = id(config)
    with _lock:
        if key not in _registries:
            r = get_redis()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(BrokerCollector(r, extra=lambda: scrape_time_metrics(r, config)))
            _registries[key] = registry
        return _registries[key]


def _this_process() -> dict[str, Any]:
    """This web process's part of readiness: it has read the published catalogs (a cold process that had
    not served tools it did not know yet) and listens on its reply channel. Probing does both if needed,
    and asks the workers again for a catalog still missing (at most every few seconds): a backend slower to
    start than its `timeout_s` (a loaded machine) made its worker give up listing it, and nothing asked
    again until a client listed tools; `make run` waited for its banner, a test stack for its fixture."""
    services = current_services()
    try:
        services.catalog.ensure_fresh()
        services.request_missing_catalogs()
        services.hub.start()
    except (redis.RedisError, OSError, RuntimeError) as err:
        return {"ready": False, "catalog_loaded": services.catalog.loaded, "error": f"{type(err).__name__}: {err}"}
    return {"ready": services.catalog.loaded, "catalog_loaded": services.catalog.loaded,
            "catalogs": len(services.catalog.documents), "tools": len(services.catalog.tools),
            "missing": list(services.catalog.missing)}


def register_status(app: Flask) -> None:
    page = STATUS_PAGE.read_text(encoding="utf-8")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        ready, detail = readiness(get_redis(), _config(), web=_this_process())
        return jsonify(detail if _sees_detail() else public_readiness(detail)), 200 if ready else 503

    @app.get("/metrics")
    @_admin_page
    def metrics() -> Response:
        body = generate_latest(_registry(_config()))
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    @app.get("/status.json")
    @_admin_page
    def status_json() -> Response:
        response = jsonify(status(get_redis(), _config()))
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/status")
    @_admin_page
    def status_page() -> Response:
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-store"})
