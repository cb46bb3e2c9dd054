"""The SDK's missing WebSocket transport: `mcp.Client` talks to the broker over one socket.

The broker speaks MCP JSON-RPC over WebSocket because one long-lived socket can carry
thousands of concurrent calls without an HTTP round trip (or an SSE stream) per call.
The official `mcp` 2.x SDK ships stdio and Streamable HTTP transports but no WebSocket
one, so `WebSocketTransport` fills that gap; everything above the wire (the handshake,
request ids, timeouts, cancellation, progress) stays the SDK's job, so the broker sees
exactly what any other MCP client would send.

The transport is built on `websockets`' asyncio client, so it runs on the asyncio backend
of anyio only (which is what `asyncio.run` and the sync client use).

Only the SDK's public names are used: `mcp.client.Transport` is the protocol implemented
here. Its streams' alias (`TransportStreams`) lives in the private `mcp.client._transport`,
so the streams are typed by what this module really creates, anyio's memory object streams,
which the SDK documents as satisfying its `ReadStream`/`WriteStream` protocols.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.typing import Subprotocol

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_OPEN_TIMEOUT_S",
    "SESSION_HEADER",
    "SUBPROTOCOL",
    "Streams",
    "WebSocketTransport",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "mcp"
"""WebSocket subprotocol offered in the handshake."""

SESSION_HEADER = "Mcp-Session-Id"
"""Handshake header carrying the broker's session id (same name as Streamable HTTP uses)."""

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""Largest inbound frame accepted; websockets' own 1 MiB default is too small for big tool results."""

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_CLOSE_TIMEOUT_S = 5.0

_WRITER_FLUSH_TIMEOUT_S = 0.5
"""Time the writer gets at shutdown to send messages the session already handed over."""

_FRAME_PREVIEW = 200

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
"""The session's (read, write) streams: what `mcp.client.Transport.__aenter__` hands to `mcp.Client`."""


# --------------------------------------------------------------------------- transport


def _parse_frame(frame: str | bytes) -> list[SessionMessage | Exception]:
    """Turn one WebSocket frame into session items; parse errors become values, never raises.

    A frame is one JSON-RPC message, or a JSON array (a JSON-RPC batch) whose elements
    are delivered one by one; a bad element costs only itself.
    """
    stripped = frame.lstrip()
    if stripped[:1] not in ("[", b"["):
        try:
            return [SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(frame, by_name=False))]
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            logger.warning("Unparseable frame from the server (%s): %.*r", _summary(exc), _FRAME_PREVIEW, frame)
            return [exc]
    try:
        batch = json.loads(frame)
    except ValueError as exc:
        logger.warning("Unparseable batch frame from the server (%s): %.*r", _summary(exc), _FRAME_PREVIEW, frame)
        return [exc]
    if not batch:
        return [ValueError("empty JSON-RPC batch from the server")]
    items: list[SessionMessage | Exception] = []
    for element in batch:
        try:
            items.append(SessionMessage(mcp_types.jsonrpc_message_adapter.validate_python(element, by_name=False)))
        except ValidationError as exc:
            logger.warning("Invalid batch element from the server (%s): %.*r", _summary(exc), _FRAME_PREVIEW, element)
            items.append(exc)
    return items


