"""`AsyncMCPBrokerClient`: one broker connection for async code, with the few verbs callers need.

It exists because most callers only want "call this tool, give me the result": it is
`mcp.Client` on a `WebSocketTransport` (client/websocket.py), plus what the SDK leaves to
every caller (walking `tools/list` pages, fanning many calls out over one connection).
The blocking `MCPBrokerClient` (client/broker_client.py) runs one of these on a thread of
its own for code without an event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import mcp_types
from mcp import Client
from mcp.shared.dispatcher import ProgressFnT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from client.tasks import AsyncTaskHandle, OnInput, TasksExtension, create_task, refuse_elicitation, refuse_sampling
from client.websocket import DEFAULT_MAX_SIZE, DEFAULT_OPEN_TIMEOUT_S, WebSocketTransport

__all__ = ["DEFAULT_TIMEOUT_S", "AsyncMCPBrokerClient", "text"]

DEFAULT_TIMEOUT_S = 330.0
"""Per-request timeout of the clients: a little above the broker's 300 s ceiling, so the
broker's own timeout error normally arrives first and this only fires on a hung broker."""

_LIST_TOOLS_PAGE_CAP = 1000
"""A paginator that never ends must not hang `list_tools`."""


RESULTS_PARAM = "results"
"""The broker endpoint's query parameter for how tool results come: `raw` (whole, as the backend sent
them) or `shaped` (compacted and cut into pages for a model's context, README "Results shaped for a
model")."""


def with_results(url: str, results: str | None) -> str:
    """`url` asking for `results` (`raw` or `shaped`), unless it already says (None: leave it as it is)."""
    if results is None:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == RESULTS_PARAM for name, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, (RESULTS_PARAM, results)])))


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
        results: Literal["raw", "shaped"] | None = "raw",
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
                back to `initialize` when the broker does not know it (its WebSocket does not:
                the handshake era); "2026-07-28" speaks the modern era per request, which
                `submit` (tasks) needs.
            client_info: Name/version announced to the broker.
            results: How tool results come (sent as `?results=` on the URL unless it has one): "raw", the
                default for a program, as the backend sent them; "shaped", as a model-facing client
                gets them (JSON compacted, long text cut into pages read with `broker__read_result`);
                None: the broker's default for the endpoint (shaped) or the key's setting.
        """
        url = with_results(url, results)
        self.url = url
        self._transport = WebSocketTransport(
            url, headers=headers, session_id=session_id, max_size=max_size, open_timeout=open_timeout
        )
        # The tasks extension is declared on modern-era requests only (the SDK drops it in the handshake era);
        # a modern-era client also declares elicitation and sampling, answered through `submit`'s on_input.
        modern = mode in MODERN_PROTOCOL_VERSIONS
        self._client = Client(self._transport, read_timeout_seconds=timeout, mode=mode, client_info=client_info,
                              extensions=[TasksExtension()],
                              elicitation_callback=refuse_elicitation if modern else None,
                              sampling_callback=refuse_sampling if modern else None)

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

    async def submit(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        on_input: OnInput | None = None,
    ) -> AsyncTaskHandle:
        """Start a tool call as a task (client/tasks.py) and hand back its handle at once: `await
        handle.result()`, `status()`, `cancel()`. A backend's question is answered by `on_input` (questions by
        key in, answers by key out, sync or async). A call answered within the broker's hold, or of a tool
        without task support, gives an already finished handle. Needs a modern-era connection
        (`mode="2026-07-28"`), else raises `TasksUnavailable`."""
        created = await create_task(self._client.session, tool, arguments, on_input)
        return AsyncTaskHandle(lambda: self._client.session, created, on_input)

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
