"""Plain `tools/call` straight over a backend session's SDK transport streams.

The SDK transport frames every message (stdio lines, Streamable HTTP POSTs and their SSE or JSON answers);
its `ClientSession` then runs each request through layers a forwarded call does not need: the request as a
model and dumped again, a memory stream, a tracing span and a clock per request in its dispatcher, and the
result validated into a model the worker dumps back to the dict the backend sent. Over one warm stdio
session, 16 calls in flight (examples/servers/probe.py `whoami`, this box): the SDK `Client.call_tool` costs
1.10-1.16 client CPU-ms per call, its dispatcher's `send_raw_request` alone 0.83-0.89, the transport's own
streams 0.51-0.64. So a plain call (no progress asked, handshake era) is written here as one JSON-RPC request
on the session's write stream, and its answer is taken off the read stream before the session sees it
(`claim`, from `workers.streams.HeardReadStream`); the session keeps everything else: the handshake, a
backend's own requests and notifications, pings, progress, every other method.

What the session did for such a call is kept, in the same words: ids from the session's own counter (one
sequence: never a collision, and small numbers, which servers that parse an id as a 32-bit integer need);
`_meta` without its null values; a JSON-RPC error raised as the SDK's `MCPError`; a session that stops
reading (closed, its transport ended) fails the waiting calls with `CONNECTION_CLOSED` at once, and a lane
once closed stays closed; a call cancelled after its request was written tells the backend
(`notifications/cancelled`, through the session); and the result passes the session's own checks for the
negotiated revision before its wire dict is returned. Where the SDK lacks what the lane takes from it (its
dispatcher's id counter), the lane stays closed and every call takes the SDK's path.

Modern-era (2026-07-28) sessions stay on the SDK's path: each of their requests carries the era's envelope
(`_meta`, headers), and there a backend may answer with its own task (`workers.backends.upstream_tasks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from mcp.client.session import _later_revision_fields  # the session's own rule (pinned SDK: mcp==2.3.0)
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    CallToolResult,
    CancelledNotification,
    CancelledNotificationParams,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types import methods as sdk_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from broker.calls import TOOLS_CALL
from workers.backends.methods import dump

CANCEL_WRITE_TIMEOUT_S = 5.0  # as the SDK's courtesy cancel (`_ABANDON_WRITE_TIMEOUT`)


def settled(raw: dict[str, Any], version: str) -> dict[str, Any]:
    """A tools/call result after the checks `ClientSession.send_request` makes (the negotiated revision's
    surface, a later revision's keys dropped, the result model), as its wire dict (`methods.dump`)."""
    sdk_methods.validate_server_result(TOOLS_CALL, version, raw)
    foreign = _later_revision_fields(TOOLS_CALL, version)
    if not foreign.isdisjoint(raw):
        raw = {key: value for key, value in raw.items() if key not in foreign}
    return dump(CallToolResult.model_validate(raw, by_name=False))


class FastLane:
    """The plain-call path of one backend session (one SDK client, one transport)."""

    def __init__(self) -> None:
        self._next_id: Callable[[], int] | None = None  # the session's own id counter
        self._ended = False
        self.calls = 0  # plain calls written on this lane (tests tell the paths apart by it)
        self._waiting: dict[Any, asyncio.Future[Any]] = {}
        self._write: Any = None  # the session's write stream (`workers.streams.CheckedWriteStream`)
        self._session: Any = None  # the SDK `ClientSession` that says a cancellation
        self._version: str | None = None  # None: closed, or a modern session (the SDK's path)
        self._metadata: ClientMessageMetadata | None = None
        self.client: Any = None  # the SDK `Client` whose lane this is

    def attach(self, write_stream: Any) -> None:
        """The transport's write stream, as the session gets it."""
        self._write = write_stream

    def open(self, client: Any) -> None:
        """`client` has shaken hands: plain calls take this lane from now on, unless its era is modern."""
        version = client.protocol_version
        self.client, self._session = client, client.session
        self._next_id = getattr(getattr(client.session, "_dispatcher", None), "_allocate_id", None)
        if version in MODERN_PROTOCOL_VERSIONS or self._write is None or self._next_id is None or self._ended:
            return
        self._version = version
        # what the SDK's handshake stamp puts on every request (a Streamable HTTP transport sends it)
        self._metadata = ClientMessageMetadata(headers={MCP_PROTOCOL_VERSION_HEADER: version})

    def serves(self, client: Any) -> bool:
        return self._version is not None and client is self.client

    def claim(self, item: Any) -> bool:
        """Take `item` (read from the transport) if it answers one of this lane's calls."""
        if not self._waiting:
            return False
        message = getattr(item, "message", None)
        if not isinstance(message, JSONRPCResponse | JSONRPCError) or message.id is None:
            return False
        waiter = self._waiting.pop(coerce_request_id(message.id), None)
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_result(message)
        return True

    def close(self) -> None:
        """The transport ended: every waiting call fails as the SDK's would (`CONNECTION_CLOSED`)."""
        self._version, self._ended = None, True
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(MCPError(code=CONNECTION_CLOSED, message="Connection closed"))

    async def call_tool(self, params: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
        """One tools/call (`params`: its `name` and `arguments`); the result's wire dict."""
        version, next_id = self._version, self._next_id
        if version is None or next_id is None:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        request_id = next_id()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        meta = {key: value for key, value in (meta or {}).items() if value is not None}
        out = {"name": params["name"], "arguments": params["arguments"], **({"_meta": meta} if meta else {})}
        written = False
        try:
            request = JSONRPCRequest(jsonrpc="2.0", id=request_id, method=TOOLS_CALL, params=out)
            await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled before the write: nothing to tell
            written = True  # a write interrupted by cancellation may still have gone out (as the SDK counts it)
            self.calls += 1
            await self._write.send(SessionMessage(request, metadata=self._metadata))
            answer = await waiter
        except anyio.get_cancelled_exc_class():
            if written:
                await self._say_cancelled(request_id)
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(answer, JSONRPCError):
            raise MCPError(code=answer.error.code, message=answer.error.message, data=answer.error.data)
        return settled(answer.result, version)

    async def _say_cancelled(self, request_id: int) -> None:
        """Tell the backend to stop (the SDK's courtesy cancel; on a closed transport the session drops it)."""
        notification = CancelledNotification(params=CancelledNotificationParams(request_id=request_id,
                                                                                reason="caller cancelled"))
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_WRITE_TIMEOUT_S):
            await self._session.send_notification(notification)
