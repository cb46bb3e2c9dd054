"""A backend's catalog: everything it offers (tools, resources, resource templates, prompts), each list
walked to its last page, with its server info, capabilities and instructions."""

from __future__ import annotations

from typing import Any

from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND

from broker.schemas import NEGOTIATING_MODES
from workers.backends.methods import dump


async def list_catalog(client: Client, protocol: str) -> dict[str, Any]:
    """Everything the backend behind `client` offers; `protocol` is the server's `protocol` setting."""
    caps = client.server_capabilities
    # A session pinned to a modern revision (2026-07-28) adopts it without server/discover, so it knows no
    # capabilities: every list is tried, and one the backend does not serve (-32601) is empty.
    pinned = protocol not in NEGOTIATING_MODES
    out: dict[str, Any] = {"tools": [], "resources": [], "resourceTemplates": [], "prompts": []}
    served: dict[str, Any] = {}
    listings = [("tools", client.list_tools, caps.tools)]
    listings += [("resources", client.list_resources, caps.resources)]
    listings += [("resourceTemplates", client.list_resource_templates, caps.resources)]
    listings += [("prompts", client.list_prompts, caps.prompts)]
    for key, lister, supported in listings:
        if supported is None and not pinned:
            continue
        cursor: str | None = None
        for _ in range(1000):
            try:
                page = await lister(cursor=cursor)
            except MCPError as err:
                if pinned and err.code == METHOD_NOT_FOUND:
                    break
                raise
            served["resources" if key == "resourceTemplates" else key] = {}
            attribute = "resource_templates" if key == "resourceTemplates" else key
            out[key] += [dump(item) for item in getattr(page, attribute)]
            cursor = page.next_cursor
            if not cursor:
                break
    info = client.session.initialize_result
    out["serverInfo"] = dump(info.server_info) if info is not None else (
        dump(client.server_info) if client.server_info is not None else {})
    out["capabilities"] = {**served, **dump(caps)} if pinned else dump(caps)
    out["instructions"] = getattr(info, "instructions", None) if info is not None else client.instructions
    return out
