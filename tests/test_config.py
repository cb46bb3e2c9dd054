"""Config loading: the ecosystem's mcpServers format, validated, with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_repo_config_loads_with_defaults_and_broker_keys() -> None:
    config = load_config(ROOT / "mcp_servers.json")
    assert {"time", "echo", "notes"} <= set(config.servers)
    time_spec = config.server("time")
    assert time_spec.transport == "stdio"
    assert time_spec.queue == "mcp.time"
    assert time_spec.settings.cache == {"convert_time": 300}
    notes = config.server("notes").settings
    assert (notes.timeout_s, notes.retries, notes.cache) == (30.0, 3, {})


def test_http_server_and_unknown_client_keys_are_accepted() -> None:
    config = parse_config({"mcpServers": {"remote": {"url": "http://127.0.0.1:9000/mcp", "type": "http",
                                                     "headers": {"X-Token": "t"}}}})
    remote = config.server("remote")
    assert (remote.transport, remote.url, remote.headers) == ("http", "http://127.0.0.1:9000/mcp", {"X-Token": "t"})


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"mcpServers": {"time": {"command": "x", "broker": {"concurrency": "lots"}}}},
         "server time: field broker.concurrency"),
        ({"mcpServers": {"time": {"command": "x", "broker": {"timeout_s": -1}}}},
         "server time: field broker.timeout_s"),
        ({"mcpServers": {"time": {"command": "x", "broker": {"colour": "red"}}}},
         "server time: field broker.colour: Unknown field"),
        ({"mcpServers": {"time": {}}}, "server time: field command: exactly one of 'command'"),
        ({"mcpServers": {"time": {"command": "x", "url": "http://h/mcp"}}}, "exactly one of 'command'"),
        ({"mcpServers": {"remote": {"url": "not a url"}}}, "server remote: field url: Not a valid URL"),
        ({"mcpServers": {"time": {"command": "x", "args": "--tz UTC"}}}, "server time: field args"),
        ({"mcpServers": {"a__b": {"command": "x"}}}, "must not contain the separator"),
        ({"servers": {}}, "mcpServers: Missing data for required field"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_bad_config_names_file_server_and_field(tmp_path: Path, document: object, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"mcpServers": {"time": {"command": "x",}}}')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON \(line 1, column"):
        load_config(broken)
