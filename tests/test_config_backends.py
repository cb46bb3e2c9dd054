"""Config of backends (issue 7, issue 4 replicas): new keys, their defaults, `${VAR}` and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import ConfigError, Endpoint, expand, expand_all, parse_config
from broker.router import ReplicaState, choose_replica

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_of_the_backend_keys() -> None:
    settings = parse_config({"mcpServers": {"s": {"command": "x"}}}).server("s").settings
    assert (settings.isolation, settings.eager, settings.idle_s) == ("shared", False, 600.0)
    assert (settings.forward_headers, settings.health_interval_s, settings.max_clients) == ((), 15.0, 100)


def test_replicas_are_endpoints_of_one_server() -> None:
    config = parse_config({"mcpServers": {"search": {
        "replicas": [{"url": "http://a:1/mcp", "headers": {"X-K": "${K}"}}, {"command": "python", "args": ["s.py"]}],
        "broker": {"isolation": "per_client", "forward_headers": ["X-User-Token"]}}}})
    spec = config.server("search")
    assert spec.endpoints == (Endpoint(url="http://a:1/mcp", headers={"X-K": "${K}"}),
                              Endpoint(command="python", args=("s.py",)))
    assert spec.transport == "http" and spec.queue == "mcp.search"
    assert spec.settings.forward_headers == ("X-User-Token",)
    plain = parse_config({"mcpServers": {"t": {"command": "x", "args": ["1"]}}}).server("t")
    assert plain.endpoints == (Endpoint(command="x", args=("1",)),)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"command": "x", "broker": {"isolation": "per_user"}}, "server s: field broker.isolation"),
        ({"command": "x", "broker": {"idle_s": -1}}, "server s: field broker.idle_s"),
        ({"command": "x", "broker": {"eager": "sometimes"}}, "server s: field broker.eager"),
        ({"command": "x", "broker": {"max_clients": 0}}, "server s: field broker.max_clients"),
        ({"command": "x", "broker": {"forward_headers": ["bad header"]}}, "not an HTTP header name"),
        ({"url": "http://h/mcp", "headers": {"bad header": "v"}}, "not an HTTP header name"),
        ({"replicas": []}, "server s: field replicas"),
        ({"replicas": [{"command": "x"}], "command": "y"}, "either 'replicas' or one of 'command'/'url'"),
        ({"replicas": [{"args": ["x"]}]}, "exactly one of 'command'"),
        ({"replicas": [{"url": "not a url"}]}, "Not a valid URL"),
    ],
)
def test_bad_backend_keys_are_refused_with_the_field(entry: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mcpServers": {"s": entry}})
    assert expected in str(caught.value)


def test_variable_expansion() -> None:
    env = {"TOKEN": "t0k", "EMPTY": ""}
    assert expand("Bearer ${TOKEN}", env) == "Bearer t0k"
    assert expand("${MISSING:-fallback}/${EMPTY}", env) == "fallback/"
    assert expand("$${TOKEN} ${TOKEN}", env) == "${TOKEN} t0k"
    assert expand("no variables $HOME", env) == "no variables $HOME"
    with pytest.raises(ConfigError, match=r"server s: header Authorization: \$\{NOPE\} is not set"):
        expand_all({"Authorization": "Bearer ${NOPE}"}, "server s: header", env)


def test_check_config_warns_about_unset_variables(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"remote": {"url": "http://h/mcp",
                                                          "headers": {"X-Key": "${MCPB_SURELY_UNSET_VAR}"}}}}))
    done = subprocess.run([sys.executable, "-m", "broker", "check-config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "warning: server remote: header X-Key: ${MCPB_SURELY_UNSET_VAR} is not set" in done.stderr


def test_replica_choice_prefers_healthy_then_least_loaded() -> None:
    replicas = [ReplicaState(0, True, 5), ReplicaState(1, True, 1), ReplicaState(2, False, 0)]
    assert choose_replica(replicas) == 1
    assert choose_replica(replicas, exclude=frozenset({1})) == 0
    assert {choose_replica([ReplicaState(0, True), ReplicaState(1, True)]) for _ in range(200)} == {0, 1}
    down = [ReplicaState(0, False, 0, backoff_left=30), ReplicaState(1, False, 3, backoff_left=2)]
    assert choose_replica(down) == 1  # none healthy: the one that may be retried first
