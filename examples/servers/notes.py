"""A small stateful MCP server: notes kept in memory, with a resource and a prompt.

It shows what a stateless tool server does not: state that lives in the
backend process (why isolation matters), resources to read and prompts to get.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")
_notes: list[str] = []


@server.tool()
def add_note(text: str) -> int:
    """Store a note; returns how many notes there are now."""
    _notes.append(text)
    return len(_notes)


@server.tool()
def list_notes() -> list[str]:
    """All notes, oldest first."""
    return list(_notes)


@server.tool()
def clear_notes() -> int:
    """Forget every note; returns how many were dropped."""
    dropped = len(_notes)
    _notes.clear()
    return dropped


@server.resource("notes://all", mime_type="text/plain")
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
