"""The published MCP catalogs in `../shared/catalogs` (tools/list results of real servers), read at test time.

They are never copied into the repository (their descriptions are their authors' text); CI has them at the same
place relative to the clone. A git worktree under another folder (`/work/wt/<name>`) finds them one level up
again: the nearest ancestor of the repository that holds `shared/catalogs` is used.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = next((p / "shared" / "catalogs" for p in ROOT.parents if (p / "shared" / "catalogs").is_dir()),
                ROOT.parent / "shared" / "catalogs")


@cache
def catalogs() -> dict[str, list[dict[str, Any]]]:
    """server → its tools, for every catalog file (sorted by server)."""
    found = {}
    for path in sorted(CATALOGS.glob("*.json")):
        document = json.loads(path.read_text())
        found[document["server"]] = document["tools"]
    assert found, f"no catalogs in {CATALOGS}"
    return found


def namespaced_tools() -> list[dict[str, Any]]:
    """Every tool of every catalog as the broker lists it: named `<server>__<tool>`."""
    return [{**tool, "name": f"{server}__{tool['name']}"} for server, tools in catalogs().items() for tool in tools]
