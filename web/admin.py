"""`POST /v1/admin/reload`: reload `mcp_servers.json` on every process of the broker (admin keys only).

The same as `SIGHUP` to a worker: the file is validated here, and only a valid
one is published (broker/reload.py); a bad file is answered with what is wrong
and where, and the running config keeps serving.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify

from broker import reload
from broker.config import ConfigError
from web.auth import current_principal
from web.errors import api_error
from web.services import apply_published_config, current_services

admin = Blueprint("admin", __name__, url_prefix="/v1/admin")


@admin.post("/reload")
def reload_config() -> Response:
    principal = current_principal()
    if not principal.admin:
        return api_error(403, "forbidden", f"Forbidden: key {principal.id!r} is not an admin key")
    services = current_services()
    try:
        result = reload.reload_from_file(services.redis, services.config)
    except ConfigError as err:
        return api_error(400, "invalid_config", f"Config rejected; the running one keeps serving: {err}")
    apply_published_config(services)  # this process at once; the others on the announcement
    current_app.config["BROKER_CONFIG"] = services.config
    return jsonify(result)


def register_admin(app: Flask) -> None:
    app.register_blueprint(admin)
