"""Config reload: validate the file once, then let every process of the broker switch to it.

`SIGHUP` to a worker, or `POST /v1/admin/reload`, reads `mcp_servers.json`
again. A file that does not validate is rejected with the same message
`check-config` prints, and nothing changes: the running config keeps serving.
A valid one is published in Redis (`keys.CONFIG`, the document itself, with a
version) and announced on `keys.CONFIG_CHANGED`; web processes and workers
apply the published document, not their own reading of a file, so they all
switch to the same thing even when their files differ or are mid-edit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys
from broker.config import BrokerConfig, ConfigError, parse_config, read_config_document

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes (server names, sorted)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def diff(old: BrokerConfig, new: BrokerConfig) -> ConfigDiff:
    return ConfigDiff(
        added=sorted(set(new.servers) - set(old.servers)),
        removed=sorted(set(old.servers) - set(new.servers)),
        changed=sorted(n for n in set(old.servers) & set(new.servers) if old.servers[n] != new.servers[n]),
    )


def read_file(path: str | None = None) -> tuple[BrokerConfig, dict[str, Any]]:
    """The file, validated: (config, its JSON document); `ConfigError` says what is wrong and where."""
    source, data = read_config_document(path)
    return parse_config(data, source), data


def publish(r: redis.Redis, current: BrokerConfig, new: BrokerConfig, document: dict[str, Any]) -> dict[str, Any]:
    """Make `new` the config of every process; removed servers' catalogs (their health and tool vectors
    too) go at once (clients are told)."""
    changes = diff(current, new)
    version = int(r.hincrby(keys.CONFIG, "version", 1))
    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.CONFIG, mapping={"source": new.path, "document": json.dumps(document)})
    for server in changes.removed:
        pipe.delete(keys.catalog(server), keys.health(server), keys.tool_vectors(server))
    pipe.publish(keys.CONFIG_CHANGED, str(version))
    if changes.removed:
        pipe.incr(keys.CATALOG_VERSION)
        pipe.publish(keys.CATALOG_CHANGED, ",".join(changes.removed))
    pipe.execute()
    log.warning("config reloaded from %s (version %d): %s", new.path, version, changes.as_dict())
    return {"version": version, **changes.as_dict()}


def reload_from_file(r: redis.Redis, current: BrokerConfig, path: str | None = None) -> dict[str, Any]:
    """Validate the file and publish it; `ConfigError` (nothing published) when it is bad."""
    new, document = read_file(path or current.path or None)
    return publish(r, current, new, document)


def load_running(r: redis.Redis) -> BrokerConfig:
    """The config file; if it is broken now, the last published config (a process that starts, or first
    needs the config, while someone is editing the file must serve what the others serve)."""
    try:
        return read_file()[0]
    except ConfigError as err:
        try:
            found = published(r)
        except redis.RedisError:
            found = None
        if found is None:
            raise
        log.error("%s\nusing the last published config (version %d) instead", err, found[0])
        return found[1]


def published(r: redis.Redis) -> tuple[int, BrokerConfig] | None:
    """The last published config and its version (None if no reload happened yet)."""
    raw = r.hgetall(keys.CONFIG)
    if not raw or "document" not in raw:
        return None
    try:
        return int(raw.get("version", 0)), parse_config(json.loads(raw["document"]), raw.get("source", ""))
    except (ValueError, ConfigError):
        log.exception("the published config cannot be used")
        return None
