"""The table of LLM API shapes the broker executes tool calls from, and how a body's shape is found.

A `format` the caller names is used as given (`?format=openai`); without one, the body's shape is recognized
when exactly one format claims it (each recognizer looks for what only its API writes: `choices` or
`tool_calls`, `function_call` items, `tool_use` blocks, `functionCall` parts). A native call (`{"tool": ...}`)
is none of them.
"""

from __future__ import annotations

from typing import Any

from broker.translate import calls_anthropic, calls_gemini, calls_openai, calls_openai_responses
from broker.translate.toolcalls import CallFormat

CALL_FORMATS: dict[str, CallFormat] = {f.name: f for f in (
    calls_openai.FORMAT, calls_openai_responses.FORMAT, calls_anthropic.FORMAT, calls_gemini.FORMAT)}
NATIVE = frozenset({"mcp", "native"})


class UnknownShape(ValueError):
    """A format that does not exist, or a body no format (or more than one) claims."""


def is_native(body: Any) -> bool:
    return isinstance(body, dict) and "tool" in body


def find_format(body: Any, named: str | None = None) -> CallFormat | None:
    """The format of `body` (`named`, else recognized); None for a native call or a body nobody claims
    (it then gets the native path's own error). Raises `UnknownShape` for an unknown name or an ambiguous body."""
    if named:
        if named in NATIVE:
            return None
        if named not in CALL_FORMATS:
            raise UnknownShape(f"unknown format {named!r}; use one of: mcp, {', '.join(CALL_FORMATS)}")
        return CALL_FORMATS[named]
    if is_native(body):
        return None
    claims = [f for f in CALL_FORMATS.values() if f.recognize(body)]
    if len(claims) > 1:
        raise UnknownShape(f"the body reads as more than one format ({', '.join(f.name for f in claims)}); "
                           f"name it with ?format=")
    return claims[0] if claims else None
