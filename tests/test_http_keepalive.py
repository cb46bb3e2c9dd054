"""A worker's Streamable HTTP backend session keeps its TCP connection across calls
(`workers.backends.keepalive`): the SDK stops reading an SSE response at its answer, and without the
tail read every call opened (and closed) a connection of its own. A real SDK server (examples/servers/
probe.py --http) and the SDK client over the worker's transport; the closed connections are counted in
the kernel's table (a client-closed TCP socket stays in TIME_WAIT for a minute)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpcore2
import httpx2
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cli.devrun import free_port
from tests.stack import ROOT
from workers.backends.keepalive import DRAIN_MAX_BYTES, TailDrainingTransport, _TailDrained, streamable_http
from workers.backends.pool import LOOP_OPTIONS
from workers.backends.socketstream import ProtocolBackend, protocol_transport

CALLS = 30


@pytest.fixture(scope="module")
def http_probe() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "servers" / "probe.py"), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with listening(proc, port, "probe --http"):
        yield port


@contextlib.contextmanager
def listening(proc: subprocess.Popen[bytes], port: int, what: str) -> Iterator[None]:
    """Once `proc` listens on `port` (within 30 s); it is killed on the way out."""
    try:
        deadline = time.monotonic() + 30
        while not any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                      for c in psutil.net_connections("tcp")):
            assert proc.poll() is None and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.1)
        yield
    finally:
        proc.kill()
        proc.wait(10)


def closed_connections(port: int) -> int:
    """Connections to `port` that this machine closed and still remembers (TIME_WAIT, FIN_WAIT...)."""
    return sum(1 for c in psutil.net_connections("tcp")
               if c.raddr and c.raddr.port == port and c.status != psutil.CONN_ESTABLISHED)


async def call_many(port: int, mode: str) -> list[int]:
    pids = []
    async with Client(streamable_http(f"http://127.0.0.1:{port}/mcp"), mode=mode) as client:
        for _ in range(CALLS):
            result = await client.call_tool("whoami", {})
            pids.append(int(result.structured_content["pid"]))
    return pids


@pytest.mark.parametrize("loop", [{}, LOOP_OPTIONS], ids=["asyncio", "worker-loop"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_calls_share_one_connection(http_probe: int, mode: str, loop: dict[str, bool]) -> None:
    """On asyncio's loop and on the worker's (uvloop: its transports are no `asyncio.Transport` subclasses)."""
    before = closed_connections(http_probe)
    pids = anyio.run(call_many, http_probe, mode, backend_options=loop)
    assert len(pids) == CALLS and len(set(pids)) == 1
    closed = closed_connections(http_probe) - before
    # the handshake and the session's end may each cost one; 30 calls used to close 30
    assert closed <= 4, f"{closed} connections closed for {CALLS} calls: responses are not read to their end"


async def whoami_over(url: str, transport: TailDrainingTransport, calls: int = 3, pause_s: float = 0.0) -> list[int]:
    """`calls` whoami over the SDK client on `transport`, `pause_s` between them."""
    pids = []
    async with (httpx2.AsyncClient(transport=transport) as http,
                Client(streamable_http_client(url, http_client=http)) as client):
        for _ in range(calls):
            await anyio.sleep(pause_s)
            pids.append(int((await client.call_tool("whoami", {})).structured_content["pid"]))
    return pids


def test_connections_are_protocol_streams(http_probe: int) -> None:
    """The worker's pool makes its connections with `ProtocolBackend`, and they carry calls."""
    transport = protocol_transport()
    assert isinstance(transport._pool._network_backend, ProtocolBackend)
    pids = anyio.run(whoami_over, f"http://127.0.0.1:{http_probe}/mcp", TailDrainingTransport(transport))
    assert len(set(pids)) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """A server that closes keep-alive connections idle for 1 s (httpcore2 keeps them 5 s): the protocol saw
    the end, so the pool drops that connection and opens another for the next call, instead of writing
    into a closed one (which fails the call: "Server disconnected without sending a response")."""
    with uvicorn_probe("--keep-alive", "1") as port:
        url = f"http://127.0.0.1:{port}/mcp"
        pids = anyio.run(whoami_over, url, TailDrainingTransport(), 3, 2.0)
        assert len(pids) == 3 and len(set(pids)) == 1
        server_closed = sum(1 for c in psutil.net_connections("tcp")  # the closer's side waits in TIME_WAIT
                            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT)
        assert server_closed >= 2  # the server did close the idle ones


def test_a_read_that_gets_nothing_times_out() -> None:
    """A read's timeout is a timer that fails its wait (a peer that accepts and never answers)."""

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            stream = await ProtocolBackend().connect_tcp("127.0.0.1", port, timeout=5)
            await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
            with pytest.raises(httpcore2.ReadTimeout):
                await stream.read(1024, timeout=0.2)
            await stream.aclose()
        finally:
            server.close()

    asyncio.run(scenario())


