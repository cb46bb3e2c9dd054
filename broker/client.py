"""Talk to the broker from Python: a WebSocket transport for the `mcp` SDK, plus thin clients.

The broker speaks MCP JSON-RPC over WebSocket because one long-lived socket can carry
thousands of concurrent calls without an HTTP round trip (or an SSE stream) per call.
The official `mcp` 2.x SDK ships stdio and Streamable HTTP transports but no WebSocket
one, so `WebSocketTransport` fills that gap; everything above the wire (the handshake,
request ids, timeouts, cancellation, progress) stays the SDK's job, so the broker sees
exactly what any other MCP client would send.

`AsyncMCPBrokerClient` and `MCPBrokerClient` exist because most callers only want "call
this tool, give me the result": the sync one lets a script or a notebook do that in one
line, without owning an event loop.

The transport is built on `websockets`' asyncio client, so it runs on the asyncio backend
of anyio only (which is what `asyncio.run` and the sync client use).
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import anyio
import anyio.abc
import mcp_types
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, MCPError
from mcp.client._transport import TransportStreams
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.typing import Subprotocol

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT_S",
    "SESSION_HEADER",
    "SUBPROTOCOL",
    "AsyncMCPBrokerClient",
    "MCPBrokerClient",
    "WebSocketTransport",
    "text",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SUBPROTOCOL = "mcp"
"""WebSocket subprotocol offered in the handshake."""

SESSION_HEADER = "Mcp-Session-Id"
"""Handshake header carrying the broker's session id (same name as Streamable HTTP uses)."""

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""Largest inbound frame accepted; websockets' own 1 MiB default is too small for big tool results."""

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_CLOSE_TIMEOUT_S = 5.0

DEFAULT_TIMEOUT_S = 330.0
"""Per-request timeout of the clients: a little above the broker's 300 s ceiling, so the
broker's own timeout error normally arrives first and this only fires on a hung broker."""

_WRITER_FLUSH_TIMEOUT_S = 0.5
"""Time the writer gets at shutdown to send messages the session already handed over."""

_LIST_TOOLS_PAGE_CAP = 1000
"""A paginator that never ends must not hang `list_tools`."""

_FRAME_PREVIEW = 200


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

    It implements the SDK's `mcp.client._transport.Transport` protocol, so `mcp.Client`
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
        self._cm: AbstractAsyncContextManager[TransportStreams] | None = None
        self._used = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, session_id={self.session_id!r})"

    async def __aenter__(self) -> TransportStreams:
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
    async def _connect(self) -> AsyncIterator[TransportStreams]:
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


# --------------------------------------------------------------------------- async client


def text(result: mcp_types.CallToolResult, sep: str = "\n") -> str:
    """Join the text parts of a tool result: what most scripts want out of a call."""
    return sep.join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))


