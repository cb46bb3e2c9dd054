"""Scenario 4, peers: the same trivial calls through other MCP gateways fronting the same echo.py.

Peers come from the public registries and live in the bench's own environments, never in
the broker's: `mcp-proxy` (PyPI; stdio → Streamable HTTP/SSE, Python) in bench/.peers-venv
and `supergateway` (npm; stdio → WebSocket/SSE/Streamable HTTP, Node) in bench/.peers-node.
Each peer is driven by the same client and transport as its broker baseline, so the ratio compares
gateways, not clients: supergateway's WebSocket with the raw WebSocket client, mcp-proxy's
Streamable HTTP with the SDK client `mcp.Client` (the broker then on `/servers/echo/mcp`); the broker's
WebSocket through the SDK (`AsyncMCPBrokerClient`) is shown too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from bench.direct import ECHO_SERVER, sdk_pipelined, sdk_sequential
from bench.overhead import UNCACHED_TOOL
from bench.settings import Counts
from bench.stack import BENCH_DIR, ROOT, BenchStack
from bench.stats import ratio, summarize_ms
from bench.wsclient import PipelineResult, RawSession
from cli.devrun import free_port
from client.async_broker_client import AsyncMCPBrokerClient

PEERS_VENV = BENCH_DIR / ".peers-venv"
PEERS_NODE = BENCH_DIR / ".peers-node"
PY_REQUIREMENTS = BENCH_DIR / "peer-requirements.txt"
NODE_PACKAGE = BENCH_DIR / "peer-package.json"
INSTALL_TIMEOUT_S = 300


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _installed(stamp: Path, source: Path) -> bool:
    return stamp.exists() and stamp.read_text().strip() == _digest(source)


def install_python_peers(log: Callable[[str], object] = print) -> str | None:
    """Create bench/.peers-venv and install peer-requirements.txt into it (once); None or why it failed."""
    stamp = PEERS_VENV / ".installed"
    if _installed(stamp, PY_REQUIREMENTS):
        return None
    log(f"  installing PyPI peers into {PEERS_VENV.relative_to(ROOT)} (once)")
    try:
        if not (PEERS_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True, capture_output=True,
                           timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(PY_REQUIREMENTS)], check=True, capture_output=True, text=True,
                       timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", "") or ""
        return f"pip install failed: {err!r} {str(detail)[-300:]}"
    stamp.write_text(_digest(PY_REQUIREMENTS))
    return None


def install_node_peers(log: Callable[[str], object] = print) -> str | None:
    """npm-install peer-package.json into bench/.peers-node (once); None or why it could not."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return "node/npm not on PATH"
    stamp = PEERS_NODE / ".installed"
    if _installed(stamp, NODE_PACKAGE):
        return None
    log(f"  installing npm peers into {PEERS_NODE.relative_to(ROOT)} (once)")
    PEERS_NODE.mkdir(exist_ok=True)
    shutil.copyfile(NODE_PACKAGE, PEERS_NODE / "package.json")
    try:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS_NODE, check=True,
                       capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", "") or ""
        return f"npm install failed: {err!r} {str(detail)[-300:]}"
    stamp.write_text(_digest(NODE_PACKAGE))
    return None


def _echo_command() -> list[str]:
    """The backend every peer fronts: the same script and interpreter the broker's workers use."""
    return [sys.executable, str(ECHO_SERVER)]


@contextlib.contextmanager
def _process(argv: list[str], port: int, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a peer on 127.0.0.1:`port` until it listens; stop its whole process group afterwards."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mcpb-bench-{log_name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{log_name} did not start: {log_path.read_text(errors='replace')[-500:]}")
            time.sleep(0.1)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _measure(seq: PipelineResult, pipe: PipelineResult, **labels: Any) -> dict[str, Any]:
    summary = summarize_ms(seq.latencies_s)
    return {**labels, "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "calls_per_s": pipe.calls_per_s,
            "errors": seq.errors + pipe.errors, "first_error": seq.first_error or pipe.first_error}


