"""`notifications/cancelled` in the modern era over HTTP: a courtesy, honoured on every web process.

The modern era cancels a request by closing its response stream (`web/transports/disconnect.py` notices
that). Some clients also, or only, POST `notifications/cancelled` naming the request (mcp-remote does):
that POST has no session and may reach any web process, while the request it names waits on one of them.
So the POST is answered 202 at once and published on `keys.MODERN_CANCEL_CHANNEL`; every web process's
reply hub hears it, and the one holding a matching request cancels it (its backend call through Redis,
`broker.calls.cancel_call`) and ends its POST without an answer (the cancelled request gets none).

Which request: the same API key's (a key can never cancel another tenant's request: the key id comes
from the authenticated POST, not from the body), on the same endpoint (`/mcp` or `/servers/<name>/mcp`),
with that JSON-RPC id, and, when both name one, from a client of the same name (`clientInfo` in the
envelope): request ids are chosen by each client (mcp-remote counts from 0), so two clients of one key
may both have a request 3 in flight; without keys every local client is the one anonymous principal.
When either side names no client the notice is ambiguous: it cancels only if exactly one request with that
id waits under that key and endpoint on this process, and is otherwise ignored (logged at debug): cancelling
every client's request 0 because one anonymous client gave up on its own would be worse than a wasted call.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys

log = logging.getLogger(__name__)
CLIENT_INFO = "io.modelcontextprotocol/clientInfo"


@dataclass(frozen=True)
class Waiting:
    """One modern request waiting on this process, and how to cancel it."""

    client: str | None
    cancel: Callable[[], None]


_waiting: dict[tuple[str, str, str], list[Waiting]] = {}
_lock = threading.Lock()


def client_name(meta: Any) -> str | None:
    info = meta.get(CLIENT_INFO) if isinstance(meta, dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


def _key(principal: str, scope: str | None, request_id: Any) -> tuple[str, str, str]:
    return principal, scope or "", json.dumps(request_id)


@contextmanager
def cancellable(principal: str, scope: str | None, request_id: Any, client: str | None,
                cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs, a matching `notifications/cancelled` from any web process calls `cancel`."""
    key, entry = _key(principal, scope, request_id), Waiting(client, cancel)
    with _lock:
        _waiting.setdefault(key, []).append(entry)
    try:
        yield
    finally:
        with _lock:
            entries = _waiting.get(key, [])
            if entry in entries:
                entries.remove(entry)
            if not entries:
                _waiting.pop(key, None)


def publish(r: redis.Redis, principal: str, scope: str | None, params: Any) -> None:
    """Tell every web process that `principal` gave up on the request `params.requestId` names."""
    if not isinstance(params, dict) or not isinstance(params.get("requestId"), (str, int)):
        return  # nothing to cancel: a courtesy notification that names no request is ignored
    notice = {"principal": principal, "scope": scope or "", "requestId": params["requestId"],
              "client": client_name(params.get("_meta"))}
    r.publish(keys.MODERN_CANCEL_CHANNEL, json.dumps(notice))


def _matching(entries: list[Waiting], sender: str | None) -> list[Waiting] | None:
    """The requests a notice from client `sender` cancels; None when it could mean several clients' requests."""
    named = [w for w in entries if sender and w.client == sender]
    if named:
        return named  # both sides name the same client: that client's request
    if len(entries) == 1 and not (sender and entries[0].client):
        return entries  # a nameless side, but only one request could be meant
    return None if len(entries) > 1 else []


def on_message(channel: str, data: str) -> None:
    """The reply hub's listener: cancel the matching requests waiting here."""
    if channel != keys.MODERN_CANCEL_CHANNEL:
        return
    try:
        notice = json.loads(data)
        key = _key(str(notice["principal"]), notice["scope"], notice["requestId"])
    except (ValueError, KeyError, TypeError):
        return
    with _lock:
        matching = _matching(_waiting.get(key, []), notice.get("client"))
    if matching is None:
        log.debug("modern cancel: request %s of %s is ambiguous (no client name, several waiting): ignored",
                  notice.get("requestId"), notice.get("principal"))
        return
    for waiting in matching:
        try:
            waiting.cancel()
        except Exception:  # one bad cancel must not stop the hub's thread
            log.exception("modern cancel: cancelling request %s failed", notice.get("requestId"))
