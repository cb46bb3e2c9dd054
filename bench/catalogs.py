"""The published catalogs of `../shared/catalogs/` (tools/list dumps of 87 servers, 2,379 tools): where they
are and how to read them. Never copied into the repository (their descriptions are their authors' text).

They sit beside the repository's checkout (`<repo>/../shared/catalogs`, as on CI), or one level further up
from a git worktree (as `tests/shared_catalogs.py` finds them).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@cache
def catalogs_dir() -> Path:
    """The nearest ancestor of the repository holding `shared/catalogs` (a worktree sits deeper than a clone)."""
    found = next((p / "shared" / "catalogs" for p in ROOT.parents if (p / "shared" / "catalogs").is_dir()), None)
    if found is None:
        raise FileNotFoundError(f"the shared catalogs are not at {ROOT.parent / 'shared' / 'catalogs'}")
    return found


def catalog_path(name: str) -> Path:
    return catalogs_dir() / f"{name}.json"


def catalog_names() -> list[str]:
    """Every catalog's name (its server), sorted."""
    return sorted(path.stem for path in catalogs_dir().glob("*.json"))


def load_catalog(name: str) -> dict[str, Any]:
    """{"server", "package", "tools": [...]} of one dump."""
    return json.loads(catalog_path(name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
