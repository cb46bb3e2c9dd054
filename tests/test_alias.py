"""Short tool names: a server's `alias` replaces its name as the prefix of its tools and prompts.

Hosts prefix the broker's names again (Claude Code: `mcp__<server>__`), and some allow 64 characters in all:
`mcp__broker__filesystem__list_directory_with_sizes` is 50. With `"broker": {"alias": "fs"}` the server's
tools are listed and callable as `fs__<tool>`, while allow-lists, metrics and resource URIs keep naming the
server. A real stack of its own (a server with an alias, two keys) serves the checks, over the broker's
socket and through `mcp-broker connect`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from broker.config import ConfigError, parse_config
from tests.stack import ROOT, Stack
from tests.wsclient import RawClient

KEYS = "wide:wide-key:longserver_alias_test,narrow:narrow-key:time"


@pytest.fixture(scope="module")
def alias_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("alias") / "mcp_servers.json"
    config.write_text(json.dumps({"mcpServers": {"longserver_alias_test": {
        "command": "python", "args": [str(ROOT / "examples" / "servers" / "echo.py")],
        "broker": {"alias": "ls", "concurrency": 2, "timeout_s": 10}}}}))
    stack = Stack(redis_url, config_path=config)
    try:
        stack.start_worker("longserver_alias_test")
        stack.start_web(env={"MCP_BROKER_API_KEYS": KEYS})
        stack.wait_for_catalog(["longserver_alias_test"])
        stack.wait_web_ready(stack.web_ports[0])
        yield stack
    finally:
        stack.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_tools_are_listed_and_called_by_the_alias(alias_stack: Stack) -> None:
    with RawClient(alias_stack.ws_url(), additional_headers=bearer("wide-key")) as client:
        names = {tool["name"] for tool in client.request("tools/list")["result"]["tools"]}
        assert "ls__echo" in names and not any(n.startswith("longserver_alias_test__") for n in names)
        answer = client.call("ls__echo", {"text": "short"})
        assert answer["result"]["structuredContent"]["result"] == "short"
        # the long name names no tool now (for a key with an allow-list, nothing it may use: refused as such)
        error = client.call("longserver_alias_test__echo", {"text": "long"})["error"]
        assert "may not use tool longserver_alias_test__echo" in error["message"]


def test_allow_lists_still_name_the_server(alias_stack: Stack) -> None:
    """`narrow` may use only the server `time`: the aliased server's tools are hidden and refused."""
    with RawClient(alias_stack.ws_url(), additional_headers=bearer("narrow-key")) as client:
        assert not [t for t in client.request("tools/list")["result"]["tools"] if t["name"].startswith("ls__")]
        error = client.call("ls__echo", {"text": "no"})["error"]
        assert "may not use tool ls__echo" in error["message"]


def test_the_bridge_serves_the_short_names(alias_stack: Stack) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "broker", "connect", alias_stack.ws_url()],
                                   env={"PYTHONPATH": str(ROOT), "MCP_BROKER_KEY": "wide-key"}, cwd="/")

    async def scenario() -> None:
        async with Client(params, read_timeout_seconds=60, mode="legacy") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert "ls__echo" in names
            # what a host that prefixes `mcp__broker__` shows: well under 64 characters
            assert len("mcp__broker__ls__echo") == 21
            echoed = await client.call_tool("ls__echo", {"text": "via the bridge"})
            assert echoed.structured_content == {"result": "via the bridge"}

    anyio.run(scenario)


@pytest.mark.parametrize(("servers", "expected"), [
    ({"a": {"command": "x", "broker": {"alias": "b__c"}}}, "the alias must not contain the separator '__'"),
    ({"a": {"command": "x", "broker": {"alias": "b_"}}}, "the alias must not end with the start of the separator"),
    ({"a": {"command": "x"}, "b": {"command": "x", "broker": {"alias": "a"}}},
     "'a' is already the name or alias of server 'a'"),
    ({"a": {"command": "x", "broker": {"alias": "z"}}, "b": {"command": "x", "broker": {"alias": "z"}}},
     "'z' is already the name or alias of server 'a'"),
    ({"a": {"command": "x", "broker": {"alias": "-x"}}}, "starting with a letter or digit"),
])
def test_an_alias_that_would_make_names_ambiguous_is_refused(servers: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"mcpServers": servers})
    assert expected in str(raised.value)


def test_an_alias_may_be_the_servers_own_name_and_the_separator_applies(tmp_path: Path) -> None:
    config = parse_config({"broker": {"separator": "."},
                           "mcpServers": {"files": {"command": "x", "broker": {"alias": "files"}},
                                          "github": {"command": "x", "broker": {"alias": "gh"}}}})
    assert (config.prefix("files"), config.prefix("github")) == ("files", "gh")
    assert config.server_of_prefix("gh") == "github" and config.server_of_prefix("github") is None
