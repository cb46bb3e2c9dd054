"""Load `mcp_servers.json` (the Claude-Desktop format) into typed server specs.

The file is validated once, at start, by `schemas.ConfigFileSchema`; a bad
file stops the process with a message naming the file, the server and the
field, because a gateway that half-starts hides the mistake from its operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from broker.context.names import RESERVED_SERVER
from broker.schemas import CATALOG_MODES, ConfigFileSchema

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
    isolation: str = "shared"  # or "per_client": a backend session per client session
    eager: bool = False  # start the backend when the worker starts, and keep it (never idle-closed)
    idle_s: float = 600.0  # close a backend session unused this long (0 = never)
    max_clients: int = 100  # per_client: the most client sessions a worker process holds (idle LRU closed)
    forward_headers: tuple[str, ...] = ()  # client request headers passed on to HTTP backends
    health_interval_s: float = 15.0  # MCP ping of every open (and every down) replica; 0 = no pings
    hang_timeouts: int = 1  # silent call timeouts in a row before a session is probed for a hang; 0 = never
    max_result_bytes: int = 8 * 1024 * 1024  # a bigger result (compact JSON) is answered with an error instead
    tasks: dict[str, str] = field(default_factory=dict)  # tool (or "*") → optional|required|forbidden (SEP-2663)
    max_result_tokens: dict[str, int] = field(default_factory=dict)  # tool (or "*") → limit of a shaped result
    result_format: dict[str, str] = field(default_factory=dict)  # tool (or "*") → raw|compact|toon
    defer: bool = False  # kept out of tools/list (found by broker__search_tools): broker.context.modes
    pin: tuple[str, ...] = ()  # globs of tools listed in either catalog mode
    alias: str | None = None  # the prefix of its tool and prompt names instead of the server's name

    def task_mode(self, tool: str) -> str:
        """Whether a call of `tool` may (optional), must (required) or never (forbidden) become a task."""
        return self.tasks.get(tool, self.tasks.get("*", "forbidden"))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVariable(KeyError):
    """A `${VAR}` in env or headers names a variable the broker's environment does not have."""


def expand(value: str, environ: Mapping[str, str] | None = None) -> str:
    """`${VAR}` (or `${VAR:-default}`) from the broker's environment, so secrets stay out of the config
    file; `$${` is a literal `${`. Done where the backend is started, never stored expanded."""
    environ = os.environ if environ is None else environ

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise MissingVariable(name)

    parts = value.split("$${")
    return "${".join(_VAR.sub(one, part) for part in parts)


