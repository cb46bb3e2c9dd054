"""`broker__read_result`: one page of a tool result that was cut for a model's context (shaping.py).

A cut result ends with a note naming its handle and the call that reads the next page; this tool answers
that call from the kept pages (result_pages.py), in the web process, with no backend involved. The page's
text is the answer's first text part and its note the second, so a program that concatenates the first
parts of pages 1..N has exactly the result (tested). Only the key that received the result may read it:
another key's handle, an expired one and a page past the end are `isError` results whose
`structuredContent.error` says which (`result_not_found`, `page_out_of_range`), so the model can act on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.context.result_pages import PageUnavailable, ResultPages
from broker.context.shaping import page_result, read_tool_name

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

DESCRIPTION = ("Read one page of a tool result that was cut for length. A cut result ends with a note giving "
               "its handle and the next page; pass them here. Nothing of the result is lost: page by page, "
               "you can read all of it.")
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "handle": {"type": "string", "minLength": 1, "maxLength": 64,
                   "description": "The handle the cut result's note gives"},
        "page": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                 "description": "The page to read, from 1"},
    },
    "required": ["handle", "page"],
    "additionalProperties": False,
}
ANNOTATIONS: dict[str, Any] = {"title": "Read a page of a long result", "readOnlyHint": True,
                               "idempotentHint": True, "openWorldHint": False}


def handle(conversation: Conversation, _request_id: Any, arguments: dict[str, Any], _meta: dict[str, Any]) -> Any:
    """`arguments` checked against `INPUT_SCHEMA`."""
    services = conversation.services
    try:
        page = ResultPages(services.redis).read(conversation.principal.id, arguments["handle"], arguments["page"])
    except PageUnavailable as err:
        error: dict[str, Any] = {"code": err.code, "message": err.message, "handle": arguments["handle"]}
        if err.pages is not None:
            error["pages"] = err.pages
        return {"content": [{"type": "text", "text": err.message}], "structuredContent": {"error": error},
                "isError": True}
    return page_result(arguments["handle"], page.number, page.pages, page.text,
                       read_tool_name(services.config.separator))
