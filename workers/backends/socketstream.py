"""httpcore2's network layer for Streamable HTTP backends on asyncio's own transport and protocol.

httpcore2 reaches the socket through `AnyIOStream`: every read and write is an `anyio.fail_after` cancel
scope, an exception map and anyio's socket stream (a checkpoint, and reading resumed and paused again
around every wait: two epoll changes), and a kept-alive connection's reuse is checked with a `select.poll`
of its socket. Per call to a Streamable HTTP backend that is four to five such operations (the request's
head and body, the response's head, its event, its end).

`ProtocolStream` is the same `AsyncNetworkStream` on an `asyncio.Protocol`: asyncio reads the socket into
a buffer as data arrives (up to `READ_HIGH_WATER` unread), a read takes from that buffer and only waits
(one future; its timeout is a timer that fails the future, not a cancellation) when it is empty; a write
is asyncio's `transport.write`, waiting only past asyncio's write high-water mark. An idle connection's
readability is what the protocol already knows (bytes or an end arrived). The framing stays h11's and
httpcore2's; pooling and TLS are httpcore2's (TLS through asyncio's `start_tls`).

Measured A/B against anyio's stream, alternating runs on a box at load average 10-13 (CPU-ms per call,
median [range]): the SDK client alone (`python -m bench.http_client_cpu`, 6 rounds, 16 in flight) 1.83
[1.66-2.03] -> 1.58 [1.27-1.80] over a handshake-era backend's SSE answers, 1.38 -> 1.11 over a modern
one's JSON, lower in every round; the worker's call path (`bench.worker_cpu --direct`, 5 rounds) 3.34 ->
2.83 (its stdio backend, code unchanged, drifted 1.48 -> 1.27 in the same runs); the backend unchanged.

A write is kept until the stream is read (or the loop's next turn): httpcore2 writes a request's head
and its body apart, and asyncio's (and uvloop's) transport sends each at once, so every POST was two
sends and two segments for the server to read. Counted with `strace -c` (the SDK client on uvloop, 1,760
calls to a minimal SSE responder): 3.9 -> 3.0 write syscalls per call; the CPU A/B (8 alternating
rounds, 16 in flight, box at load average 7-11) was within its noise: 1.16 [0.95-1.37] -> 1.21
[0.94-1.91] ms per call, together with `keepalive`'s drain change.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import anyio
import httpcore2
import httpx2
from httpcore2 import ConnectError, ConnectTimeout, ReadError, ReadTimeout, WriteError, WriteTimeout
from httpcore2._backends.base import AsyncNetworkBackend, AsyncNetworkStream
from httpcore2._types import SOCKET_OPTION

HIGH_WATER = 64 * 1024  # asyncio's default: a write waits only for a peer this far behind
READ_HIGH_WATER = 256 * 1024  # unread bytes at which the socket is no longer read (until a read takes them)


class _Reader(asyncio.Protocol):
    """The connection's incoming bytes, its end, and whether writing must wait."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None  # a read waiting for bytes
        self.drained: asyncio.Future[None] | None = None  # a write waiting for the buffer to drain
        self.paused = False
        self.reading = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading = False
        self._wake(self.waiter)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake(self.waiter)
        return False  # asyncio closes the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        self._wake(self.waiter)
        self._wake(self.drained)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(self.drained)

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)


def _expire(future: asyncio.Future[None], error: type[Exception]) -> None:
    if not future.done():
        future.set_exception(error("timed out"))


async def _wait(future: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    """Wait for `future`, failing it with `error` after `timeout` seconds (a timer, not a cancellation)."""
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future, error)
    try:
        await future
    finally:
        timer.cancel()


