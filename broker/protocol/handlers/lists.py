"""The list methods, answered from the catalog (never a backend): paged, and showing a key only what it may use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS

from broker.catalog import CursorError
from broker.context.modes import listed_backend_tools
from broker.context.tools import listed_broker_tools
from broker.protocol.framing import RPCError

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

LISTS = {  # list method → (catalog attribute, result key, list_changed notification)
    "tools/list": ("tools", "tools", "notifications/tools/list_changed"),
    "prompts/list": ("prompts", "prompts", "notifications/prompts/list_changed"),
    "resources/list": ("resources", "resources", "notifications/resources/list_changed"),
    "resources/templates/list": ("resource_templates", "resourceTemplates", "notifications/resources/list_changed"),
}


def changed_notices(attributes: set[str]) -> list[str]:
    """The list_changed notifications for the catalog lists that moved."""
    return sorted({notice for attr, _, notice in LISTS.values() if attr in attributes})


def list_items(method: str, conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One page of a list (`params` loaded by `PaginatedParamsSchema`)."""
    attribute, result_key, _ = LISTS[method]
    services, scope = conversation.services, conversation.scope
    catalog = services.catalog
    catalog.ensure_fresh()
    services.request_missing_catalogs()
    if attribute == "tools":  # the catalog mode's choice (broker.context.modes), the broker's own tools first
        items = listed_broker_tools(conversation) + listed_backend_tools(conversation)
    else:
        items = catalog.server_items(attribute, scope) if scope else getattr(catalog, attribute)
        items = [item for item in items if conversation.admission.visible(attribute, item)]
    try:
        page = catalog.page(items, params["cursor"], services.page_size)
    except CursorError as err:
        raise RPCError(INVALID_PARAMS, f"Invalid params: {err}") from None
    result: dict[str, Any] = {result_key: page["items"]}
    if "nextCursor" in page:
        result["nextCursor"] = page["nextCursor"]
    return result
