"""The reserved namespace of the broker's own tools.

The broker's tools are named as if the broker were a server called `broker`: `broker__search_tools` (with
the configured separator). The config refuses a server named `broker` (`broker.config.parse_config`), so
no namespaced backend tool can ever carry this prefix: `<server><separator><tool>` starts with a configured
server's name, and server names cannot contain the separator. On a per-server endpoint
(`/servers/<name>/mcp`), where backend tools are unprefixed, a broker tool keeps its prefix (a backend
tool literally named `broker__…` would be shadowed there; none of the 2,379 published tools of
`../shared/catalogs/` is).
"""

from __future__ import annotations

RESERVED_SERVER = "broker"


def broker_tool_name(short: str, separator: str) -> str:
    """The listed name of the broker tool `short` (`search_tools` → `broker__search_tools`)."""
    return f"{RESERVED_SERVER}{separator}{short}"


def short_name(name: str, separator: str) -> str | None:
    """`search_tools` of `broker__search_tools`; None for a name outside the broker's namespace."""
    prefix = RESERVED_SERVER + separator
    return name[len(prefix):] if name.startswith(prefix) else None
