"""Results shaped for a model on the real stack (issue 16 part 2): real web processes, workers and backends.

A long text (a realistic log, sent through `echo__echo`) comes back cut on the model-facing endpoints, and
`broker__read_result` returns every page: the pages concatenated are exactly the text, over the WebSocket
and over modern-era Streamable HTTP. Programs get raw results (`?results=raw`, the Python client, /v1/calls).
Compaction (`?result_format=`, and a server's config) decodes to the identical JSON value and never touches
`structuredContent`. A handle is its key's alone; an expired handle, a page past the end and bad arguments
are structured errors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from broker import keys as redis_keys
from broker.context import compaction, tokens
from broker.context.result_pages import handle_digest
from client.broker_client import MCPBrokerClient
from tests.stack import TEST_CONFIG, Stack
from tests.wsclient import RawClient

READ = "broker__read_result"
LOG = "\n".join(f"2026-12-07T10:{i % 60:02d}:{i % 59:02d}.{i % 997:03d}Z {'INFO' if i % 11 else 'WARN'} "
                f"api[{i % 7}] GET /v1/items/{i}?expand=owner status=200 bytes={i * 37 % 9000} "
                f"took={i % 113}ms user=ünïcödé-{i % 5}" for i in range(3000))  # ~100K tokens, 230 KB
ROWS = [{"id": i, "name": f"item {i}", "price": round(i * 1.25, 2), "in_stock": i % 3 == 0} for i in range(200)]
KEYS = {"alice": "K-alice-pages-1", "bob": "K-bob-pages-2"}
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "pages", "version": "1"}}


def _config(path: Path) -> Path:
    """The test config (absolute paths) with the `echo` server's results shaped by its config."""
    config = json.loads(TEST_CONFIG.read_text())
    for entry in config["mcpServers"].values():
        entry["args"] = [str((TEST_CONFIG.parent / a).resolve()) if a.startswith("../") else a for a in entry["args"]]
    config["mcpServers"]["echo"]["broker"].update({"max_result_tokens": {"*": 2000, "blob": 0},
                                                   "result_format": {"echo": "toon"}})
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def webs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Two more web processes: one with keys (alice, bob) and a short page lifetime, one whose config
    shapes the echo server's results (the workers keep the session stack's config: shaping is the web's)."""
    keyed = {"MCP_BROKER_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
             "MCP_BROKER_RESULT_PAGES_TTL_S": "2"}
    configured = {"MCP_BROKER_CONFIG": str(_config(tmp_path_factory.mktemp("shaped") / "config.json"))}
    with stack.extra_webs(keyed, count=1) as first, stack.extra_webs(configured, count=1) as second:
        yield [*first, *second]


def texts(result: dict[str, Any]) -> list[str]:
    return [part["text"] for part in result["content"] if part.get("type") == "text"]


def handle_of(note: str) -> str:
    call = json.loads(note[note.index("{"):note.index("}") + 1])
    assert call["page"] == 2
    return str(call["handle"])


def read_all(call: Any, first: dict[str, Any], limit: int) -> str:
    """Page 1 from `first`, the rest through the page tool with `call(name, arguments)`: the whole text."""
    page, note = texts(first)
    handle = handle_of(note)
    assert tokens.count(page) + tokens.count(note) <= limit
    pages, number = [page], 2
    while True:
        result = call(READ, {"handle": handle, "page": number})
        assert not result.get("isError"), result
        page, note = texts(result)
        assert tokens.count(page) + tokens.count(note) <= limit
        pages.append(page)
        if note.startswith("[End of result"):
            return "".join(pages)
        assert json.dumps({"handle": handle, "page": number + 1}) in note
        number += 1


def test_a_long_result_is_cut_and_every_page_reads_back_exactly_over_the_websocket(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        listed = [tool["name"] for tool in client.request("tools/list")["result"]["tools"]]
        assert READ in listed
        first = client.call("echo__echo", {"text": LOG}, timeout=60)["result"]
        assert texts(first)[0] != LOG and tokens.count(LOG) > 50_000
        assert read_all(lambda name, args: client.call(name, args)["result"], first, 10_000) == LOG
    with RawClient(stack.ws_url() + "?max_result_tokens=3000") as client:  # a client's own limit
        first = client.call("echo__echo", {"text": LOG}, timeout=60)["result"]
        assert read_all(lambda name, args: client.call(name, args)["result"], first, 3000) == LOG


def test_pages_read_back_exactly_over_modern_http_on_a_per_server_endpoint(stack: Stack) -> None:
    def call(http: httpx2.Client, url: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": arguments, "_meta": ENVELOPE}}
        headers = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
                   "Mcp-Method": "tools/call", "Mcp-Name": name}
        answer = http.post(url, content=json.dumps(body), headers=headers).json()
        assert "result" in answer, answer
        return answer["result"]  # type: ignore[no-any-return]

    url = f"{stack.http_url()}/servers/echo/mcp"
    with httpx2.Client(timeout=60) as http:
        first = call(http, url, "echo", {"text": LOG})
        assert read_all(lambda name, args: call(http, url, name, args), first, 10_000) == LOG


def test_programs_get_raw_results(stack: Stack) -> None:
    with RawClient(stack.ws_url() + "?results=raw") as client:
        assert texts(client.call("echo__echo", {"text": LOG}, timeout=60)["result"]) == [LOG]
        assert READ not in [tool["name"] for tool in client.request("tools/list")["result"]["tools"]]
    with MCPBrokerClient(stack.ws_url()) as client:  # the Python client asks for raw results by default
        result = client.call("echo__echo", {"text": LOG})
        assert [part.text for part in result.content] == [LOG]
    response = httpx2.post(f"{stack.http_url()}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": LOG}},
                           timeout=60)
    assert texts(response.json()["result"]) == [LOG]


