"""Anthropic Messages: `tool_use` blocks in, one user message of `tool_result` blocks out.

Read from a Message (or an assistant MessageParam) or a list of its content blocks; `input` is already an
object. A `tool_result` (`anthropic` 2.17.0 `ToolResultBlockParam`) carries text, image and document blocks,
so: text parts are text blocks; images of the four types the API takes (JPEG, PNG, GIF, WebP) are base64 image
blocks; a PDF resource is a base64 document block; other media are described in a text block. `is_error` is
set on tool errors, backend errors and calls that could not run. The structured content is sent as JSON text
only when the result has no text (MCP servers put its JSON in a text block as well: sending both would pay twice).
"""

from __future__ import annotations

from typing import Any

from broker.translate.toolcalls import CallFormat, Piece, Rendered, ToolCall, dicts, located, named

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MEDIA_NOTE = "a tool_result takes JPEG, PNG, GIF and WebP images and PDF documents"


def _blocks(body: Any) -> list[dict[str, Any]] | None:
    if isinstance(body, dict) and isinstance(body.get("content"), list) and (
            body.get("role") == "assistant" or body.get("type") == "message"):
        return dicts(body["content"])
    blocks = dicts(body)
    return blocks if any(b.get("type") == "tool_use" for b in blocks) else None


recognize, read = located(
    _blocks, "an assistant message or a list of content blocks with tool_use blocks",
    lambda blocks: [named(b, "name", b.get("id"), b.get("input")) for b in blocks if b.get("type") == "tool_use"])


def _block(piece: Piece) -> dict[str, Any]:
    if piece.kind == "text":
        return {"type": "text", "text": piece.text}
    if piece.kind == "image" and piece.mime in IMAGE_TYPES:
        return {"type": "image", "source": {"type": "base64", "media_type": piece.mime, "data": piece.data}}
    if piece.kind == "file" and piece.mime == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": piece.mime, "data": piece.data}}
    return {"type": "text", "text": piece.describe(MEDIA_NOTE)}


def answer(call: ToolCall, rendered: Rendered) -> dict[str, Any]:
    blocks = [_block(p) for p in rendered.pieces if p.kind != "text" or p.text]
    if not rendered.texts() and (rendered.structured is not None or rendered.is_error):
        text = Rendered(rendered.is_error, [], rendered.structured).text() or "the call failed"
        blocks.insert(0, {"type": "text", "text": text})
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.call_id or ""}
    if blocks:
        block["content"] = blocks
    if rendered.is_error:
        block["is_error"] = True
    return block


FORMAT = CallFormat("anthropic", "anthropic", recognize, read, answer,
                    lambda answers: {"message": {"role": "user", "content": answers}})