def expand_all(values: Mapping[str, str], what: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Expand every value; a missing variable raises `ConfigError` naming the key (never the other values)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        try:
            out[key] = expand(value, environ)
        except MissingVariable as err:
            raise ConfigError(f"{what} {key}: ${{{err.args[0]}}} is not set in the broker's environment") from None
    return out


REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4  # shorter expanded values (a port, a flag) are not hidden: they would garble every line


def secret_values(values: Mapping[str, str], environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """What `${VAR}` expansion puts into `values` (each variable's value, and each whole expanded value): a
    backend that prints its environment or its error must not show these to anyone (`redact`). Values
    written literally in the config file are not secrets the broker was trusted with."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for raw in values.values():
        matches = list(_VAR.finditer(raw.replace("$${", "")))
        if not matches:
            continue
        for match in matches:
            found.add(environ.get(match.group(1), match.group(2) or ""))
        with contextlib.suppress(MissingVariable):  # its start fails naming the variable (expand_all)
            found.add(expand(raw, environ))
    return tuple(sorted((v for v in found if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret value replaced (longest first, so a value that contains another goes whole)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class Endpoint:
    """How to reach one backend process: a stdio command or a Streamable HTTP URL (one replica)."""

    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # raw: `${VAR}` expanded at start (`expand_all`)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # raw, like env

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def describe(self) -> str:
        return " ".join([self.command or "", *self.args]) if self.command else str(self.url)


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
    replicas: tuple[Endpoint, ...] = ()  # several interchangeable endpoints (the top-level keys then are unset)

    @property
    def queue(self) -> str:
        """The Celery queue of this server's workers."""
        return f"mcp.{self.name}"

    @property
    def transport(self) -> str:
        return self.endpoints[0].transport

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The replicas, or the one endpoint the top-level keys describe."""
        if self.replicas:
            return self.replicas
        return (Endpoint(self.command, self.args, self.env, self.cwd, self.url, self.headers),)


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the config file says."""

    servers: dict[str, ServerSpec]
    path: str = ""
    separator: str = DEFAULT_SEPARATOR
    catalog_mode: str = "full"  # the top-level `"broker": {"tools": ...}`: full or search (broker.context.modes)

    def server(self, name: str) -> ServerSpec:
        return self.servers[name]

    def prefix(self, server: str) -> str:
        """What a server's tool and prompt names start with (before the separator): its `alias`, else its name.
        Hosts prefix names again (`mcp__broker__` + `filesystem__list_directory_with_sizes` is 50 of the 64
        characters some allow), so an alias (`fs`) keeps them short. Allow-lists, metrics and resource URIs
        still name the server."""
        spec = self.servers.get(server)
        return (spec.settings.alias if spec is not None else None) or server

    def server_of_prefix(self, prefix: str) -> str | None:
        """The configured server whose names start with `prefix` (its alias, or its name when it has none)."""
        return next((name for name in self.servers if self.prefix(name) == prefix), None)


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
    catalog_mode = loaded["broker"].get("tools", "full")
    if catalog_mode not in CATALOG_MODES:
        raise ConfigError(f"{source}: broker.tools: must be one of {', '.join(CATALOG_MODES)}, not {catalog_mode!r}")
    servers: dict[str, ServerSpec] = {}
    prefixes: dict[str, str] = {}  # name prefix → server
    for name, entry in loaded["mcpServers"].items():
        alias = entry["broker"].get("alias")
        for what, word in (("name", name), *((("alias", alias),) if alias else ())):
            if word == RESERVED_SERVER:
                raise ConfigError(f"{source}: server {name}: the {what} {RESERVED_SERVER!r} is reserved for the "
                                  f"broker's own tools ({RESERVED_SERVER}{separator}search_tools)")
            if separator in word:
                raise ConfigError(f"{source}: server {name}: the {what} must not contain the separator {separator!r}")
            if (word + separator).find(separator) != len(word):
                # `echo_` + `__` reads as `echo` + `__` + `_`: `<server>__<tool>` names and allow patterns
                # (broker.security.split_pattern) would not say where the server's name ends
                raise ConfigError(f"{source}: server {name}: the {what} must not end with the start of the separator "
                                  f"{separator!r} (where its {what} ends in '{word}{separator}<tool>' is ambiguous)")
        for word in {name, alias or name}:
            other = prefixes.setdefault(word, name)
            if other != name:
                raise ConfigError(f"{source}: server {name}: {word!r} is already the name or alias of server "
                                  f"{other!r} (two servers' tool names would collide)")
        settings = BrokerSettings(**{**entry["broker"],
                                     "forward_headers": tuple(entry["broker"]["forward_headers"]),
                                     "pin": tuple(entry["broker"]["pin"])})
        replicas = tuple(
            Endpoint(r.get("command"), tuple(r["args"]), dict(r["env"]), r["cwd"], r.get("url"), dict(r["headers"]))
            for r in entry.get("replicas") or ()
        )
        servers[name] = ServerSpec(
            name=name,
            command=entry.get("command"),
            args=tuple(entry["args"]),
            env=dict(entry["env"]),
            cwd=entry["cwd"],
            url=entry.get("url"),
            headers=dict(entry["headers"]),
            settings=settings,
            replicas=replicas,
        )
    return BrokerConfig(servers=servers, path=source, separator=separator, catalog_mode=catalog_mode)


def read_config_document(path: str | os.PathLike[str] | None = None) -> tuple[str, Any]:
    """(where it was read, the decoded JSON) of the config file; `ConfigError` names the file and the problem."""
    source = str(path or config_path())
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror}") from None
    try:
        return source, json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> BrokerConfig:
    """Read and validate the config file (default: `$MCP_BROKER_CONFIG` or `mcp_servers.json`)."""
    source, data = read_config_document(path)
    return parse_config(data, source)
