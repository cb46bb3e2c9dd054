"""Warm MCP client sessions, one per backend server, owned by a worker process.

Opening a session costs ~0.5 s (the server's start-up and the handshake) while
a call over a warm one costs under a millisecond, so a worker opens each
backend once, at first use, and keeps it. The SDK is asyncio; Celery's pool
threads are not, so the process runs ONE event-loop thread (an anyio blocking
portal) that owns every session. Calls run as coroutines on that loop, many
at once over one session (the SDK matches replies by id), bounded per server
by its `concurrency`; each running call has a cancel scope so a client's
cancellation reaches the backend as MCP `notifications/cancelled`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx2
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    CreateMessageResult,
    CreateMessageResultWithTools,
    ElicitResult,
    ErrorData,
    ListRootsResult,
    PromptListChangedNotification,
    PromptReference,
    ResourceListChangedNotification,
    ResourceTemplateReference,
    ToolListChangedNotification,
)

from broker.config import BrokerConfig, ServerSpec

log = logging.getLogger(__name__)

ProgressHook = Callable[[float, float | None, str | None], None]


class CallChannel(Protocol):
    """What a running call can send back to its client, besides its result (implemented in workers/tasks.py)."""

    def progress(self, value: float, total: float | None, message: str | None) -> None: ...

    def log(self, params: dict[str, Any]) -> None: ...

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A server-to-client request (sampling, elicitation, roots); blocks until `{"result"|"error"}`."""
        ...

CatalogHook = Callable[[str], None]  # server name: its catalog must be re-listed
LIST_CHANGED = (ToolListChangedNotification, ResourceListChangedNotification, PromptListChangedNotification)
FORWARDED_METHODS = ("tools/call", "resources/read", "prompts/get", "completion/complete")


class BackendUnavailable(Exception):
    """The backend could not be reached or its session broke: transient, worth a retry on a fresh session."""


class BackendTimeout(Exception):
    """The backend did not answer within the call's time limit (the call was cancelled on the backend)."""


class CallCancelled(Exception):
    """The client cancelled the call while it ran (the backend was told)."""


