"""Load `mcp_servers.json` (the Claude-Desktop format) into typed server specs.

The file is validated once, at start, by `schemas.ConfigFileSchema`; a bad
file stops the process with a message naming the file, the server and the
field, because a gateway that half-starts hides the mistake from its operator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from broker.schemas import ConfigFileSchema

DEFAULT_CONFIG = "mcp_servers.json"
DEFAULT_SEPARATOR = "__"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class BrokerSettings:
    """Per-server broker keys (the `"broker"` block)."""

    concurrency: int = 8
    timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    retries: int = 3
    cache: dict[str, float] = field(default_factory=dict)
    protocol: str = "legacy"


@dataclass(frozen=True)
class ServerSpec:
    """One backend MCP server: how to reach it and how the broker treats it."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    settings: BrokerSettings = field(default_factory=BrokerSettings)

    @property
    def queue(self) -> str:
        """The Celery queue of this server's workers."""
        return f"mcp.{self.name}"

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the config file says."""

    servers: dict[str, ServerSpec]
    path: str = ""
    separator: str = DEFAULT_SEPARATOR

    def server(self, name: str) -> ServerSpec:
        return self.servers[name]


def config_path() -> str:
    return os.environ.get("MCP_BROKER_CONFIG", DEFAULT_CONFIG)


def _describe(errors: Any, path: list[str]) -> list[str]:
    if isinstance(errors, dict):
        lines: list[str] = []
        for key, value in errors.items():
            lines += _describe(value, path if key == "_schema" else [*path, str(key)])
        return lines
    if isinstance(errors, list) and errors and not isinstance(errors[0], (dict, list)):
        return [f"{'.'.join(path) or '(top level)'}: {'; '.join(map(str, errors))}"]
    if isinstance(errors, list):
        return [line for item in errors for line in _describe(item, path)]
    return [f"{'.'.join(path)}: {errors}"]


def parse_config(data: Any, source: str = "<config>") -> BrokerConfig:
    """Validate a decoded config document; raise `ConfigError` naming server and field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object with 'mcpServers'")
    try:
        loaded = ConfigFileSchema().load(data)
    except ValidationError as err:
        details = _describe(err.messages, [])
        pretty = [d.replace("mcpServers.", "server ", 1).replace(".value.", ": field ", 1) for d in details]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(pretty)) from None
    separator = str(loaded["broker"].get("separator", DEFAULT_SEPARATOR))
    servers: dict[str, ServerSpec] = {}
    for name, entry in loaded["mcpServers"].items():
        if separator in name:
            raise ConfigError(f"{source}: server {name}: the name must not contain the separator {separator!r}")
        settings = BrokerSettings(**entry["broker"])
        servers[name] = ServerSpec(
            name=name,
            command=entry.get("command"),
            args=tuple(entry["args"]),
            env=dict(entry["env"]),
            cwd=entry["cwd"],
            url=entry.get("url"),
            headers=dict(entry["headers"]),
            settings=settings,
        )
    return BrokerConfig(servers=servers, path=source, separator=separator)


def load_config(path: str | os.PathLike[str] | None = None) -> BrokerConfig:
    """Read and validate the config file (default: `$MCP_BROKER_CONFIG` or `mcp_servers.json`)."""
    source = str(path or config_path())
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    return parse_config(data, source)
