"""The broker side of `mcp-broker connect`: one link per connection attempt, over WebSocket or Streamable HTTP.

A link is what the SDK's client transports give: a read stream of `SessionMessage | Exception` and a write
stream of `SessionMessage`, so the bridge (client/bridge.py) forwards messages as they are and never frames
anything itself. The WebSocket link is the project's own `WebSocketTransport`; the HTTP link is the SDK's
`streamable_http_client`. Both carry the broker's session id across links: a new link opened with the id
of the last one resumes that session on any web process (the broker keeps sessions in Redis).

Opening a link either works or raises one of two errors the bridge can act on without a traceback:
`BrokerRefused` (the broker answered and said no: a bad key is 401, an expired session 404) and
`BrokerUnreachable` (nothing answered: refused connection, timeout, DNS). Over HTTP nothing is sent until
the host's first message, so `open` probes the endpoint once (a GET, answered 401 for a bad key and 404 for
an unknown session before anything else) to say the same at start as over WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from client.websocket import SESSION_HEADER, WebSocketTransport

__all__ = ["BrokerRefused", "BrokerUnreachable", "Link", "Upstream", "upstream_for"]

_PROBE_TIMEOUT_S = 10.0
UNKNOWN_SESSION = 404
"""What the broker answers a link that names a session it no longer has (expired, or deleted)."""


class BrokerUnreachable(Exception):
    """Nothing answered at the broker's URL (connection refused, timeout, name not found)."""


class BrokerRefused(Exception):
    """The broker answered the link with an HTTP error: `status` 401/403 for the key, 404 for the session."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Link:
    """One open connection to the broker: the SDK transport's streams, and the session it belongs to."""

    read: ObjectReceiveStream[SessionMessage | Exception]
    write: ObjectSendStream[SessionMessage]
    session_id: Callable[[], str | None]


class Upstream(Protocol):
    """How to reach the broker: `open(session_id)` opens one link (resuming that session when given)."""

    url: str

    def open(self, session_id: str | None) -> AbstractAsyncContextManager[Link]: ...


def _refusal(status: int, body: bytes | str | None) -> BrokerRefused:
    """The broker's own words for a refusal: its JSON error (`{"error": {"message"}}` or a JSON-RPC error)."""
    message = ""
    try:
        data = json.loads(body or b"")
        error = data.get("error") if isinstance(data, dict) else None
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
    except ValueError:
        pass
    return BrokerRefused(status, message or {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(status, ""))


@dataclass
class WebSocketUpstream:
    """`ws://` and `wss://`: the broker's `/mcp` socket, a session resumed by its `Mcp-Session-Id` header."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    open_timeout_s: float = _PROBE_TIMEOUT_S

    @asynccontextmanager
    async def open(self, session_id: str | None) -> AsyncIterator[Link]:
        transport = WebSocketTransport(self.url, headers=self.headers, session_id=session_id,
                                       open_timeout=self.open_timeout_s)
        async with AsyncExitStack() as stack:
            try:
                read, write = await stack.enter_async_context(transport)
            except InvalidStatus as err:
                raise _refusal(err.response.status_code, err.response.body) from None
            except InvalidURI as err:
                raise BrokerUnreachable(f"not a WebSocket URL: {err}") from None
            except (OSError, TimeoutError, InvalidHandshake) as err:
                raise BrokerUnreachable(_describe(err)) from None
            yield Link(read, write, lambda: transport.session_id)


@dataclass
class HttpUpstream:
    """`http://` and `https://`: the broker's Streamable HTTP endpoint, through the SDK's client transport.

    The session id is learnt from the broker's answers (an httpx response hook) and, on a later link, sent
    as a default header of that link's HTTP client: the SDK's transport sends the header it knows, else
    the client's. Such a resumed link has no standalone GET stream (the SDK opens it only after its own
    `initialize`), so notifications tied to no request (`list_changed`) arrive only over WebSocket then."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    session: str | None = None

    @asynccontextmanager
    async def open(self, session_id: str | None) -> AsyncIterator[Link]:
        self.session = session_id
        headers = {**self.headers, **({SESSION_HEADER: session_id} if session_id else {})}

        async def remember_session(response: httpx2.Response) -> None:
            announced = response.headers.get(SESSION_HEADER)
            if announced:
                self.session = announced

        # The SDK's own timeouts for its transport: 30 s to connect or write, a response stream idle 300 s
        client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0),
                                    event_hooks={"response": [remember_session]})
        async with client:
            await self._probe(client, headers)
            async with streamable_http_client(self.url, http_client=client, terminate_on_close=False) as (read, write):
                yield Link(read, write, lambda: self.session)

    async def _probe(self, client: httpx2.AsyncClient, headers: Mapping[str, str]) -> None:
        """One GET before the first message: a bad key (401/403) or unknown session (404) is said now."""
        probe = {**headers, "Accept": "text/event-stream"}
        try:
            async with client.stream("GET", self.url, headers=probe, timeout=_PROBE_TIMEOUT_S) as response:
                status = response.status_code
                if status in (401, 403) or (status == UNKNOWN_SESSION and SESSION_HEADER in headers):
                    raise _refusal(status, await response.aread())
                if status == 404:
                    raise BrokerRefused(404, f"no MCP endpoint at {self.url}")
        except httpx2.HTTPError as err:
            raise BrokerUnreachable(_describe(err)) from None


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 300 else text[:300] + "..."


UPSTREAMS: dict[str, Callable[..., Upstream]] = {
    "ws": WebSocketUpstream,
    "wss": WebSocketUpstream,
    "http": HttpUpstream,
    "https": HttpUpstream,
}
"""URL scheme → the link it takes."""


def upstream_for(url: str, key: str | None = None, **options: Any) -> Upstream:
    """The upstream for a broker URL; `key` goes as `Authorization: Bearer <key>`. ValueError for a URL
    whose scheme is none of `UPSTREAMS`."""
    scheme = urlsplit(url).scheme.lower()
    make = UPSTREAMS.get(scheme)
    if make is None or not urlsplit(url).netloc:
        raise ValueError(f"unsupported broker URL {url!r}: expected ws://, wss://, http:// or https:// "
                         "(e.g. ws://127.0.0.1:8000/mcp)")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return make(url, headers=headers, **options)
