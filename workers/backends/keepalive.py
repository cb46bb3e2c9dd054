"""Streamable HTTP backends over kept-alive connections: the tail of a response the SDK stops reading is
read to its end, so the connection goes back to the pool instead of being closed.

The SDK's Streamable HTTP client reads an SSE response until the event that answers its request, then
closes the response (`_handle_sse_response`: `await response.aclose()`). The server's stream ends right
after that event, but its last bytes (the chunked body's terminator) are not read yet, so httpcore sees an
unfinished response and closes the TCP connection: every call opened a new one. Profiled (py-spy, a
worker pipelining `whoami` to a Streamable HTTP backend, 64 in flight): 25% of the worker's CPU was
spent in `connect_tcp` and its teardown, and the backend paid its own share for every accept.

`TailDrainingTransport` wraps httpx2's transport (its connections `workers.backends.socketstream`'s): a
response closed before its end first reads what is left of it, for at most `DRAIN_S` and `DRAIN_MAX_BYTES`
(a server that keeps the stream open, or sends more, only loses the connection, as before), then closes
it; a read body ends the response cleanly and httpcore returns the connection to the pool. A response
closed because its request was cancelled is closed at once. The framing stays the SDK's: only how the
socket is given back changes.

Measured A/B, before and after alternating, 3 rounds, 3,000 `whoami` calls 64 in flight over WebSocket to a
handshake-era Streamable HTTP backend (CPU-ms per call, median [range]; the box was shared with other
loads, so absolute values are high): worker 5.58 [4.34-5.62] -> 3.89 [3.35-4.56] (-30%), the backend
2.83 [2.31-3.04] -> 2.04 [1.94-2.38] (-28%); a stdio backend unchanged. The modern era's backends answer
with plain JSON, read to the end already. The SDK's default transport also had httpx's 5 s read timeout
whenever headers were configured (a client of our own without the SDK's timeouts): the SDK's 30 s / 300 s now.

The drain is asyncio's timeout and the cancellation check the task's own count: anyio's cancel scope
and its effective-deadline lookup (each a `sniffio` task lookup and the scope's bookkeeping) were ~1.5%
of the loop thread's samples (py-spy, `bench.worker_cpu --direct`); the body is an iterator of its own,
not an async generator (one frame less per chunk, one generator less left to the loop's finalizer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

from workers.backends.socketstream import protocol_transport

DRAIN_S = 0.2  # the terminator follows the last event at once; a stream still open after this is closed
DRAIN_MAX_BYTES = 64 * 1024
TERMINATE_TIMEOUT_S = 5.0  # a session's DELETE at close (`TailDrainingTransport`): a live server answers in ms


class _TailDrained(httpx2.AsyncByteStream):
    """A response body that, closed before its end, reads the rest (bounded) so the connection is reusable.

    Its own iterator, not an async generator: a generator the SDK leaves suspended (it stops at its answer)
    is one more for the loop to finalize in a task of its own, and one more frame on every chunk."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._chunks: AsyncIterator[bytes] | None = None  # one iterator, shared by the reader and the drain
        self._ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        if self._chunks is None:
            self._chunks = aiter(self._inner)
        return self

    async def __anext__(self) -> bytes:
        assert self._chunks is not None
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            raise

    async def aclose(self) -> None:
        try:
            if not self._ended and not _cancelling():
                await self._drain()
        finally:
            await self._inner.aclose()

    async def _drain(self) -> None:
        """The rest of the body, for at most `DRAIN_S` (asyncio's timeout: the loop is asyncio's API, and
        anyio's cancel scope cost more than the read; a cancellation that comes meanwhile ends the drain,
        and the connection is closed as it would have been)."""
        chunks = self._chunks if self._chunks is not None else aiter(self._inner)
        read = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                async for chunk in chunks:
                    read += len(chunk)
                    if read > DRAIN_MAX_BYTES:
                        return
                self._ended = True


def _cancelling() -> bool:
    """Whether this task is being cancelled (the SDK closes a cancelled request's response: no drain then).
    anyio's scopes cancel through the asyncio task, whose count says so without anyio's own bookkeeping."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class TailDrainingTransport(httpx2.AsyncBaseTransport):
    """httpx2's own transport, with every response body wrapped in `_TailDrained`.

    A DELETE (the SDK ends its session with one when the transport closes) gets `TERMINATE_TIMEOUT_S` at
    each step instead of the client's 300 s between reads: a hung server (stopped, deadlocked) accepts the
    connection and never answers, and the session's close (a restart of that hung backend, the worker's
    stop) waited those 300 s in its thread. The SDK logs a failed termination and closes anyway."""

    def __init__(self, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or protocol_transport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "DELETE":
            request.extensions = {**request.extensions, "timeout": dict.fromkeys(
                ("connect", "read", "write", "pool"), TERMINATE_TIMEOUT_S)}
        response = await self._inner.handle_async_request(request)
        if isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = _TailDrained(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def streamable_http(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """The SDK's Streamable HTTP client transport over an httpx2 client of ours (the SDK's default timeouts:
    30 s, 300 s between reads of a stream), with `TailDrainingTransport`; the client is closed with it."""
    timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    http = httpx2.AsyncClient(headers=headers, timeout=timeout, transport=TailDrainingTransport())
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams
