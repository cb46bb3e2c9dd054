"""An MCP server that serves a dumped catalog: the tools of a published server, with their exact schemas.

`python examples/servers/catalog.py PATH.json [PATH.json ...]` lists the tools of the `tools/list` dumps
(`../shared/catalogs/*.json`: {"server", "package", "tools": [...]}) exactly as their authors wrote them,
so the broker's catalog, tool search and token counts can be measured on real catalogs (tests and
`make bench`, scenario `context`) without their packages or credentials. A call is answered trivially:
the tool's name and the arguments it got, as text. A tool that declares an `outputSchema` answers with
`isError` (this fixture cannot make up structured content its schema accepts, and a client's SDK checks it).

`CATALOG_EXTRA_TOOL=name` adds one more tool (`name`, taking `text`), so a test can change a catalog.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


def load_tools(paths: list[str]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for path in paths:
        tools += json.loads(Path(path).read_text(encoding="utf-8"))["tools"]
    extra = os.environ.get("CATALOG_EXTRA_TOOL")
    if extra:
        tools.append({"name": extra, "description": "An extra tool added by the test.",
                      "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}})
    return tools


def build(tools: list[dict[str, Any]]) -> Server[Any]:
    listed = [types.Tool.model_validate(tool) for tool in tools]
    with_output = {tool["name"] for tool in tools if tool.get("outputSchema")}

    async def list_tools(_ctx: Any, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = f"{params.name} called with {json.dumps(params.arguments or {}, sort_keys=True)}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    is_error=params.name in with_output)

    return Server("catalog", on_list_tools=list_tools, on_call_tool=call_tool)


async def main(paths: list[str]) -> None:
    server = build(load_tools(paths))
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
