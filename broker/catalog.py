"""The aggregated catalog: every backend's tools, namespaced `<server>__<tool>`.

Workers list their backend and store one JSON document per server in Redis;
every web process reads the same documents, so all clients see one catalog.
A web process keeps a parsed copy and re-reads it when the shared version
counter moves (checked at most once a second, so a hot `tools/call` path
costs no extra Redis round trip).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import redis

from broker import keys
from broker.config import BrokerConfig

VERSION_CHECK_INTERVAL_S = 1.0


def store_server_catalog(r: redis.Redis, server: str, listing: dict[str, Any]) -> None:
    """Worker-side: publish what a backend offers (replaces the previous document)."""
    doc = {"server": server, "updatedAt": time.time(), **listing}
    pipe = r.pipeline()
    pipe.set(keys.catalog(server), json.dumps(doc, separators=(",", ":")))
    pipe.incr(keys.CATALOG_VERSION)
    pipe.publish(keys.CATALOG_CHANGED, server)
    pipe.execute()


@dataclass
class ToolEntry:
    """One namespaced tool: where it lives and how to check its arguments."""

    name: str
    server: str
    tool: str
    definition: dict[str, Any]
    _validator: Any = field(default=None, repr=False)

    def argument_errors(self, arguments: dict[str, Any]) -> str | None:
        """The first way `arguments` break the tool's input schema, or None."""
        if self._validator is None:
            schema = self.definition.get("inputSchema") or {"type": "object"}
            try:
                cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                cls.check_schema(schema)
                self._validator = cls(schema)
            except jsonschema.SchemaError:
                self._validator = False  # the backend's schema is broken; let the backend judge
        if not self._validator:
            return None
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message


class CursorError(ValueError):
    """A pagination cursor the broker did not issue."""


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        offset = int(text[2:])
    except (ValueError, UnicodeError):
        raise CursorError(f"invalid cursor {cursor!r}") from None
    if offset < 0:
        raise CursorError(f"invalid cursor {cursor!r}")
    return offset


class Catalog:
    """Web-side view of all backends' offerings, refreshed from Redis on change."""

    def __init__(self, r: redis.Redis, config: BrokerConfig) -> None:
        self._r = r
        self.config = config
        self._lock = threading.Lock()
        self._version: str | None = None
        self._checked_at = 0.0
        self.tools: list[dict[str, Any]] = []
        self._by_name: dict[str, ToolEntry] = {}
        self.missing: list[str] = list(config.servers)
        self.documents: dict[str, dict[str, Any]] = {}

    def namespaced(self, server: str, name: str) -> str:
        return f"{server}{self.config.separator}{name}"

    def ensure_fresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < VERSION_CHECK_INTERVAL_S:
            return
        with self._lock:
            self._checked_at = now
            version = self._r.get(keys.CATALOG_VERSION)
            if version == self._version and not force:
                return
            self._load(version)

    def _load(self, version: str | None) -> None:
        names = list(self.config.servers)
        raw = self._r.mget([keys.catalog(s) for s in names]) if names else []
        documents: dict[str, dict[str, Any]] = {}
        for server, text in zip(names, raw, strict=True):
            if text:
                documents[server] = json.loads(text)
        tools: list[dict[str, Any]] = []
        by_name: dict[str, ToolEntry] = {}
        for server in names:
            for tool in documents.get(server, {}).get("tools", []):
                name = self.namespaced(server, tool["name"])
                exposed = {**tool, "name": name}
                tools.append(exposed)
                previous = self._by_name.get(name)
                same = previous is not None and previous.definition == tool
                by_name[name] = previous if same else ToolEntry(name, server, tool["name"], tool)  # type: ignore[assignment]
        self.documents, self.tools, self._by_name = documents, tools, by_name
        self.missing = [s for s in names if s not in documents]
        self._version = version

    def lookup_tool(self, name: str) -> ToolEntry | None:
        self.ensure_fresh()
        return self._by_name.get(name)

    def page(self, items: list[dict[str, Any]], cursor: str | None, size: int) -> dict[str, Any]:
        start = decode_cursor(cursor)
        if start > len(items):
            raise CursorError(f"invalid cursor {cursor!r}")
        chunk = items[start : start + size]
        out: dict[str, Any] = {"items": chunk}
        if start + size < len(items):
            out["nextCursor"] = encode_cursor(start + size)
        return out