def test_compaction_round_trips_and_structured_content_stays_exact(stack: Stack) -> None:
    pretty = json.dumps(ROWS, indent=2)
    with RawClient(stack.ws_url() + "?results=raw") as raw:
        exact = raw.call("echo__whoami")["result"]
        echoed = raw.call("echo__echo", {"text": pretty})["result"]
    for result_format in ("compact", "toon"):
        with RawClient(stack.ws_url() + f"?result_format={result_format}") as client:
            shaped = client.call("echo__echo", {"text": pretty})["result"]
            [text] = texts(shaped)
            assert compaction.identical(compaction.decode(text), ROWS)
            assert tokens.count(text) < tokens.count(pretty)
            assert shaped.get("structuredContent") == echoed.get("structuredContent")
            whoami = client.call("echo__whoami")["result"]
            assert whoami["structuredContent"] == exact["structuredContent"]
            assert compaction.identical(compaction.decode(texts(whoami)[0]), exact["structuredContent"])
    with RawClient(stack.ws_url() + "?result_format=compact") as client:
        assert texts(client.call("echo__echo", {"text": pretty})["result"]) == [json.dumps(ROWS, separators=(",", ":"))]


def test_a_servers_config_shapes_its_tools(stack: Stack, webs: list[int]) -> None:
    url = f"ws://127.0.0.1:{webs[1]}/mcp"
    with RawClient(url) as client:
        [toon] = texts(client.call("echo__echo", {"text": json.dumps(ROWS[:50], indent=2)})["result"])
        assert compaction.parse(toon) is None and compaction.identical(compaction.decode(toon), ROWS[:50])
        first = client.call("echo__echo", {"text": LOG}, timeout=60)["result"]  # the server's 2,000 tokens
        assert read_all(lambda name, args: client.call(name, args)["result"], first, 2000) == LOG
        assert texts(client.call("echo__blob", {"size": 50_000})["result"]) == ["x" * 50_000]  # 0: never cut


def test_a_handle_is_its_keys_alone_and_expires(stack: Stack, webs: list[int]) -> None:
    url = f"ws://127.0.0.1:{webs[0]}/mcp"
    with RawClient(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as alice, \
            RawClient(url, additional_headers={"Authorization": f"Bearer {KEYS['bob']}"}) as bob:
        handle = handle_of(texts(alice.call("echo__echo", {"text": LOG}, timeout=60)["result"])[1])
        assert not alice.call(READ, {"handle": handle, "page": 2})["result"].get("isError")
        stolen = bob.call(READ, {"handle": handle, "page": 2})["result"]
        assert stolen["isError"] and stolen["structuredContent"]["error"]["code"] == "result_not_found"
        r = stack.redis()
        deadline = time.monotonic() + 20
        while r.exists(redis_keys.result_pages(handle_digest(handle))) and time.monotonic() < deadline:
            time.sleep(0.2)  # MCP_BROKER_RESULT_PAGES_TTL_S=2 on this web process
        expired = alice.call(READ, {"handle": handle, "page": 2})["result"]
        assert expired["isError"] and expired["structuredContent"]["error"]["code"] == "result_not_found"
        assert "expired" in texts(expired)[0]


def test_bad_page_arguments_get_structured_errors(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        handle = handle_of(texts(client.call("echo__echo", {"text": LOG}, timeout=60)["result"])[1])
        past = client.call(READ, {"handle": handle, "page": 999})["result"]
        assert past["isError"] and past["structuredContent"]["error"]["code"] == "page_out_of_range"
        assert past["structuredContent"]["error"]["pages"] >= 5
        for bad in ({"handle": handle, "page": 0}, {"handle": handle, "page": "2"}, {"page": 2},
                    {"handle": handle, "page": 2, "extra": 1}):
            result = client.call(READ, bad)["result"]
            assert result["isError"] and "Invalid arguments for tool broker__read_result" in texts(result)[0]
        unknown = client.call(READ, {"handle": "not-a-handle", "page": 1})["result"]
        assert unknown["structuredContent"]["error"]["code"] == "result_not_found"


def test_a_bad_results_query_is_refused_with_a_structured_error(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        RawClient(stack.ws_url() + "?results=sometimes")
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_results_query"
    response = httpx2.post(f"{stack.http_url()}/mcp?result_format=yaml", content="{}", timeout=10,
                           headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert response.status_code == 400 and "result_format" in response.json()["error"]["message"]
