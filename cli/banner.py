"""The "up" banner of `make run`: printed once the tools are callable, naming what a newcomer needs.

Why not when the port listens: gunicorn's master listens ~3-4 s before its gevent worker has imported the
app and before the workers have listed their backends (measured on a fresh clone: banner at 1.5 s, first
callable tool at 5 s), so a client started at the banner saw an empty tools/list. The banner now waits
for `/readyz` (the web process has loaded the published catalogs and listens for results) and for every
configured server to be ready (a live worker, a usable backend), then reads the tool count and an example
tool from the catalogs in Redis.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from broker import keys
from broker.config import BrokerConfig
from broker.security import load_keyring

ROOT = Path(__file__).resolve().parent.parent
READY_WAIT_S = 180.0  # a cold first start (Node backends fetched by npx) can take minutes; then say what lags


def readiness(port: int) -> dict[str, Any] | None:
    """The `/readyz` body when it answers 200, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return dict(json.loads(response.read())) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def all_servers_ready(body: dict[str, Any]) -> bool:
    """Every server has a live worker and a usable backend, and (when `/readyz` shows detail to this caller)
    its catalog is published and loaded by the web process."""
    if "servers_total" in body:  # the public answer (keys configured)
        return bool(body["servers_ready"] == body["servers_total"])
    servers = body.get("servers") or {}
    web = body.get("web") or {}
    return all(s.get("ready") and s.get("catalog_published") for s in servers.values()) and not web.get("missing")


def catalog_tools(r: redis.Redis, config: BrokerConfig) -> list[tuple[str, dict[str, Any]]]:
    """(namespaced name, definition) of every published tool, in config order."""
    tools = []
    for server in config.servers:
        raw = r.get(keys.catalog(server))
        doc = json.loads(raw) if raw else {}
        tools += [(f"{server}{config.separator}{t['name']}", t) for t in doc.get("tools", [])]
    return tools


def example_call(tools: list[tuple[str, dict[str, Any]]], port: int) -> str:
    """A copy-paste call line: the first tool that needs no arguments (else the first tool, with `{}` for the
    reader to fill in), through `python -m broker call` with this interpreter."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    if not tools:
        return f"{python} -m broker call SERVER__TOOL '{{}}' --url http://127.0.0.1:{port}"
    easy = [name for name, t in tools if not (t.get("inputSchema") or {}).get("required")]
    name = easy[0] if easy else tools[0][0]
    return f"{python} -m broker call {name} '{{}}' --url http://127.0.0.1:{port}"


def banner(port: int, processes: int, tools: list[tuple[str, dict[str, Any]]], servers: int,
           lagging: str = "") -> str:
    base = f"127.0.0.1:{port}"
    keyed = "  (send a key: --key K, or MCP_BROKER_API_KEY)" if load_keyring().enabled else ""
    head = f"mcp-broker is up: {servers} servers, {len(tools)} tools ({processes} processes; Ctrl-C stops all)"
    if lagging:
        head = f"mcp-broker is up, but not every server is ready after {READY_WAIT_S:g}s: {lagging}"
    return (
        f"\n==> {head}\n"
        f"    WebSocket        ws://{base}/mcp\n"
        f"    Streamable HTTP  http://{base}/mcp\n"
        f"    status page      http://{base}/status\n"
        f"    try a call       {example_call(tools, port)}{keyed}\n"
    )


def announce_when_ready(port: int, processes: int, config: BrokerConfig, redis_url: str, stop: threading.Event,
                        write: Callable[[str], object] | None = None) -> None:
    """Print the banner once every server is ready (or, after READY_WAIT_S, with what is not)."""
    write = write or (lambda text: print(text, flush=True))
    deadline = time.monotonic() + READY_WAIT_S
    body: dict[str, Any] | None = None
    while not stop.is_set():
        body = readiness(port)
        if body is not None and all_servers_ready(body):
            break
        if time.monotonic() > deadline:
            break
        stop.wait(0.25)
    if stop.is_set():
        return
    lagging = ""
    if body is None or not all_servers_ready(body):
        servers = (body or {}).get("servers") or {}
        lagging = ", ".join(f"{n} ({s.get('reason', 'not ready')})" for n, s in servers.items() if not s.get("ready"))
        lagging = lagging or "see /readyz"
    r = redis.Redis.from_url(redis_url)
    try:
        tools = catalog_tools(r, config)
    except (redis.RedisError, OSError, ValueError):
        tools = []
    finally:
        r.close()
    write(banner(port, processes, tools, len(config.servers), lagging))