class AsyncMCPBrokerClient:
    """One broker connection for async code, with the few verbs callers actually need.

    It is `mcp.Client` on a `WebSocketTransport`, plus what the SDK leaves to every caller:
    walking `tools/list` pages, and fanning many calls out over the one connection with a
    bound on how many are in flight. `.client` is the full `mcp.Client` for anything else.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        session_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT_S,
        max_size: int | None = DEFAULT_MAX_SIZE,
        mode: str = "auto",
        client_info: mcp_types.Implementation | None = None,
    ) -> None:
        """Describe the connection; it opens when the client is entered.

        Args:
            url: `ws://` or `wss://` URL of the broker's MCP endpoint.
            headers: Extra handshake headers, e.g. `{"Authorization": "Bearer ..."}`.
            session_id: Broker session to resume (`Mcp-Session-Id` request header).
            timeout: Default per-request timeout in seconds (None: wait forever).
            open_timeout: Seconds allowed to open the WebSocket.
            max_size: Largest inbound frame in bytes.
            mode: `mcp.Client` negotiation mode; "auto" probes `server/discover` and falls
                back to `initialize` when the broker does not know it.
            client_info: Name/version announced to the broker.
        """
        self.url = url
        self._transport = WebSocketTransport(
            url, headers=headers, session_id=session_id, max_size=max_size, open_timeout=open_timeout
        )
        self._client = Client(self._transport, read_timeout_seconds=timeout, mode=mode, client_info=client_info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, session_id={self.session_id!r})"

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc_val, exc_tb)

    @property
    def client(self) -> Client:
        """The underlying `mcp.Client` (usable while this client is entered)."""
        return self._client

    @property
    def transport(self) -> WebSocketTransport:
        return self._transport

    @property
    def session_id(self) -> str | None:
        """The broker's session id from the handshake, to resume with later (None if it sent none)."""
        return self._transport.session_id

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress_callback: ProgressFnT | None = None,
    ) -> mcp_types.CallToolResult:
        """Call one tool. A failing tool comes back with `is_error=True`; protocol errors raise `MCPError`."""
        return await self._client.call_tool(
            tool,
            dict(arguments) if arguments is not None else None,
            read_timeout_seconds=timeout,
            progress_callback=progress_callback,
        )

    async def list_tools(self) -> list[mcp_types.Tool]:
        """Every tool the broker exposes, all pages walked."""
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_LIST_TOOLS_PAGE_CAP):
            page = await self._client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None or cursor in seen:
                return tools
            seen.add(cursor)
        raise RuntimeError(f"tools/list did not end after {_LIST_TOOLS_PAGE_CAP} pages")

    @overload
    async def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = ...,
        *,
        timeout: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[mcp_types.CallToolResult]: ...

    @overload
    async def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = ...,
        *,
        timeout: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[mcp_types.CallToolResult | Exception]: ...

    async def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = 64,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[mcp_types.CallToolResult] | list[mcp_types.CallToolResult | Exception]:
        """Run many calls concurrently over this one connection; results come back in input order.

        At most `concurrency` calls are in flight. By default the first exception (an
        `MCPError`, a timeout, a lost connection) cancels the remaining calls and is raised
        as is; with `return_exceptions=True` each exception takes its call's place instead.
        Tool failures are not exceptions: they are results with `is_error=True`.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        pending = list(calls)
        results: list[mcp_types.CallToolResult | Exception | None] = [None] * len(pending)
        limiter = anyio.CapacityLimiter(concurrency)

        async def run_one(index: int, tool: str, arguments: Mapping[str, Any] | None) -> None:
            async with limiter:
                try:
                    results[index] = await self.call(tool, arguments, timeout=timeout)
                except Exception as exc:
                    if not return_exceptions:
                        raise  # cancels the task group, hence the other calls
                    results[index] = exc

        try:
            async with anyio.create_task_group() as tg:
                for index, (tool, arguments) in enumerate(pending):
                    tg.start_soon(run_one, index, tool, arguments)
        except ExceptionGroup as group:
            # Like asyncio.gather: the caller gets the failure itself, not anyio's group around it
            # (the group holds more than one only when calls failed at the same instant).
            raise group.exceptions[0] from None
        if return_exceptions:
            return [r for r in results if r is not None]
        return [r for r in results if isinstance(r, mcp_types.CallToolResult)]


# --------------------------------------------------------------------------- sync client


class _PortalState:
    """What the sync client owns, held apart from it so a finalizer can close it without a reference cycle."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self.portal: BlockingPortal | None = None
        self.client_cm: AbstractContextManager[AsyncMCPBrokerClient] | None = None
        self.client: AsyncMCPBrokerClient | None = None
        self.closed = False

    def disconnect(self) -> None:
        """Close the connection and stop the event loop thread; safe to call twice."""
        with self.lock:
            client_cm, self.client_cm, self.client = self.client_cm, None, None
            portal_cm, self.portal_cm, self.portal = self.portal_cm, None, None
            try:
                if client_cm is not None:
                    client_cm.__exit__(None, None, None)
            except Exception:
                logger.debug("Error while closing the broker connection", exc_info=True)
            finally:
                if portal_cm is not None:
                    portal_cm.__exit__(None, None, None)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            try:
                self.disconnect()
            except RuntimeError:
                # Finalizer running on the portal's own thread; the daemon thread dies with the process.
                logger.debug("Could not close the broker connection from its event loop thread", exc_info=True)


