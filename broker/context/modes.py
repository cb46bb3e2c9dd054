"""Catalog modes: how much of the catalog `tools/list` shows a conversation.

- `full` (the default): every tool the key may use, except those of servers marked `"defer": true` in
  their `broker` block; they stay callable and are found with `broker__search_tools`.
- `search`: only the *pinned* tools, plus the broker's own tools (`broker__search_tools` finds any tool
  the key may use, with its full input schema; `broker__call_tool` calls one by name). Over the 2,379
  tools of `../shared/catalogs/` this is what makes a client's first request small (`make bench`,
  scenario `context`).

Pinned tools are listed in either mode: a server's `"pin": ["glob", ...]` (its tool names, e.g.
`["get_current_time"]` or `["*"]` for the whole server) and a key's `"pin": ["<server>__<tool glob>", ...]`
(allow-list syntax, `broker.security.split_pattern`). A pin never widens what a key may use: allow-lists
apply to the listed, the found and the called tools alike.

Which mode a conversation is in, first match wins: the endpoint's `?tools=full|search` (WebSocket and
Streamable HTTP, both eras, `/mcp` and `/servers/<name>/mcp`), the key's `"tools"` setting (keys file),
the config's top-level `"broker": {"tools": ...}`, else `full`.

Order is deterministic (broker tools first, then by name): the same catalog gives the same bytes on every
web process and every connection, so clients' prompt caches hit.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from broker.security import split_pattern

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

FULL, SEARCH = "full", "search"


def catalog_mode(conversation: Conversation) -> str:
    """The conversation's mode: its endpoint's, else its key's, else the config's default."""
    return (conversation.catalog_mode or conversation.principal.catalog_mode
            or conversation.services.config.catalog_mode)


def is_pinned(conversation: Conversation, server: str, tool: str) -> bool:
    """Whether the server's or the key's `pin` list names the backend tool `tool` of `server`."""
    settings = conversation.services.config.server(server).settings
    if any(fnmatch.fnmatchcase(tool, glob) for glob in settings.pin):
        return True
    separator = conversation.services.config.separator
    return any(fnmatch.fnmatchcase(server, server_glob) and fnmatch.fnmatchcase(tool, tool_glob)
               for server_glob, tool_glob in (split_pattern(p, separator) for p in conversation.principal.pin))


def offers_search(conversation: Conversation) -> bool:
    """Whether tools/list must offer the search and call tools: in search mode, or on `/mcp` when a server
    is deferred (its tools are reachable only through them; a per-server endpoint lists its server whole)."""
    if catalog_mode(conversation) == SEARCH:
        return True
    config = conversation.services.config
    return conversation.scope is None and any(spec.settings.defer for spec in config.servers.values())


def backend_tools(conversation: Conversation) -> list[tuple[str, str, dict[str, Any]]]:
    """(server, the backend's name, the tool as the client names it) of every published tool of the
    endpoint, in config order: unprefixed on a per-server endpoint, namespaced on `/mcp`."""
    catalog, scope = conversation.services.catalog, conversation.scope
    catalog.ensure_fresh()
    servers = [scope] if scope else list(catalog.config.servers)
    return [(server, tool["name"], tool if scope else {**tool, "name": catalog.namespaced(server, tool["name"])})
            for server in servers for tool in catalog.documents.get(server, {}).get("tools", [])]


def listed_backend_tools(conversation: Conversation) -> list[dict[str, Any]]:
    """The backend tools `tools/list` shows this conversation, sorted by name (stable)."""
    search = catalog_mode(conversation) == SEARCH
    config, admission, scope = conversation.services.config, conversation.admission, conversation.scope
    shown = []
    for server, backend_name, tool in backend_tools(conversation):
        listed = not search and (scope is not None or not config.server(server).settings.defer)
        if (listed or is_pinned(conversation, server, backend_name)) and admission.visible("tools", tool):
            shown.append(tool)
    return sorted(shown, key=lambda tool: tool["name"])
