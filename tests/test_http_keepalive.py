"""A worker's Streamable HTTP backend session keeps its TCP connection across calls
(`workers.backends.keepalive`): the SDK stops reading an SSE response at its answer, and without the
tail read every call opened (and closed) a connection of its own. A real SDK server (examples/servers/
probe.py --http) and the SDK client over the worker's transport; the closed connections are counted in
the kernel's table (a client-closed TCP socket stays in TIME_WAIT for a minute)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import psutil
import pytest
from mcp import Client

from cli.devrun import free_port
from tests.stack import ROOT
from workers.backends.keepalive import streamable_http

CALLS = 30


@pytest.fixture(scope="module")
def http_probe() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "servers" / "probe.py"), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                      for c in psutil.net_connections("tcp")):
            assert proc.poll() is None and time.monotonic() < deadline, "probe --http did not start"
            time.sleep(0.1)
        yield port
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


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_calls_share_one_connection(http_probe: int, mode: str) -> None:
    before = closed_connections(http_probe)
    pids = anyio.run(call_many, http_probe, mode)
    assert len(pids) == CALLS and len(set(pids)) == 1
    closed = closed_connections(http_probe) - before
    # the handshake and the session's end may each cost one; 30 calls used to close 30
    assert closed <= 4, f"{closed} connections closed for {CALLS} calls: responses are not read to their end"