class BackendRPCError(Exception):
    """The backend answered with a JSON-RPC error: a definite answer, passed to the client as is."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _resolve_command(command: str) -> str:
    """`python` in a config means the broker's own interpreter, where the demo servers' packages are installed."""
    return sys.executable if command in ("python", "python3") else command


class BackendSession:
    """One backend server's warm session: opened lazily, restarted when it breaks."""

    def __init__(
        self, spec: ServerSpec, portal: BlockingPortal, base_dir: str, on_catalog_change: CatalogHook | None = None
    ) -> None:
        self.spec = spec
        self._on_catalog_change = on_catalog_change
        self._portal = portal
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[Client] | None = None
        self._client: Client | None = None
        self._slots: anyio.Semaphore | None = None  # created on the loop
        self.running: dict[str, anyio.CancelScope] = {}  # call id → its scope (loop thread only)
        self.channels: dict[str, CallChannel] = {}  # call id → its way back to the client, in start order
        self.generation = 0  # bumped on every (re)start, so a caller knows whether someone already restarted it
        self.restarts = 0

    # ------------------------------------------------------------ lifecycle
    async def _on_message(self, message: Any) -> None:
        """A backend's list_changed means the catalog must be re-listed (in another thread: listing from
        inside the session's receive loop would wait on itself)."""
        if isinstance(message, LIST_CHANGED) and self._on_catalog_change is not None:
            log.info("backend %s: %s", self.spec.name, message.method)
            threading.Thread(target=self._on_catalog_change, args=(self.spec.name,), daemon=True).start()

    # ------------------------------------------------------------ backend → client
    def _asking_channel(self) -> CallChannel | None:
        """Whose client a backend's request is for. The wire carries no related request id, so: the call
        running on this session, or with several, the most recently started (exact under per-client isolation)."""
        return next(reversed(self.channels.values()), None)

    async def _relay(self, method: str, params: Any, result_type: Any) -> Any:
        channel = self._asking_channel()
        if channel is None:
            return ErrorData(code=INVALID_REQUEST, message=f"{method}: no client call is running to ask")
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json") if params is not None else {}
        answer = await anyio.to_thread.run_sync(channel.ask, method, payload, self.spec.settings.timeout_s)
        if "error" in answer:
            return ErrorData.model_validate(answer["error"])
        return result_type.model_validate(answer.get("result") or {})

    async def _on_sampling(self, _context: Any, params: Any) -> Any:
        result_type = CreateMessageResultWithTools if getattr(params, "tools", None) else CreateMessageResult
        return await self._relay("sampling/createMessage", params, result_type)

    async def _on_elicitation(self, _context: Any, params: Any) -> Any:
        return await self._relay("elicitation/create", params, ElicitResult)

    async def _on_list_roots(self, _context: Any) -> Any:
        return await self._relay("roots/list", None, ListRootsResult)

    async def _on_log(self, params: Any) -> None:
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json")
        for channel in list(self.channels.values()):  # the calls that may have caused it
            channel.log(payload)

    def _new_client(self) -> Client:
        spec = self.spec
        options: dict[str, Any] = {
            "mode": spec.settings.protocol,
            "cache": None,
            "message_handler": self._on_message,
            "sampling_callback": self._on_sampling,
            "elicitation_callback": self._on_elicitation,
            "list_roots_callback": self._on_list_roots,
            "logging_callback": self._on_log,
        }
        if spec.command:
            params = StdioServerParameters(
                command=_resolve_command(spec.command),
                args=list(spec.args),
                env=dict(spec.env) or None,
                cwd=spec.cwd or self._base_dir,
            )
            return Client(params, **options)
        assert spec.url is not None
        if spec.headers:
            transport = streamable_http_client(spec.url, http_client=httpx2.AsyncClient(headers=spec.headers))
            return Client(transport, **options)
        return Client(spec.url, **options)

    def open(self) -> Client:
        """The live client, opening the backend if needed (thread-safe; call from a non-loop thread)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                cm = self._portal.wrap_async_context_manager(self._new_client())
                try:
                    self._client = cm.__enter__()
                except Exception as err:  # the backend failed to start or to shake hands
                    raise BackendUnavailable(f"server {self.spec.name!r} failed to start: {err!r}") from err
                self._cm = cm
                self.generation += 1
                log.info("backend %s: session open (generation %d)", self.spec.name, self.generation)
                if self.generation > 1 and self._on_catalog_change is not None:
                    # a restarted backend may offer something else now
                    threading.Thread(target=self._on_catalog_change, args=(self.spec.name,), daemon=True).start()
            return self._client

    def close(self) -> None:
        with self._lock:
            cm, self._cm, self._client = self._cm, None, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:  # a dead backend often fails its own shutdown; it is gone either way
                log.debug("backend %s: error while closing", self.spec.name, exc_info=True)

    def restart_if(self, generation: int) -> None:
        """Close the session if it is still the one that failed (another call may have restarted it)."""
        if self.generation == generation and self._client is not None:
            log.warning("backend %s: restarting broken session (generation %d)", self.spec.name, generation)
            self.restarts += 1
            from broker.observe import backend_restart

            backend_restart(self.spec.name)  # mcp_broker_backend_restarts_total
            self.close()

    # ------------------------------------------------------------ calls (on the loop)
    async def _client_async(self) -> tuple[Client, int]:
        client = self._client
        if client is None:
            client = await anyio.to_thread.run_sync(self.open)
        return client, self.generation

    async def _guarded(
        self,
        fn: Callable[[Client], Any],
        timeout: float,
        call_id: str | None = None,
        channel: CallChannel | None = None,
    ) -> Any:
        """Run `fn(client)` within `timeout`, mapping failures to the broker's exception kinds."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.spec.settings.concurrency)
        client, generation = None, self.generation
        with anyio.CancelScope() as scope:
            if call_id is not None:
                self.running[call_id] = scope
                if channel is not None:
                    self.channels[call_id] = channel
            try:
                with anyio.fail_after(timeout):
                    async with self._slots:
                        client, generation = await self._client_async()
                        return await fn(client)
            except TimeoutError as err:
                raise BackendTimeout(f"server {self.spec.name!r} did not answer within {timeout:g}s") from err
            except MCPError as err:
                if err.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                    await anyio.to_thread.run_sync(self.restart_if, generation)
                    raise BackendUnavailable(f"server {self.spec.name!r}: {err.error.message}") from err
                raise BackendRPCError(err.code, err.error.message, err.error.data) from err
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as err:
                await anyio.to_thread.run_sync(self.restart_if, generation)
                raise BackendUnavailable(f"server {self.spec.name!r}: connection lost ({err!r})") from err
            finally:
                if call_id is not None:
                    self.running.pop(call_id, None)
                    self.channels.pop(call_id, None)
        raise CallCancelled(call_id)  # the scope was cancelled from outside

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        channel: CallChannel | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Run one tool call; the result as its JSON wire dict (camelCase keys)."""

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            # Published right here on the loop thread (one fast PUBLISH): a hop to a thread pool
            # would let two notifications of the same call overtake each other.
            if channel is not None:
                channel.progress(value, total, message)

        async def call(client: Client) -> Any:
            return await client.call_tool(
                tool, arguments, progress_callback=on_progress if progress and channel else None, meta=meta or None
            )

        return _dump(await self._guarded(call, timeout, call_id, channel))

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        meta: dict[str, Any] | None = None,
        channel: CallChannel | None = None,
    ) -> dict[str, Any]:
        """A forwarded request other than tools/call (resources/read, prompts/get, completion/complete)."""

        async def send(client: Client) -> Any:
            if method == "resources/read":
                return await client.read_resource(params["uri"], meta=meta or None)
            if method == "prompts/get":
                return await client.get_prompt(params["name"], params.get("arguments") or None, meta=meta or None)
            if method == "completion/complete":
                ref_data = params["ref"]
                ref: ResourceTemplateReference | PromptReference = (
                    PromptReference.model_validate(ref_data)
                    if ref_data.get("type") == "ref/prompt"
                    else ResourceTemplateReference.model_validate(ref_data)
                )
                return await client.complete(ref, params["argument"], (params.get("context") or {}).get("arguments"))
            raise BackendRPCError(METHOD_NOT_FOUND, f"Method not forwarded: {method}")

        try:
            return _dump(await self._guarded(send, timeout, call_id, channel))
        except (KeyError, TypeError, ValueError) as err:
            raise BackendRPCError(INVALID_PARAMS, f"Invalid params for {method}: {err}") from err

    def cancel(self, call_id: str) -> bool:
        """Cancel a running call (loop thread only); the SDK tells the backend."""
        scope = self.running.get(call_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def list_catalog(self, timeout: float) -> dict[str, Any]:
        """Everything the backend offers, each list walked to its last page."""

        async def walk(client: Client) -> dict[str, Any]:
            caps = client.server_capabilities
            out: dict[str, Any] = {"tools": [], "resources": [], "resourceTemplates": [], "prompts": []}
            listings = [("tools", client.list_tools, caps.tools)]
            listings += [("resources", client.list_resources, caps.resources)]
            listings += [("resourceTemplates", client.list_resource_templates, caps.resources)]
            listings += [("prompts", client.list_prompts, caps.prompts)]
            for key, lister, supported in listings:
                if supported is None:
                    continue
                cursor: str | None = None
                for _ in range(1000):
                    page = await lister(cursor=cursor)
                    attribute = "resource_templates" if key == "resourceTemplates" else key
                    out[key] += [_dump(item) for item in getattr(page, attribute)]
                    cursor = page.next_cursor
                    if not cursor:
                        break
            info = client.session.initialize_result
            out["serverInfo"] = _dump(info.server_info) if info is not None else {}
            out["capabilities"] = _dump(caps)
            out["instructions"] = getattr(info, "instructions", None) if info is not None else None
            return out

        return await self._guarded(walk, timeout)


class BackendPool:
    """The process's backend sessions and the one event-loop thread that runs them."""

    def __init__(self, config: BrokerConfig, on_catalog_change: CatalogHook | None = None) -> None:
        self.config = config
        self._on_catalog_change = on_catalog_change
        self._portal_cm = start_blocking_portal(name="mcp-backends")
        self.portal = self._portal_cm.__enter__()  # kept: a collected portal stops its loop
        self._sessions: dict[str, BackendSession] = {}
        self._lock = threading.Lock()
        self._base_dir = str(Path(config.path).resolve().parent) if config.path else os.getcwd()

    def session(self, server: str) -> BackendSession:
        found = self._sessions.get(server)
        if found is not None:
            return found
        with self._lock:
            if server not in self._sessions:
                spec = self.config.server(server)
                self._sessions[server] = BackendSession(spec, self.portal, self._base_dir, self._on_catalog_change)
            return self._sessions[server]

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float,
        call_id: str | None = None,
        meta: dict[str, Any] | None = None,
        channel: CallChannel | None = None,
    ) -> dict[str, Any]:
        """A forwarded request other than tools/call (resources/read, prompts/get, completion/complete)."""

        async def send(client: Client) -> Any:
            if method == "resources/read":
                return await client.read_resource(params["uri"], meta=meta or None)
            if method == "prompts/get":
                return await client.get_prompt(params["name"], params.get("arguments") or None, meta=meta or None)
            if method == "completion/complete":
                ref_data = params["ref"]
                ref: ResourceTemplateReference | PromptReference = (
                    PromptReference.model_validate(ref_data)
                    if ref_data.get("type") == "ref/prompt"
                    else ResourceTemplateReference.model_validate(ref_data)
                )
                return await client.complete(ref, params["argument"], (params.get("context") or {}).get("arguments"))
            raise BackendRPCError(METHOD_NOT_FOUND, f"Method not forwarded: {method}")

        try:
            return _dump(await self._guarded(send, timeout, call_id, channel))
        except (KeyError, TypeError, ValueError) as err:
            raise BackendRPCError(INVALID_PARAMS, f"Invalid params for {method}: {err}") from err

    def cancel(self, call_id: str) -> bool:
        """Cancel the call wherever it runs in this process (any thread)."""

        def on_loop() -> bool:
            return any(session.cancel(call_id) for session in list(self._sessions.values()))

        return bool(self.portal.call(on_loop))

    def close(self) -> None:
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()
        try:
            self._portal_cm.__exit__(None, None, None)
        except Exception:
            log.debug("backend pool: error while stopping the event loop", exc_info=True)
