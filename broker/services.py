"""The services every conversation of a web process shares (built by `web/services.py`)."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis

from broker import keys
from broker.cache import ResultCache
from broker.catalog import Catalog
from broker.config import BrokerConfig
from broker.context.keeper import IndexKeeper
from broker.leases import LeaseKeeper
from broker.outbox import Outbox
from broker.replies import ReplyHub
from broker.request_state import RequestStateSeal
from broker.router import Router
from broker.security import RateLimiter
from broker.sessions import SessionStore

log = logging.getLogger(__name__)

CATALOG_REQUEST_INTERVAL_S = 10.0


class Listener(Protocol):
    """A client conversation, as the services tell it of changes (`broker.protocol.Conversation`)."""

    def lists_changed(self, attributes: set[str]) -> None: ...
    def resource_updated(self, server: str, uri: str) -> None: ...


@dataclass
class BrokerServices:
    """What every connection of a web process shares."""

    config: BrokerConfig
    redis: redis.Redis
    catalog: Catalog
    router: Router
    hub: ReplyHub
    outbox: Outbox
    request_catalog: Callable[[str, str], None]
    sessions: SessionStore
    cache: ResultCache
    page_size: int = 500
    limiter: RateLimiter | None = None
    leases: LeaseKeeper | None = None  # per-key calls in flight, across web processes (broker.leases)
    max_frame_bytes: int = 4 * 1024 * 1024
    max_argument_bytes: int = 1024 * 1024
    max_batch_messages: int = 500  # MCP_BROKER_MAX_RPC_BATCH: messages in one JSON-RPC batch (array)
    _last_catalog_request: float = 0.0
    _request_state: RequestStateSeal | None = None
    connections: weakref.WeakSet[Listener] = field(default_factory=weakref.WeakSet)
    tool_index: IndexKeeper = field(default_factory=IndexKeeper)  # broker__search_tools (broker.context)

    def __post_init__(self) -> None:
        # A backend's resources/updated reaches every web process; each tells its own subscribed clients.
        self.hub.extra_channels.append(keys.RESOURCE_UPDATED)
        self.hub.listeners.append(self._on_channel_message)
        # whoever's read finds a change (the catalog-changed message, a caller's once-a-second version check,
        # a call waiting for a server's tools) tells the clients: none misses a list_changed to a race
        self.catalog.on_change = self._lists_changed

    def _on_channel_message(self, channel: str, data: str) -> None:
        if channel != keys.RESOURCE_UPDATED:
            return
        try:
            update = json.loads(data)
            server, uri = str(update["server"]), str(update["uri"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed resource update %.200s", data)
            return
        for connection in list(self.connections):
            connection.resource_updated(server, uri)

    def state_key(self) -> bytes:
        """The key that seals `requestState` tokens: `$MCP_BROKER_STATE_KEY`, else one random key kept in Redis
        (set once), so any web process can open a token another one issued."""
        configured = os.environ.get("MCP_BROKER_STATE_KEY")
        if configured:
            return configured.encode()
        key = f"{keys.PREFIX}:state-key"
        self.redis.set(key, base64.b64encode(os.urandom(32)).decode(), nx=True)
        value = self.redis.get(key)
        return value if isinstance(value, bytes) else str(value).encode()

    def request_state(self) -> RequestStateSeal:
        if self._request_state is None:
            self._request_state = RequestStateSeal(self.redis, self.state_key())
        return self._request_state

    def request_missing_catalogs(self) -> None:
        """Ask workers to (re)publish catalogs that are missing, at most every few seconds."""
        now = time.monotonic()
        if not self.catalog.missing or now - self._last_catalog_request < CATALOG_REQUEST_INTERVAL_S:
            return
        self._last_catalog_request = now
        for server in self.catalog.missing:
            if server in self.config.servers:  # not one a config reload just removed
                self.request_catalog(server, self.config.server(server).queue)

    def on_catalog_changed(self) -> None:
        """A backend's offer changed: reload (clients hear of what moved through `_lists_changed`)."""
        self.catalog.ensure_fresh(force=True)
        self.tool_index.refresh(self.catalog)  # searchable at once, not after the next search's rebuild

    def _lists_changed(self, attributes: set[str]) -> None:
        """Tell every connected client which lists moved, off the caller's thread (a request or the hub's
        listener must not wait while thousands of sockets are written to)."""
        changed = set(attributes)

        def tell() -> None:
            for connection in list(self.connections):
                connection.lists_changed(changed)

        threading.Thread(target=tell, name="list-changed", daemon=True).start()
