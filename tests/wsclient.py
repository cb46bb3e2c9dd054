"""A raw JSON-RPC-over-WebSocket client for tests that must see exact frames."""

from __future__ import annotations

import itertools
import json
from typing import Any

from websockets.sync.client import ClientConnection, connect


class RawClient:
    def __init__(self, url: str, initialize: bool = True, version: str = "2025-11-25", **kwargs: Any) -> None:
        self._connect = connect(url, subprotocols=["mcp"], open_timeout=10, **kwargs)  # type: ignore[list-item]
        self.ws: ClientConnection = self._connect.__enter__()
        self._ids = itertools.count(1)
        self.init_result: dict[str, Any] | None = None
        self.notifications: list[dict[str, Any]] = []
        if initialize:
            self.init_result = self.request("initialize", {
                "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"},
            })["result"]
            self.notify("notifications/initialized")

    def send(self, message: Any) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = 15) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout))

    def response(self, timeout: float = 15) -> dict[str, Any]:
        """The next response, setting notifications aside (list_changed may arrive at any time)."""
        while True:
            message = self.recv(timeout)
            if "id" in message and "method" not in message:
                return message
            self.notifications.append(message)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15) -> dict[str, Any]:
        request_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})})
        while True:
            message = self.recv(timeout)
            if message.get("id") == request_id and "method" not in message:
                return message
            self.notifications.append(message)

    def call(self, name: str, arguments: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.request("tools/call", {"name": name, "arguments": arguments or {}}, **kwargs)

    def close(self) -> None:
        self._connect.__exit__(None, None, None)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
