"""The aggregated catalog: every backend's tools, namespaced `<server>__<tool>`.

Workers list their backend and store one JSON document per server in Redis;
every web process reads the same documents, so all clients see one catalog.
A web process keeps a parsed copy and re-reads it when the shared version
counter moves (checked at most once a second, so a hot `tools/call` path
costs no extra Redis round trip).

A cold process serves nothing before its first read is complete: callers that
arrive during it wait on the lock for it (a version check marked done before
its read had finished let 37 of 80 concurrent first calls see the empty
catalog and fail with "has not published its tools yet"). A caller that names
a configured server whose catalog is not published yet can wait for it
(`wait_published`) instead of failing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys
from broker.argcheck import ArgumentCheck
from broker.config import BrokerConfig

VERSION_CHECK_INTERVAL_S = 1.0
URI_SEPARATOR = "+"
LIST_ATTRIBUTES = ("tools", "prompts", "resources", "resource_templates")


_STORE_IF_CHANGED = """
local old = redis.call('GET', KEYS[1])
if old then
  local ok, decoded = pcall(cjson.decode, old)
  if ok and decoded['digest'] == ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


def store_server_catalog(r: redis.Redis, server: str, listing: dict[str, Any]) -> bool:
    """Worker-side: publish what a backend offers; only a real change bumps the version and tells
    the web processes (every worker start or backend restart re-lists, mostly to the same result)."""
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    doc = {"server": server, "updatedAt": time.time(), "digest": digest, **listing}
    script = r.register_script(_STORE_IF_CHANGED)
    changed = script(keys=[keys.catalog(server), keys.CATALOG_VERSION, keys.CATALOG_CHANGED],
                     args=[json.dumps(doc, separators=(",", ":")), digest, server])
    return bool(changed)


