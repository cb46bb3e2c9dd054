"""The broker's HTTP API (`/v1/calls`, `/v1/batches`) from the standard library alone.

`python -m broker call | batch` use it: urllib, not the SDK, so these commands start fast
and need nothing but Python. An HTTP error status is an answer (`request_json` returns it
with the decoded body); an unreachable broker raises `urllib.error.URLError` / `OSError`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_URL_HELP", "auth_headers", "base_url", "request_json", "stream_lines"]

DEFAULT_URL_HELP = "broker base URL (default: $MCP_BROKER_URL, else http://127.0.0.1:$PORT, port 8000)"


def base_url(url: str | None) -> str:
    """`url`, else `$MCP_BROKER_URL`, else this machine's broker on `$PORT` (8000); no trailing slash."""
    default = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    return (url or os.environ.get("MCP_BROKER_URL") or default).rstrip("/")


def auth_headers(key: str | None) -> dict[str, str]:
    """The Bearer header of `key` (else `$MCP_BROKER_API_KEY`); none without a key."""
    key = key or os.environ.get("MCP_BROKER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def request_json(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout: float = 60.0, key: str | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; an HTTP error status is an answer, not an exception."""
    headers = {"Content-Type": content_type, "Accept": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers={**headers, **auth_headers(key)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            return err.code, json.loads(payload)
        except ValueError:
            text = payload.decode("utf-8", "replace").strip()[:300] or str(err.reason)
            return err.code, {"error": {"code": "http_error", "message": text}}


def stream_lines(url: str, key: str | None = None, timeout: float = 120.0) -> Iterator[bytes]:
    """The lines of a streamed response (a batch's results, JSON Lines), keep-alive blank lines left out.

    An error status raises `urllib.error.HTTPError` (its `.code` says which), a lost
    connection `URLError`/`OSError`, at the first line or in the middle of the stream.
    """
    request = urllib.request.Request(url, headers=auth_headers(key))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            if raw.strip():
                yield raw
