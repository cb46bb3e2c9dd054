"""What `call` and `batch` share: a POST to the broker's HTTP API whose failure is said on stderr."""

from __future__ import annotations

import sys
import urllib.error
from typing import Any

from client.http_api import request_json


def print_api_error(status: int, payload: Any) -> None:
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    print(f"error ({status} {error.get('code', 'error')}): {error.get('message', payload)}", file=sys.stderr)
    for detail in error.get("details", [])[1:]:
        print(f"  {detail}", file=sys.stderr)


def post_expecting(expected: int, url: str, path: str, body: bytes, content_type: str, timeout: float,
                   key: str | None) -> Any:
    """The decoded answer of a POST to the API, or None after saying on stderr why it failed."""
    try:
        status, payload = request_json("POST", f"{url}{path}", body, content_type, timeout=timeout, key=key)
    except (urllib.error.URLError, OSError) as err:
        print(f"cannot reach the broker at {url}: {getattr(err, 'reason', err)}", file=sys.stderr)
        return None
    if status != expected:
        print_api_error(status, payload)
        return None
    return payload
