"""The Procfile rendering and the `python -m broker` commands that need no Redis."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

from broker.config import ConfigError, load_config, parse_config
from cli.procfile import process_name, render_processes, render_procfile

ROOT = Path(__file__).resolve().parent.parent

CONFIG = {
    "mcpServers": {
        "time": {"command": "python", "args": ["-m", "mcp_server_time"], "broker": {"concurrency": 8}},
        "my-server": {"command": "python", "args": ["srv.py"], "broker": {"concurrency": 3}},
        "remote": {"url": "http://127.0.0.1:9000/mcp"},
    }
}


def option(argv: list[str], flag: str) -> str:
    """The value after `flag` in an argv (exactly once)."""
    assert argv.count(flag) == 1, f"{flag} must appear once in {argv}"
    return argv[argv.index(flag) + 1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MCP_BROKER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def config():
    return parse_config(CONFIG, "test.json")


def test_one_worker_process_per_server(config):
    procfile = parse_procfile(render_procfile(config)).processes  # honcho's own parser
    assert list(procfile) == ["web", "worker_time", "worker_my_server", "worker_remote"]


def test_worker_lines_consume_their_queue_with_their_concurrency(config):
    procfile = parse_procfile(render_procfile(config)).processes
    for name, spec in config.servers.items():
        argv = shlex.split(procfile[process_name(name)])
        assert argv[:4] == ["celery", "-A", "workers.app", "worker"]
        assert option(argv, "-Q") == spec.queue == f"mcp.{name}"
        assert option(argv, "-c") == str(spec.settings.concurrency)
        assert option(argv, "-P") == "threads"
        assert option(argv, "-n") == f"{name}.$PORT@%h"  # unique per copy: honcho gives each its own $PORT
        assert {"--without-gossip", "--without-mingle"} <= set(argv)
    assert option(shlex.split(procfile["worker_my_server"]), "-c") == "3"
    assert option(shlex.split(procfile["worker_remote"]), "-c") == "8"  # the default


def test_web_line_serves_the_app_factory_with_gevent(config):
    argv = shlex.split(parse_procfile(render_procfile(config)).processes["web"])
    assert argv[0] == "gunicorn"
    assert option(argv, "-k") == "gevent"
    assert option(argv, "-w") == "1"
    assert option(argv, "-b") == "0.0.0.0:$PORT"
    assert argv[-1] == "web.app:create_app()"


def test_dash_and_underscore_names_that_collide_are_refused():
    clash = parse_config({"mcpServers": {"a-b": {"command": "x"}, "a_b": {"command": "y"}}}, "clash.json")
    with pytest.raises(ConfigError, match="worker_a_b"):
        render_procfile(clash)


def test_local_processes_bind_loopback_and_use_this_interpreter(config):
    processes = render_processes(config, 8123)
    assert list(processes) == ["web", "worker_time", "worker_my_server", "worker_remote"]
    web = shlex.split(processes["web"])
    assert web[:3] == [sys.executable, "-m", "gunicorn"]
    assert option(web, "-b") == "127.0.0.1:8123"
    nodes = [option(shlex.split(cmd), "-n") for name, cmd in processes.items() if name != "web"]
    assert nodes == ["time.8123@%h", "my-server.8123@%h", "remote.8123@%h"]
    assert all("$" not in cmd for cmd in processes.values())


def test_committed_procfile_matches_the_config():
    expected = render_procfile(load_config(ROOT / "mcp_servers.json"))
    assert (ROOT / "Procfile").read_text() == expected, "Procfile is stale: run `make procfile`"


def test_procfile_command_writes_the_rendering(tmp_path):
    cfg = tmp_path / "servers.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp_path / "Procfile"
    result = run_cli("procfile", "--config", str(cfg), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == render_procfile(parse_config(CONFIG, str(cfg)))


def test_check_config_lists_servers_and_queues():
    result = run_cli("check-config", str(ROOT / "mcp_servers.json"))
    assert result.returncode == 0, result.stderr
    for name in load_config(ROOT / "mcp_servers.json").servers:
        assert f"queue=mcp.{name}" in result.stdout


def test_check_config_on_a_bad_field_exits_1_naming_server_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"mcpServers": {"ok": {"command": "x"}, "broken-one": {"command": "x", "broker": {"concurrency": 0}}}}
        )
    )
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    message = result.stderr
    assert str(bad) in message
    assert "broken-one" in message
    assert "concurrency" in message
    assert "Traceback" not in message


def test_check_config_on_invalid_json_exits_1_with_the_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {\n  "time": {"command": "x",}\n}}')
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert "not valid JSON (line 2" in result.stderr
    assert "Traceback" not in result.stderr