def test_a_requests_head_and_body_go_out_in_one_write() -> None:
    """httpcore2 writes a request's head and its body apart; the stream hands them to the transport together
    (at the next read, or at the loop's next turn if no read comes): one send, one segment for the server."""

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            stream = await ProtocolBackend().connect_tcp("127.0.0.1", port, timeout=5)
            sent: list[bytes] = []
            transport = stream._transport  # type: ignore[attr-defined]
            write = transport.write
            transport.write = lambda data: (sent.append(data), write(data))
            await stream.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n", timeout=5)
            await stream.write(b"{}", timeout=5)
            assert sent == []
            with pytest.raises(httpcore2.ReadTimeout):
                await stream.read(1024, timeout=0.05)
            assert sent == [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"]
            await stream.write(b"more", timeout=5)
            await asyncio.sleep(0)
            assert sent[1:] == [b"more"]
            await stream.aclose()
        finally:
            server.close()

    asyncio.run(scenario())


class Endless(httpx2.AsyncByteStream):
    """A response body that never ends, counting what was read of it."""

    def __init__(self) -> None:
        self.reads = 0
        self.closed = False

    async def __aiter__(self) -> Iterator[bytes]:  # type: ignore[override]
        while True:
            self.reads += 1
            yield b"x" * 1024

    async def aclose(self) -> None:
        self.closed = True


def test_a_body_closed_early_is_drained_unless_its_request_was_cancelled() -> None:
    async def scenario() -> None:
        read_first = Endless()
        body = _TailDrained(read_first)
        async for _ in body:
            break
        await body.aclose()  # the SDK at its answer: the rest is read (here: up to the bound), then closed
        assert read_first.reads > DRAIN_MAX_BYTES // 1024 and read_first.closed

        cancelled = Endless()
        body = _TailDrained(cancelled)
        with anyio.move_on_after(0.01):  # how the SDK cancels a request's POST: an anyio scope
            try:
                await anyio.sleep(10)
            finally:
                await body.aclose()
        assert cancelled.reads == 0 and cancelled.closed

    asyncio.run(scenario())


UVICORN_PROBE = """
import argparse, sys, uvicorn
parser = argparse.ArgumentParser()
for flag in ("--dir", "--port", "--keep-alive", "--cert", "--key"):
    parser.add_argument(flag)
args = parser.parse_args()
sys.path.insert(0, args.dir)
import probe
uvicorn.run(probe.server.streamable_http_app(), host="127.0.0.1", port=int(args.port), log_level="warning",
            timeout_keep_alive=int(args.keep_alive or 5), ssl_certfile=args.cert, ssl_keyfile=args.key)
"""


@contextlib.contextmanager
def uvicorn_probe(*options: str) -> Iterator[int]:
    """examples/servers/probe.py's app under uvicorn with `options` (UVICORN_PROBE's flags); yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", UVICORN_PROBE, "--dir", str(ROOT / "examples" / "servers"),
                             "--port", str(port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with listening(proc, port, "the probe"):
        yield port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_an_https_backend(tmp_path: Path) -> None:
    """TLS is asyncio's `start_tls` on the connection's protocol: calls to an https backend (its certificate
    trusted by the context given) work, and one whose certificate is not trusted fails to connect."""
    cert, key = self_signed(tmp_path)
    with uvicorn_probe("--cert", str(cert), "--key", str(key)) as port:
        url = f"https://127.0.0.1:{port}/mcp"
        trusted = ssl.create_default_context(cafile=str(cert))
        pids = anyio.run(whoami_over, url, TailDrainingTransport(protocol_transport(verify=trusted)))
        assert len(pids) == 3 and len(set(pids)) == 1
        with pytest.raises(Exception) as failed:  # the system's CAs do not know it
            anyio.run(whoami_over, url, TailDrainingTransport(protocol_transport()), 1)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(failed.value)


def test_a_large_response_is_read_whole() -> None:
    """Past `READ_HIGH_WATER` unread bytes the socket is not read until reads take them: all arrive, in order."""
    body = bytes(range(256)) * 8192  # 2 MiB

    async def send_all(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(body)
        await writer.drain()
        writer.close()

    async def scenario() -> bytes:
        server = await asyncio.start_server(send_all, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            stream = await ProtocolBackend().connect_tcp("127.0.0.1", port, timeout=5)
            await asyncio.sleep(0.3)  # let it arrive past the high-water mark while nothing reads
            got = bytearray()
            while chunk := await stream.read(64 * 1024, timeout=5):
                got += chunk
            await stream.aclose()
            return bytes(got)
        finally:
            server.close()

    assert asyncio.run(scenario()) == body
