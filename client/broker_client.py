"""`MCPBrokerClient`: the blocking broker client, for scripts and notebooks without an event loop.

`MCPBrokerClient(url).call("time__get_current_time", {"timezone": "UTC"})` is the one line
a script needs; a background thread (an anyio blocking portal) owns the event loop and the
`AsyncMCPBrokerClient` (client/async_broker_client.py) doing the work.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import mcp_types
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import MCPError
from mcp.client import ClientSession

from client.async_broker_client import DEFAULT_TIMEOUT_S, AsyncMCPBrokerClient
from client.tasks import Answers, TaskHandle, create_task
from client.websocket import DEFAULT_MAX_SIZE, DEFAULT_OPEN_TIMEOUT_S

__all__ = ["MCPBrokerClient"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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
        results: Literal["raw", "shaped"] | None = "raw",
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
            "results": results,
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

    def submit(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        on_input: Callable[[mcp_types.InputRequests], Answers] | None = None,
    ) -> TaskHandle:
        """Start a tool call as a task; its handle at once (see `AsyncMCPBrokerClient.submit`). The handle's
        `result()` polls from the caller's thread, where `on_input` (a plain function) runs too."""
        created = self._run(lambda c: create_task(c.client.session, tool, arguments, on_input))
        return TaskHandle(self._run_session, created, on_input)

    def _run_session(self, fn: Callable[[ClientSession], Awaitable[_T]]) -> _T:
        """`fn` with the current connection's session, on the event loop thread (a task handle's round trips)."""
        return self._run(lambda c: fn(c.client.session))

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