class ProtocolStream(AsyncNetworkStream):
    """One connection: `read` takes what the protocol buffered, `write` hands bytes to asyncio."""

    def __init__(self, transport: asyncio.Transport, reader: _Reader) -> None:
        self._transport = transport
        self._reader = reader
        self._pending: list[bytes] = []  # written, not yet handed to the transport (`write`)
        self._pending_size = 0
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def _flush(self) -> None:
        """Hand what `write` kept to the transport, in one write (a no-op once flushed, or once closing)."""
        if not self._pending or self._transport.is_closing():
            self._pending.clear()
            self._pending_size = 0
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._transport.write(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush()  # a request's head and body go out together, before its answer is awaited
        reader = self._reader
        if not reader.buffer and not reader.eof:
            reader.waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(reader.waiter, timeout, ReadTimeout)
            finally:
                reader.waiter = None
        if reader.buffer:
            if len(reader.buffer) <= max_bytes:
                data = bytes(reader.buffer)
                reader.buffer.clear()
            else:
                data = bytes(reader.buffer[:max_bytes])
                del reader.buffer[:max_bytes]
            if not reader.reading and len(reader.buffer) <= READ_HIGH_WATER // 2:
                reader.reading = True
                reader.transport.resume_reading()  # type: ignore[union-attr]
            return data
        if reader.error is not None:
            raise ReadError(str(reader.error) or type(reader.error).__name__) from reader.error
        return b""  # the peer ended the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        reader = self._reader
        if self._transport.is_closing() or reader.error is not None:
            raise WriteError("the connection is closed")
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)  # whatever comes next, it goes out this turn
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size < HIGH_WATER:
            return
        self._flush()
        if reader.paused:
            reader.drained = asyncio.get_running_loop().create_future()
            try:
                await _wait(reader.drained, timeout, WriteTimeout)
            finally:
                reader.drained = None
            if reader.error is not None:
                raise WriteError(str(reader.error)) from reader.error

    async def aclose(self) -> None:
        self._flush()
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        self._flush()
        try:
            with anyio.fail_after(timeout):
                transport = await loop.start_tls(self._transport, self._reader, ssl_context,
                                                 server_hostname=server_hostname)
        except TimeoutError as err:
            self._transport.close()
            raise ConnectTimeout(str(err)) from err
        except (OSError, ssl.SSLError) as err:
            self._transport.close()
            raise ConnectError(str(err)) from err
        self._reader.transport = cast(asyncio.Transport, transport)
        return ProtocolStream(self._reader.transport, self._reader)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle, yet the peer sent bytes or ended: httpcore2 closes it
            return bool(self._reader.buffer) or self._reader.eof
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class ProtocolBackend(AsyncNetworkBackend):
    """httpcore2's network backend making `ProtocolStream` connections (asyncio only, as the worker's loop is)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[SOCKET_OPTION] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                transport, reader = await loop.create_connection(
                    _Reader, host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError as err:
            raise ConnectTimeout(str(err)) from err
        except OSError as err:
            raise ConnectError(str(err)) from err
        sock: socket.socket | None = transport.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return ProtocolStream(cast(asyncio.Transport, transport), reader)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SOCKET_OPTION] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                transport, reader = await loop.create_unix_connection(_Reader, path)
        except TimeoutError as err:
            raise ConnectTimeout(str(err)) from err
        except OSError as err:
            raise ConnectError(str(err)) from err
        return ProtocolStream(cast(asyncio.Transport, transport), reader)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def protocol_transport(verify: ssl.SSLContext | bool = True) -> httpx2.AsyncHTTPTransport:
    """httpx2's own transport (its defaults: limits, TLS context, HTTP/1.1) over a connection pool whose
    connections are `ProtocolStream`s. httpx2 takes no network backend, so its pool is replaced by the same
    pool with ours (`_pool`: httpx2 2.17, the version the pinned mcp SDK brings; tests/test_http_keepalive.py
    fails if the pool is not ours). `verify`: httpx2's (True: the system's CAs)."""
    transport = httpx2.AsyncHTTPTransport(verify=verify)
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=20)  # httpx2's DEFAULT_LIMITS
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(verify=verify), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=ProtocolBackend())
    return transport