class MCPBrokerClient:
    """Blocking broker client for scripts and notebooks that have no event loop of their own.

    `MCPBrokerClient(url).call("time__get_current_time", {"timezone": "UTC"})` works as is:
    the connection opens on first use and is kept for later calls. A background thread
    (an anyio blocking portal) owns the event loop and the `AsyncMCPBrokerClient`, so the
    async client's task groups are entered and exited in one task, as anyio requires; the
    methods are safe to call from several threads at once.

    If the connection is lost, the call that saw it raises `MCPError` (CONNECTION_CLOSED)
    and the next call reconnects, resuming the broker session when it announced one. Calls
    are never retried here: only the caller knows whether a tool is safe to run twice.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        session_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT_S,
        max_size: int | None = DEFAULT_MAX_SIZE,
        mode: str = "auto",
        client_info: mcp_types.Implementation | None = None,
    ) -> None:
        """Same arguments as `AsyncMCPBrokerClient`; nothing connects until the first call."""
        self.url = url
        self.session_id: str | None = session_id
        self._options: dict[str, Any] = {
            "headers": headers,
            "timeout": timeout,
            "open_timeout": open_timeout,
            "max_size": max_size,
            "mode": mode,
            "client_info": client_info,
        }
        self._state = _PortalState()
        # Closes a forgotten connection when the client is garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, self._state.close)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, session_id={self.session_id!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def portal(self) -> BlockingPortal | None:
        """The blocking portal running the event loop thread (None until connected)."""
        return self._state.portal

    @property
    def connected(self) -> bool:
        return self._state.client is not None

    def connect(self) -> None:
        """Open the connection now instead of on first use."""
        self._connected()

    def _connected(self) -> tuple[BlockingPortal, AsyncMCPBrokerClient]:
        state = self._state
        with state.lock:
            if state.closed:
                raise RuntimeError("MCPBrokerClient is closed")
            if state.portal is not None and state.client is not None:
                return state.portal, state.client
            portal_cm = start_blocking_portal(name=f"mcp-broker-client-{id(self):x}")
            portal = portal_cm.__enter__()
            try:
                client_cm = portal.wrap_async_context_manager(
                    AsyncMCPBrokerClient(self.url, session_id=self.session_id, **self._options)
                )
                client = client_cm.__enter__()
            except BaseException:
                portal_cm.__exit__(None, None, None)
                raise
            state.portal_cm, state.portal, state.client_cm, state.client = portal_cm, portal, client_cm, client
            if client.session_id is not None:
                self.session_id = client.session_id
            return portal, client

    def _run(self, fn: Callable[[AsyncMCPBrokerClient], Awaitable[_T]]) -> _T:
        portal, client = self._connected()
        try:
            return portal.call(fn, client)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                # Drop the dead connection so the next call reconnects (unless another thread already did).
                with self._state.lock:
                    if self._state.client is client:
                        self._state.disconnect()
            raise

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> mcp_types.CallToolResult:
        """Call one tool and wait for its result (see `AsyncMCPBrokerClient.call`)."""
        return self._run(lambda c: c.call(tool, arguments, timeout=timeout))

    def list_tools(self) -> list[mcp_types.Tool]:
        """Every tool the broker exposes."""
        return self._run(lambda c: c.list_tools())

    @overload
    def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = ...,
        *,
        timeout: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[mcp_types.CallToolResult]: ...

    @overload
    def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = ...,
        *,
        timeout: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[mcp_types.CallToolResult | Exception]: ...

    def call_many(
        self,
        calls: Iterable[tuple[str, Mapping[str, Any] | None]],
        concurrency: int = 64,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[mcp_types.CallToolResult] | list[mcp_types.CallToolResult | Exception]:
        """Run many calls concurrently; results in input order (see `AsyncMCPBrokerClient.call_many`)."""
        batch = list(calls)
        if return_exceptions:
            return self._run(lambda c: c.call_many(batch, concurrency, timeout=timeout, return_exceptions=True))
        return self._run(lambda c: c.call_many(batch, concurrency, timeout=timeout))

    def close(self) -> None:
        """Close the connection and stop the event loop thread. Further calls raise RuntimeError."""
        self._finalizer()
