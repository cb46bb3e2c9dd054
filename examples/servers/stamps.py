"""A small 2026-07-28-era MCP server whose resource reads say how long anyone may reuse them.

`stamp://now` changes on every real read (a counter and the pid), and every
resources/read result carries the cache directive `cacheScope: "public"`,
`ttlMs: 60000` (the SDK's per-method cache hint). Behind the broker (backend
`protocol: "auto"`, so the worker speaks 2026-07-28 to it), the first read is
stored in the shared cache and later reads, by any client, are served from it
until the minute is up. `reads` tells how often the backend really ran.
`favourite` asks its question the 2026 way (an `input_required` result), so a
test can see it reach clients of both eras through the broker.
"""

from __future__ import annotations

import os

import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("stamps", cache_hints={"resources/read": CacheHint(ttl_ms=60_000, scope="public")})
_reads = {"count": 0}


@server.resource("stamp://now", mime_type="text/plain", description="Different on every real read")
def now() -> str:
    """A stamp that shows whether an answer came from the backend or from a cache."""
    _reads["count"] += 1
    return f"read {_reads['count']} by pid {os.getpid()}"


@server.tool()
def reads() -> int:
    """How many times `stamp://now` was really read."""
    return _reads["count"]


@server.tool()
async def favourite(ctx: Context) -> str | types.InputRequiredResult:
    """Asks the client the 2026 way: an `input_required` result, answered by a retry with `inputResponses`."""
    answer = (ctx.input_responses or {}).get("colour")
    if not isinstance(answer, types.ElicitResult) or answer.action != "accept":
        question = types.ElicitRequestFormParams(message="Favourite colour?", requested_schema={
            "type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]})
        return types.InputRequiredResult(input_requests={"colour": types.ElicitRequest(params=question)})
    return f"favourite colour: {(answer.content or {}).get('colour')}"


if __name__ == "__main__":
    server.run("stdio")
