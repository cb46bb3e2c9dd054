"""A small stateful MCP server: notes kept in memory, with a resource and a prompt.

It shows what a stateless tool server does not: state that lives in the
backend process (why isolation matters), resources to read and prompts to get.
Its resource can be subscribed to: a client that did is told when a note is
added or the notes are cleared (`notifications/resources/updated`).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("notes")
_notes: list[str] = []
_subscribed: set[str] = set()  # uris some client subscribed to (through the broker: any client)
ALL_NOTES = "notes://all"


async def _changed(ctx: Context) -> None:
    if ALL_NOTES in _subscribed:
        await ctx.session.send_resource_updated(ALL_NOTES)


@server.tool()
async def add_note(text: str, ctx: Context) -> int:
    """Store a note; returns how many notes there are now."""
    _notes.append(text)
    await _changed(ctx)
    return len(_notes)


@server.tool()
def list_notes() -> list[str]:
    """All notes, oldest first."""
    return list(_notes)


@server.tool()
async def clear_notes(ctx: Context) -> int:
    """Forget every note; returns how many were dropped."""
    dropped = len(_notes)
    _notes.clear()
    await _changed(ctx)
    return dropped


async def _subscribe(_ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _subscribed.add(str(params.uri))
    return types.EmptyResult()


async def _unsubscribe(_ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _subscribed.discard(str(params.uri))
    return types.EmptyResult()


# MCPServer has no decorator for these: register them on its low-level server
server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, _subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, _unsubscribe)


@server.resource(ALL_NOTES, mime_type="text/plain")
def all_notes() -> str:
    """Every note, one a line."""
    return "\n".join(_notes)


@server.prompt()
def summarize(style: str = "short") -> str:
    """Ask the model to summarize the notes."""
    body = "\n".join(f"- {n}" for n in _notes) or "(no notes)"
    return f"Summarize these notes in a {style} style:\n{body}"


if __name__ == "__main__":
    server.run("stdio")
