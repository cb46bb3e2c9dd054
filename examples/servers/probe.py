"""An MCP server that shows what reached it: its environment, the HTTP headers of the request, who it is.

For tests and for checking a deployment: `${VAR}` expansion into a stdio
server's `env` (tool `env`) and an HTTP server's `headers` (tool `headers`),
client headers passed through (`forward_headers`), and which replica answered
(`whoami`). Runs on stdio by default, or `--http PORT` (Streamable HTTP at /mcp).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("probe")
NAME = {"value": os.environ.get("PROBE_NAME", "probe")}
CANCELLED: list[float] = []


@server.tool()
def whoami() -> dict[str, int | str]:
    """This process: its name (--name or $PROBE_NAME) and pid."""
    return {"name": NAME["value"], "pid": os.getpid()}


@server.tool()
def env(name: str) -> dict[str, str | None]:
    """One variable of this server's environment (null when unset)."""
    return {"name": name, "value": os.environ.get(name)}


@server.tool()
def headers(ctx: Context) -> dict[str, str]:
    """The HTTP headers of this request, names lower-cased ({} on stdio)."""
    request = ctx.request_context.request
    found = getattr(request, "headers", None)
    return {k.lower(): v for k, v in found.items()} if found is not None else {}


@server.tool()
def request(ctx: Context) -> dict[str, Any]:
    """This request as the server saw it: its JSON-RPC id and its `_meta` (without a progress token)."""
    meta = dict(ctx.request_context.meta or {})
    kept = {k: v for k, v in meta.items() if k not in ("progressToken", "progress_token")}
    return {"id": ctx.request_context.request_id, "meta": kept}


@server.tool()
async def hold(seconds: float) -> str:
    """Sleep `seconds`; a client's cancellation ends it early and is remembered (tool `cancelled`)."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(seconds)
        raise
    return "held"


@server.tool()
def cancelled() -> list[float]:
    """The `seconds` of every `hold` a client cancelled, oldest first."""
    return list(CANCELLED)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--name", help="what whoami answers (default $PROBE_NAME or 'probe')")
    options = parser.parse_args()
    if options.name:
        NAME["value"] = options.name
    if options.http:
        server.run("streamable-http", host="127.0.0.1", port=options.http)
    else:
        server.run("stdio")