async def _raw_ws(url: str, tool: str, counts: Counts, subprotocol: str | None) -> tuple[PipelineResult, ...]:
    session = await RawSession.open(url, subprotocol=subprotocol)
    try:
        await session.sequential(tool, lambda i: {"text": "x"}, counts.warmup)
        seq = await session.sequential(tool, lambda i: {"text": "x"}, counts.peer_sequential)
        pipe = await session.pipelined(tool, lambda i: {"text": str(i)}, counts.peer_calls, counts.direct_window)
        return seq, pipe
    finally:
        await session.close()


async def _sdk(connect: Callable[[], Any], tool: str, counts: Counts) -> tuple[PipelineResult, ...]:
    async with connect() as client:
        await sdk_sequential(client, counts.warmup, tool)
        seq = await sdk_sequential(client, counts.peer_sequential, tool)
        pipe = await sdk_pipelined(client, counts.peer_calls, counts.direct_window, tool)
        return seq, pipe


@asynccontextmanager
async def _broker_sdk_client(url: str) -> AsyncIterator[Client]:
    async with AsyncMCPBrokerClient(url, mode="legacy") as broker:
        yield broker.client


def run(stack: BenchStack, counts: Counts, log: Callable[[str], object] = print) -> dict[str, Any]:
    stack.scale("echo", 1)
    stack.warm("echo")
    out: dict[str, Any] = {"rows": [], "skipped": {}}
    seq, pipe = asyncio.run(_raw_ws(stack.ws_url, UNCACHED_TOOL, counts, "mcp"))
    broker_raw = _measure(seq, pipe, name="mcp-broker (1 worker)", transport="WebSocket", client="raw ws")
    seq, pipe = asyncio.run(_sdk(lambda: _broker_sdk_client(stack.ws_url), UNCACHED_TOOL, counts))
    broker_sdk = _measure(seq, pipe, name="mcp-broker (1 worker)", transport="WebSocket", client="mcp SDK")
    endpoint = f"{stack.http_url}/servers/echo/mcp"  # tools unprefixed, as behind mcp-proxy
    seq, pipe = asyncio.run(_sdk(lambda: Client(endpoint, mode="legacy"), "echo", counts))
    broker_http = _measure(seq, pipe, name="mcp-broker (1 worker)", transport="Streamable HTTP", client="mcp SDK")
    out["rows"] += [broker_raw, broker_sdk, broker_http]

    problem = install_node_peers(log)
    if problem:
        out["skipped"]["supergateway"] = problem
    else:
        port = free_port()
        script = PEERS_NODE / "node_modules" / "supergateway" / "dist" / "index.js"
        argv = ["node", str(script), "--stdio", shlex.join(_echo_command()), "--outputTransport", "ws",
                "--port", str(port), "--logLevel", "none"]
        with _process(argv, port, "supergateway"):
            seq, pipe = asyncio.run(_raw_ws(f"ws://127.0.0.1:{port}/message", "echo", counts, None))
        out["rows"].append(_measure(seq, pipe, name="supergateway 4.0.0 (npm)", transport="WebSocket",
                                    client="raw ws", vs=broker_raw))
    problem = install_python_peers(log)
    if problem:
        out["skipped"]["mcp-proxy"] = problem
    else:
        port = free_port()
        argv = [str(PEERS_VENV / "bin" / "mcp-proxy"), "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "WARNING", "--", *_echo_command()]
        with _process(argv, port, "mcp-proxy"):
            url = f"http://127.0.0.1:{port}/mcp"
            seq, pipe = asyncio.run(_sdk(lambda: Client(url, mode="legacy"), "echo", counts))
        out["rows"].append(_measure(seq, pipe, name="mcp-proxy 0.13.0 (PyPI)", transport="Streamable HTTP",
                                    client="mcp SDK", vs=broker_http))
    for row in out["rows"]:
        base = row.pop("vs", None)
        if base is not None:
            row["baseline"] = f"{base['name']}, {base['transport']}, {base['client']}"
            row["p50_vs_broker"] = ratio(row["p50_ms"], base["p50_ms"])
            row["calls_per_s_vs_broker"] = ratio(row["calls_per_s"], base["calls_per_s"])
        log(f"  {row['name']} ({row['transport']}, {row['client']}): p50 {row['p50_ms']:.2f} ms, "
            f"{row['calls_per_s']:.0f} calls/s")
    return out
