"""The caller's tools as one API's tool definitions: the table of formats, and the answer of `GET /v1/tools`.

Each format is a row: how one tool is written (its provider module's `definition`), and how the list is wrapped
(Gemini groups declarations in one `Tool`: `[{"functionDeclarations": [...]}]`, what `google.genai.types.Tool`
and the REST `tools` field take; the others are a plain list of tools). The answer lists tools in MCP-name order
(deterministic whatever order the backends published in) and says what did not translate as it was:

    {"format": "openai", "tools": [...],
     "unsupported": [{"name": <MCP name>, "reason": ...}],   # left out: the API cannot take it
     "adapted": [{"name": <MCP name>, "reason": ...}],       # in, but changed (strict false, keywords dropped)
     "renamed": {<provider name>: <MCP name>}}               # names that had to change (broker.translate.names)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from broker.translate import anthropic, gemini, openai
from broker.translate.names import PROVIDERS, collisions, provider_name
from broker.translate.schemas import Definition, Unexpressible

Define = Callable[[dict[str, Any], str, bool], Definition]


def _mcp_definition(tool: dict[str, Any], name: str, strict: bool) -> Definition:
    return Definition(tool)  # as tools/list shows it


def _plain(definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return definitions


def _one_gemini_tool(definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"functionDeclarations": definitions}] if definitions else []


@dataclass(frozen=True)
class Format:
    """One API's tool definitions: the shape of one tool, and of the list."""

    define: Define
    wrap: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    summary: str


FORMATS: dict[str, Format] = {
    "mcp": Format(_mcp_definition, _plain, "MCP tools/list entries"),
    "openai": Format(openai.chat_definition, _plain, "OpenAI Chat Completions tools"),
    "openai-responses": Format(openai.responses_definition, _plain, "OpenAI Responses API function tools"),
    "anthropic": Format(anthropic.definition, _plain, "Anthropic Messages API tools"),
    "gemini": Format(gemini.definition, _one_gemini_tool, "Gemini tools (one Tool with functionDeclarations)"),
}
assert tuple(FORMATS) == PROVIDERS


class UnknownFormat(ValueError):
    """A format name not in `FORMATS`; the message lists the ones there are."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown format {name!r}: one of {', '.join(FORMATS)}")


class DefinitionCache:
    """A web process's definitions by (format, strict, tool name), reused while the tool is unchanged: adapting
    the 2,379 catalog tools takes ~1 s (OpenAI strict forms), comparing them with the cached ones ~50 ms."""

    MAX_ENTRIES = 50_000

    def __init__(self) -> None:
        self._entries: dict[tuple[str, bool, str], tuple[dict[str, Any], Definition | Unexpressible]] = {}

    def define(self, fmt: Format, format_name: str, tool: dict[str, Any], name: str, strict: bool) -> Definition:
        key = (format_name, strict, str(tool.get("name", "")))
        hit = self._entries.get(key)
        if hit is None or hit[0] != tool:
            try:
                made: Definition | Unexpressible = fmt.define(tool, name, strict)
            except Unexpressible as err:
                made = err
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            hit = self._entries[key] = (tool, made)
        if isinstance(hit[1], Unexpressible):
            raise hit[1]
        return hit[1]


def tool_definitions(tools: Iterable[dict[str, Any]], format_name: str, strict: bool = True,
                     cache: DefinitionCache | None = None) -> dict[str, Any]:
    """The answer of `GET /v1/tools?format=...` for these (the caller's visible) MCP tools."""
    fmt = FORMATS.get(format_name)
    if fmt is None:
        raise UnknownFormat(format_name)
    ordered = sorted(tools, key=lambda t: str(t.get("name", "")))
    names = [str(t.get("name", "")) for t in ordered]
    taken = collisions(names, format_name)
    out: list[dict[str, Any]] = []
    unsupported: list[dict[str, str]] = []
    adapted: list[dict[str, str]] = []
    renamed: dict[str, str] = {}
    for tool, name in zip(ordered, names, strict=True):
        mapped = provider_name(name, format_name)
        if name in taken:
            unsupported.append({"name": name, "reason": f"its {format_name} name {mapped!r} is the name of "
                                                        f"{taken[name]!r}"})
            continue
        try:
            definition = (cache.define(fmt, format_name, tool, mapped, strict) if cache is not None
                          else fmt.define(tool, mapped, strict))
        except Unexpressible as err:
            unsupported.append({"name": name, "reason": str(err)})
            continue
        out.append(definition.payload)
        adapted.extend({"name": name, "reason": note} for note in definition.notes)
        if mapped != name:
            renamed[mapped] = name
    return {"format": format_name, "tools": fmt.wrap(out), "unsupported": unsupported, "adapted": adapted,
            "renamed": renamed}
