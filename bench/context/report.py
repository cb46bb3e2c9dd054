"""The `context` scenario's part of the printed table and its targets (issue 16's acceptance)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Add = Callable[[str, float | None, str, bool | None, str], None]


def _n(value: float) -> str:
    return f"{value:,.0f}"


def search_section(s: dict[str, Any]) -> str:
    lines = [f"5. Context, tool search: {s.get('servers', '?')} published catalogs "
             f"({s['offline']['tools']:,} tools) served by the real stack"]
    listing = s.get("list") or {}
    for key, label in (("all", "whole catalog"), ("hundred", "100 tools (15 reference servers)")):
        full, search = listing.get(f"{key}_full"), listing.get(f"{key}_search")
        if full and search:
            lines.append(f"   tools/list, {label}: full {full['tools']:,} tools = {_n(full['tokens'])} tokens "
                         f"({full['bytes'] / 1e6:.2f} MB); search mode {search['tools']} tools = "
                         f"{_n(search['tokens'])} tokens: {listing[f'{key}_saved']:.1%} fewer")
    recall = s.get("recall") or {}
    for name, label in (("tuned", "the set it was tuned on"), ("held_out", "held-out set")):
        if name in recall:
            r = recall[name]
            lines.append(f"   broker__search_tools over the WebSocket, {label} ({r['queries']} requests): "
                         f"recall@1 {r['recall_at_1']:.3f}, recall@5 {r['recall_at_5']:.3f}")
    if recall:
        lines.append(f"   search p50 {recall['search_ms_p50']:.0f} ms (max {recall['search_ms_max']:.0f}); "
                     f"first search of a cold web process {recall['first_search_s']:.1f} s (the index is "
                     f"built; slowest ping on another connection meanwhile "
                     f"{recall.get('ping_ms_max_during_build', float('nan')):.0f} ms, "
                     f"{recall.get('ping_ms_max_idle', float('nan')):.0f} ms over 3 s before it)")
    offline = s["offline"]
    ranks = ", ".join(f"{name} {r['recall_at_1']:.3f}/{r['recall_at_5']:.3f}" for name, r in offline.items()
                      if isinstance(r, dict))
    lines.append(f"   rankings alone on the tuned set, recall@1/@5 (in-process, same catalog): {ranks}")
    lines.append(f"   index build: whole catalog {offline['build_s']:.2f} s, after one server changed "
                 f"{offline['rebuild_one_server_s']:.2f} s (on a native thread: the event loop keeps serving); "
                 f"the worker embedded every tool {offline.get('vectors_s', float('nan')):.0f} s after "
                 f"the catalogs were out (once per catalog digest, kept in Redis)")
    return "\n".join(lines)


def render(context: dict[str, Any]) -> str:
    search = context.get("search") or {}
    if "error" in search:
        return f"5. Context, tool search: FAILED: {search['error']}"
    return search_section(search) if search else ""


def targets(context: dict[str, Any], add: Add) -> None:
    search = context.get("search") or {}
    listing, recall = search.get("list") or {}, search.get("recall") or {}
    if "all_saved" in listing:
        before, after = _n(listing["all_full"]["tokens"]), _n(listing["all_search"]["tokens"])
        add("tools/list tokens saved by search mode (whole catalog)", listing["all_saved"], ">= 85 %",
            listing["all_saved"] >= 0.85, f"{before} -> {after}")
    for name in ("tuned", "held_out"):
        r = recall.get(name)
        if r:
            add(f"tool search recall@5 ({name})", r["recall_at_5"], ">= 0.9", r["recall_at_5"] >= 0.9,
                f"{r['queries']} requests")
            add(f"tool search recall@1 ({name})", r["recall_at_1"], ">= 0.7", r["recall_at_1"] >= 0.7, "")