def _summary(exc: ValueError) -> str:
    """One line for the log; the full error still reaches the session as the read-stream item."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0] if exc.error_count() else {"msg": str(exc)}
        return f"{exc.error_count()} validation error(s), first: {first['msg']}"
    return str(exc)


class WebSocketTransport:
    """MCP client transport over one WebSocket: one JSON-RPC message per text frame.

    It implements the SDK's public `mcp.client.Transport` protocol, so `mcp.Client`
    (and `ClientSession`) run unchanged on top of it; the transport only carries frames and
    keeps the session's view of the connection honest: a bad frame is reported as an
    `Exception` on the read stream instead of killing the connection, and a closed socket
    ends the read stream so pending requests fail with CONNECTION_CLOSED instead of hanging.

    `session_id` is what the broker announced in the handshake's `Mcp-Session-Id` response
    header (None when it sent none); pass it back as `session_id=` to a new transport to
    ask the broker to resume that session. Before the connection opens it holds the value
    given to the constructor.

    An instance connects once; build a new one to reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        session_id: str | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT_S,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S,
        **connect_options: Any,
    ) -> None:
        """Describe the connection; nothing is opened until the transport is entered.

        Args:
            url: `ws://` or `wss://` URL of the broker's MCP endpoint.
            headers: Extra handshake headers, e.g. `{"Authorization": "Bearer ..."}`.
            session_id: Session to resume, sent as the `Mcp-Session-Id` request header.
            max_size: Largest inbound frame in bytes (None: unlimited).
            open_timeout: Seconds allowed for TCP connect + TLS + WebSocket handshake.
            close_timeout: Seconds allowed for the closing handshake.
            **connect_options: Passed to `websockets.asyncio.client.connect` (e.g. `ssl`,
                `proxy`, `ping_interval`).
        """
        self.url = url
        self.session_id: str | None = session_id
        self.subprotocol: str | None = None
        self._headers: dict[str, str] = dict(headers or {})
        if session_id is not None:
            self._headers[SESSION_HEADER] = session_id
        self._max_size = max_size
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._connect_options = connect_options
        self._cm: AbstractAsyncContextManager[Streams] | None = None
        self._used = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, session_id={self.session_id!r})"

    async def __aenter__(self) -> Streams:
        """Open the WebSocket and return the session's (read, write) streams."""
        if self._used:
            raise RuntimeError("WebSocketTransport connects once; create a new transport to reconnect")
        self._used = True
        cm = self._connect()
        streams = await cm.__aenter__()
        self._cm = cm
        return streams

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the WebSocket (closing handshake included) and release the streams."""
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(exc_type, exc_val, exc_tb)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[Streams]:
        ws = await connect(
            self.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            additional_headers=self._headers or None,
            max_size=self._max_size,
            open_timeout=self._open_timeout,
            close_timeout=self._close_timeout,
            **self._connect_options,
        )
        # No awaits between the open socket and the task group, or a cancellation could leak it.
        response = ws.response
        self.session_id = response.headers.get(SESSION_HEADER) if response is not None else None
        self.subprotocol = ws.subprotocol

        # Unbuffered, like the SDK's stdio transport: the socket is read no faster than the session consumes.
        read_stream_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_stream_reader = anyio.create_memory_object_stream[SessionMessage](0)
        writer_done = anyio.Event()
        shutting_down = False

        async def ws_reader() -> None:
            try:
                async with read_stream_writer:
                    async for frame in ws:
                        for item in _parse_frame(frame):
                            try:
                                await read_stream_writer.send(item)
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return  # the session is gone
            except ConnectionClosed as exc:
                # Abnormal closure (ConnectionClosedOK ends the loop silently). Either way the read
                # stream is now closed, which the session treats as EOF.
                if not shutting_down:
                    _log_close(exc, self._max_size)
            except anyio.ClosedResourceError:
                pass

        async def ws_writer() -> None:
            try:
                async with write_stream_reader:
                    async for session_message in write_stream_reader:
                        # Same serialization as the SDK's own transports.
                        await ws.send(session_message.message.model_dump_json(by_alias=True, exclude_unset=True))
            except ConnectionClosed:
                # The reader sees the same closure and ends the read stream; leaving this loop closes
                # the write side, so later sends fail fast (CONNECTION_CLOSED) instead of blocking.
                pass
            finally:
                writer_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ws_reader)
            tg.start_soon(ws_writer)
            try:
                yield read_stream, write_stream
            finally:
                shutting_down = True
                # Shielded and bounded: a cancelled caller must still close the socket, never hang on it.
                with anyio.CancelScope(shield=True):
                    write_stream.close()
                    with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT_S):
                        await writer_done.wait()
                    read_stream.close()
                    with anyio.move_on_after((self._close_timeout or DEFAULT_CLOSE_TIMEOUT_S) + 1):
                        await ws.close()
                tg.cancel_scope.cancel()
        for stream in (read_stream, write_stream, read_stream_writer, write_stream_reader):
            stream.close()


def _log_close(exc: ConnectionClosed, max_size: int | None) -> None:
    if isinstance(exc, ConnectionClosedOK):
        return
    received = exc.rcvd
    code = received.code if received is not None else None
    if exc.sent is not None and exc.sent.code == 1009:
        logger.error("Closed the WebSocket: a frame from the server exceeded max_size=%s bytes", max_size)
    else:
        logger.warning("WebSocket to the MCP server closed abnormally (code %s): %s", code, exc)
