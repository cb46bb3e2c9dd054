"""The web tier's answer while Redis is unreachable: 503 with a JSON error, on every route.

Flask's default would be its HTML 500 page (measured: `GET /v1/batches/<id>` answered 500 while Redis
restarted); a client needs to tell "the broker's Redis is down, retry shortly" from a bug.
"""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from broker.outage import unavailable_body

log = logging.getLogger(__name__)


def redis_unavailable(err: BaseException) -> Response:
    """503 `{"error": {"code": "redis_unavailable", "message", "detail"}}` with `Retry-After: 1`."""
    log.warning("%s %s: Redis unreachable: %r", request.method, request.path, err)
    response = jsonify(unavailable_body(err))
    response.status_code = 503
    response.headers["Retry-After"] = "1"
    return response