@dataclass
class ToolEntry:
    """One namespaced tool: where it lives and how to check its arguments."""

    name: str
    server: str
    tool: str
    definition: dict[str, Any]
    _check: ArgumentCheck | None = field(default=None, repr=False)

    def argument_errors(self, arguments: dict[str, Any]) -> str | None:
        """The first way `arguments` break the tool's input schema, or None (`broker.argcheck`)."""
        if self._check is None:
            self._check = ArgumentCheck(self.definition.get("inputSchema") or {"type": "object"})
        return self._check.errors(arguments)


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
        self._published = threading.Condition()  # notified after every load (waiters for a server's catalog)
        self._version: str | None = None
        self._checked_at = 0.0
        self.loaded = False  # the documents in Redis have been read once (readiness waits for it)
        # told which lists (LIST_ATTRIBUTES) a reload changed, outside the lock; never for the first load,
        # which nobody has been shown anything before
        self.on_change: Callable[[set[str]], None] | None = None
        self.tools: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.resource_templates: list[dict[str, Any]] = []
        self._by_name: dict[str, ToolEntry] = {}
        self._prompts: dict[str, tuple[str, str]] = {}
        self.missing: list[str] = list(config.servers)
        self.documents: dict[str, dict[str, Any]] = {}

    @property
    def redis(self) -> redis.Redis:
        return self._r

    def namespaced(self, server: str, name: str) -> str:
        """`<server>__<name>`, or `<alias>__<name>` for a server with an alias (BrokerConfig.prefix)."""
        return f"{self.config.prefix(server)}{self.config.separator}{name}"

    @staticmethod
    def namespaced_uri(server: str, uri: str) -> str:
        """`notes+notes://all`: the server becomes a scheme prefix, so the result is still a URI."""
        return f"{server}{URI_SEPARATOR}{uri}"

    def split_uri(self, uri: str) -> tuple[str, str] | None:
        """(server, backend uri) of a namespaced URI, or None if it names no configured server."""
        server, sep, rest = uri.partition(URI_SEPARATOR)
        if sep and rest and server in self.config.servers:
            return server, rest
        return None

    def split_name(self, name: str) -> tuple[str, str]:
        """(server, the backend's own name) of a namespaced tool or prompt name: from the catalog when it is
        listed, else cut after the configured server it starts with (a server not yet published); ("", name)
        when it names no server. Never by splitting at the first separator: `echo_` + `__` + `x` would read
        as `echo` + `_x`."""
        self.ensure_fresh()
        entry = self._by_name.get(name)
        if entry is not None:
            return entry.server, entry.tool
        prompt = self._prompts.get(name)
        if prompt is not None:
            return prompt
        separator = self.config.separator
        for server in self.config.servers:
            prefix = self.config.prefix(server) + separator
            if name.startswith(prefix):
                return server, name[len(prefix):]
        return "", name

    def server_items(self, attribute: str, server: str) -> list[dict[str, Any]]:
        """One backend's own items, unprefixed (for its per-server endpoint)."""
        self.ensure_fresh()
        key = {"resource_templates": "resourceTemplates"}.get(attribute, attribute)
        return list(self.documents.get(server, {}).get(key, []))

    def lookup_prompt(self, name: str) -> tuple[str, str] | None:
        self.ensure_fresh()
        return self._prompts.get(name)

    def ensure_fresh(self, force: bool = False) -> None:
        """Re-read the documents when the shared version moved (looked at most once a second). Concurrent
        callers wait for a read in progress: the check counts as done only once its read has finished."""
        if not force and time.monotonic() - self._checked_at < VERSION_CHECK_INTERVAL_S:
            return
        changed: set[str] = set()
        with self._lock:
            if not force and time.monotonic() - self._checked_at < VERSION_CHECK_INTERVAL_S:
                return  # another caller read it while this one waited for the lock
            version = self._r.get(keys.CATALOG_VERSION)
            if force or not self.loaded or version != self._version:
                first = not self.loaded
                changed = self._load(version)
                if first:
                    changed = set()
            self._checked_at = time.monotonic()
        if changed and self.on_change is not None:
            self.on_change(changed)

    def wait_published(self, server: str, timeout: float) -> bool:
        """Wait up to `timeout` for a configured server's catalog (a worker still starting its backend);
        woken by each reload (the hub's catalog-changed message), and re-checking Redis every second."""
        deadline = time.monotonic() + timeout
        self.ensure_fresh()
        while server in self.config.servers and server not in self.documents:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._published:
                self._published.wait(min(left, VERSION_CHECK_INTERVAL_S))
            self.ensure_fresh()
        return server in self.documents

    def _load(self, version: str | None) -> set[str]:
        """Read every configured server's document; the list attributes whose items changed."""
        names = list(self.config.servers)
        raw = self._r.mget([keys.catalog(s) for s in names]) if names else []
        documents: dict[str, dict[str, Any]] = {}
        for server, text in zip(names, raw, strict=True):
            if text:
                documents[server] = json.loads(text)
        tools: list[dict[str, Any]] = []
        by_name: dict[str, ToolEntry] = {}
        prompts: list[dict[str, Any]] = []
        prompt_index: dict[str, tuple[str, str]] = {}
        resources: list[dict[str, Any]] = []
        templates: list[dict[str, Any]] = []
        for server in names:
            doc = documents.get(server, {})
            for tool in doc.get("tools", []):
                name = self.namespaced(server, tool["name"])
                tools.append({**tool, "name": name})
                previous = self._by_name.get(name)
                same = previous is not None and previous.definition == tool
                by_name[name] = previous if same else ToolEntry(name, server, tool["name"], tool)  # type: ignore[assignment]
            for prompt in doc.get("prompts", []):
                name = self.namespaced(server, prompt["name"])
                prompts.append({**prompt, "name": name})
                prompt_index[name] = (server, prompt["name"])
            for resource in doc.get("resources", []):
                resources.append({**resource, "uri": self.namespaced_uri(server, resource["uri"]),
                                  "name": self.namespaced(server, resource.get("name", ""))})
            for template in doc.get("resourceTemplates", []):
                templates.append({**template, "uriTemplate": self.namespaced_uri(server, template["uriTemplate"]),
                                  "name": self.namespaced(server, template.get("name", ""))})
        fresh = {"tools": tools, "prompts": prompts, "resources": resources, "resource_templates": templates}
        changed = {name for name in LIST_ATTRIBUTES if getattr(self, name) != fresh[name]}
        self.documents, self.tools, self._by_name = documents, tools, by_name
        self.prompts, self._prompts = prompts, prompt_index
        self.resources, self.resource_templates = resources, templates
        self.missing = [s for s in names if s not in documents]
        self._version = version
        self.loaded = True
        with self._published:
            self._published.notify_all()
        return changed

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
