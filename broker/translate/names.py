"""Tool names as each LLM API accepts them, and back.

The broker's tool names are `<server>__<tool>` within MCP's `^[A-Za-z0-9._-]{1,128}$`; the LLM APIs are
stricter. OpenAI (Chat Completions and Responses, `openai` 3.63.0 `FunctionDefinition.name`) and Anthropic
(`ToolParam.name`, API docs) take `^[a-zA-Z0-9_-]{1,64}$`. Gemini (`google-genai` 3.6.1
`FunctionDeclaration.name`) takes `[a-zA-Z0-9_.:-]`, starting with a letter or an underscore; that SDK says 128
characters at most where earlier releases and the Vertex AI docs said 64, so we keep to 64, which every Gemini
endpoint takes. Of the 2,379 tools of the 88 catalogs in `../shared/catalogs` (namespaced), 6 are longer than 64
characters; all of them use only characters every one of these APIs takes.

The rule, per API: a name the API takes is used as it is; any other becomes its legal characters (others
replaced by `_`, cut to fit) plus `_` and 8 hex digits of the SHA-256 of the whole original name. So the
provider name is a pure function of the MCP name — the same in every process, whatever else is in the catalog —
and two names that differ only in a replaced character or past the cut still map apart. Going back is a lookup
among the caller's visible tools (`resolve`): no state is kept anywhere. Two visible tools could still meet on
one provider name (a tool literally named like another's hashed form, or a 32-bit hash collision); `mapping`
settles that deterministically: the tool whose name needed no change wins, then the smaller MCP name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

PROVIDERS = ("mcp", "openai", "openai-responses", "anthropic", "gemini")

HASH_DIGITS = 8


@dataclass(frozen=True)
class NameRule:
    """What one API takes as a function name: the whole-name pattern, the character class used to replace
    others, and whether a name must start with a letter or an underscore."""

    valid: re.Pattern[str] | None  # None: any name goes (MCP itself)
    illegal: re.Pattern[str] | None
    max_length: int
    letter_first: bool = False


_OPENAI_LIKE = NameRule(re.compile(r"[a-zA-Z0-9_-]{1,64}"), re.compile(r"[^a-zA-Z0-9_-]"), 64)
_GEMINI = NameRule(re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}"), re.compile(r"[^a-zA-Z0-9_.:-]"), 64, True)

RULES: dict[str, NameRule] = {
    "mcp": NameRule(None, None, 0),
    "openai": _OPENAI_LIKE,
    "openai-responses": _OPENAI_LIKE,
    "anthropic": _OPENAI_LIKE,
    "gemini": _GEMINI,
}
assert tuple(RULES) == PROVIDERS


def _rule(provider: str) -> NameRule:
    try:
        return RULES[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(PROVIDERS)}") from None


def name_digest(mcp_name: str) -> str:
    """The suffix a changed name carries: 8 hex digits of the SHA-256 of the original (UTF-8, surrogates kept)."""
    return hashlib.sha256(mcp_name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]


@lru_cache(maxsize=65536)
def provider_name(mcp_name: str, provider: str) -> str:
    """The name `provider`'s API sees for the MCP tool `mcp_name`: itself when the API takes it, else its legal
    characters (cut to fit) + `_` + `name_digest(mcp_name)`. Pure: stable across calls, processes and catalogs."""
    rule = _rule(provider)
    if rule.valid is None or rule.valid.fullmatch(mcp_name):
        return mcp_name
    assert rule.illegal is not None
    stem = rule.illegal.sub("_", mcp_name)
    if rule.letter_first and not re.match(r"[a-zA-Z_]", stem):
        stem = "_" + stem
    suffix = "_" + name_digest(mcp_name)
    return stem[: rule.max_length - len(suffix)] + suffix


def is_valid(name: str, provider: str) -> bool:
    """Whether `provider`'s API takes `name` as a function name as it is."""
    rule = _rule(provider)
    return rule.valid is None or bool(rule.valid.fullmatch(name))


def mapping(visible_mcp_names: Iterable[str], provider: str) -> dict[str, str]:
    """provider name → MCP name for every visible tool; where two tools meet on one provider name, the one whose
    name needed no change wins, then the smaller MCP name (the loser is in `collisions`)."""
    table: dict[str, str] = {}
    for mcp_name in sorted(set(visible_mcp_names), key=lambda n: (provider_name(n, provider) != n, n)):
        table.setdefault(provider_name(mcp_name, provider), mcp_name)
    return table


def collisions(visible_mcp_names: Iterable[str], provider: str) -> dict[str, str]:
    """MCP name → the MCP name that took its provider name, for the visible tools that lost a collision."""
    names = set(visible_mcp_names)
    table = mapping(names, provider)
    return {n: table[provider_name(n, provider)] for n in sorted(names) if table[provider_name(n, provider)] != n}


class Resolver:
    """`resolve` for many names among one set of visible tools: the set and its `mapping` are built once (at
    most: only when a name is unknown or changed), not per name. Rebuilding them per call cost 12.7 ms a name at
    the 2,379 tools of `../shared/catalogs`, so a body of junk names was minutes of CPU; now each name is a
    dict lookup."""

    def __init__(self, visible_mcp_names: Iterable[str], provider: str) -> None:
        _rule(provider)
        self.provider = provider
        self.names = frozenset(visible_mcp_names)
        self._table: dict[str, str] | None = None

    def __call__(self, name: str) -> str | None:
        if name in self.names and provider_name(name, self.provider) == name:
            return name  # the common case: the name needed no change, and an unchanged name wins any collision
        if self._table is None:
            self._table = mapping(self.names, self.provider)
        return self._table.get(name)


def resolve(name: str, visible_mcp_names: Iterable[str], provider: str) -> str | None:
    """The MCP tool a provider-side `name` stands for among the caller's visible tools; None if none does.

    Only names this module hands out resolve: a model that answers with an unmapped original name (one the API
    would have refused) is not guessed at. For many names among the same tools, build one `Resolver`."""
    return Resolver(visible_mcp_names, provider)(name)
