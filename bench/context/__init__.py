"""The `context` scenario of `make bench` (issue 16): what the broker saves of a model's context.

    search.py     tool search: tokens of tools/list in full vs search mode (the whole published catalog,
                  and 100 tools), recall@1/@5 of broker__search_tools on queries.json, index build cost
    queries.json  307 everyday requests labeled with the tools that serve them (the ranking was tuned on it)
    queries_heldout.json  62 more, written after the ranking was frozen (never tuned on)

`run` runs every part and returns {part: results}; a part is one function here.
"""

from __future__ import annotations

from typing import Any

from bench.settings import Counts


def run(counts: Counts, redis_url: str) -> dict[str, Any]:
    from bench.context import search

    return {"search": search.run(counts, redis_url)}
