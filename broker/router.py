"""Tool name → backend server → Celery queue.

Kept apart from the catalog because routing grows its own policy (replicas,
health, load) while the catalog only knows what exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.catalog import Catalog, ToolEntry
from broker.config import ServerSpec


class UnknownTool(LookupError):
    """No configured backend offers this (namespaced) tool."""


@dataclass(frozen=True)
class Route:
    entry: ToolEntry
    spec: ServerSpec

    @property
    def queue(self) -> str:
        return self.spec.queue


class Router:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def route_tool(self, name: str) -> Route:
        entry = self.catalog.lookup_tool(name)
        if entry is None:
            servers = self.catalog.config.servers
            prefix, sep, _ = name.partition(self.catalog.config.separator)
            if sep and prefix in servers and prefix in self.catalog.missing:
                raise UnknownTool(f"Unknown tool: {name} (server {prefix!r} has not published its tools yet)")
            raise UnknownTool(f"Unknown tool: {name}")
        return Route(entry, self.catalog.config.server(entry.server))
