"""Metrics, readiness and the structured call log, against the real stack (gunicorn web, Celery workers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import ROOT, VENV_BIN, Stack, free_port
from tests.test_faults import backend_processes
from tests.wsclient import RawClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx2.get(f"{base}/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def wait_until(check: Callable[[], Any], timeout: float = 20, every: float = 0.25) -> Any:
    """Poll until `check()` is truthy (metrics are flushed to Redis once a second); its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def test_metrics_counters_move_after_real_calls(stack: Stack) -> None:
    base = stack.http_url()
    before = scrape(base)
    with RawClient(stack.ws_url()) as client:
        for i in range(5):
            assert client.call("echo__echo", {"text": f"m{i}"})["result"]["isError"] is False
        assert client.call("echo__fail", {"message": "expected"})["result"]["isError"] is True
        key = f"k{time.time_ns()}"
        client.call("echo__stamp", {"key": key})
        client.call("echo__stamp", {"key": key})  # cached (ttl 2 s)
        assert client.call("echo__no_such_tool", {})["error"]["code"] == -32602
        # a backend killed mid-call: restarted, the call retried
        assert client.call("crashy__echo", {"text": "warm"})["result"]["isError"] is False
        [backend] = backend_processes(stack, "crashy")
        client.send({"jsonrpc": "2.0", "id": "victim", "method": "tools/call",
                     "params": {"name": "crashy__slow", "arguments": {"seconds": 1.0, "steps": 1}}})
        time.sleep(0.4)
        backend.kill()
        assert client.response(timeout=20)["id"] == "victim"

        def moved() -> Samples | None:
            now = scrape(base)
            delta = {
                "ok": value(now, "mcp_broker_calls_total", server="echo", tool="echo", outcome="ok")
                - value(before, "mcp_broker_calls_total", server="echo", tool="echo", outcome="ok"),
                "tool_error": value(now, "mcp_broker_calls_total", server="echo", tool="fail", outcome="tool_error")
                - value(before, "mcp_broker_calls_total", server="echo", tool="fail", outcome="tool_error"),
                "cached": value(now, "mcp_broker_calls_total", server="echo", outcome="cached")
                - value(before, "mcp_broker_calls_total", server="echo", outcome="cached"),
                "rejected": value(now, "mcp_broker_calls_total", server="echo", outcome="rejected")
                - value(before, "mcp_broker_calls_total", server="echo", outcome="rejected"),
                "runs": value(now, "mcp_broker_executions_total", server="echo", tool="echo", outcome="ok")
                - value(before, "mcp_broker_executions_total", server="echo", tool="echo", outcome="ok"),
                "wait": value(now, "mcp_broker_queue_wait_seconds_count", server="echo")
                - value(before, "mcp_broker_queue_wait_seconds_count", server="echo"),
                "exec": value(now, "mcp_broker_execution_seconds_count", server="echo", tool="echo")
                - value(before, "mcp_broker_execution_seconds_count", server="echo", tool="echo"),
                "e2e": value(now, "mcp_broker_end_to_end_seconds_count", server="echo")
                - value(before, "mcp_broker_end_to_end_seconds_count", server="echo"),
                "hits": value(now, "mcp_broker_cache_hits_total", server="echo", tool="stamp")
                - value(before, "mcp_broker_cache_hits_total", server="echo", tool="stamp"),
                "retries": value(now, "mcp_broker_retries_total", server="crashy")
                - value(before, "mcp_broker_retries_total", server="crashy"),
                "restarts": value(now, "mcp_broker_backend_restarts_total", server="crashy")
                - value(before, "mcp_broker_backend_restarts_total", server="crashy"),
                "sockets": value(now, "mcp_broker_open_sockets", transport="ws"),
                "sessions": value(now, "mcp_broker_sessions_open"),
            }
            complete = (delta["ok"] >= 5 and delta["tool_error"] >= 1 and delta["cached"] >= 1
                        and delta["rejected"] >= 1 and delta["runs"] >= 5 and delta["wait"] >= 5
                        and delta["exec"] >= 5 and delta["e2e"] >= 6 and delta["hits"] >= 1
                        and delta["retries"] >= 1 and delta["restarts"] >= 1 and delta["sockets"] >= 1
                        and delta["sessions"] >= 1)
            return now if complete else None

        after = wait_until(moved)
        assert after, f"counters did not move: {scrape(base)}"
    # read at scrape time: queue depth and live workers for every configured server
    for server in stack.servers:
        assert ("mcp_broker_queue_depth", (("server", server),)) in after
        assert value(after, "mcp_broker_workers", server=server) >= 1
    # the histogram is well formed: cumulative buckets ending at +Inf == count
    inf = value(after, "mcp_broker_execution_seconds_bucket", server="echo", tool="echo", le="+Inf")
    assert inf == value(after, "mcp_broker_execution_seconds_count", server="echo", tool="echo")
    # a made-up tool name never becomes a label
    assert not any(("tool", "no_such_tool") in labels for _, labels in after)


def test_the_call_log_has_one_json_line_per_side_correlated_by_call_id(stack: Stack) -> None:
    response = httpx2.post(f"{stack.http_url()}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "log"}},
                           timeout=20)
    assert response.status_code == 200, response.text
    call_id = response.json()["call_id"]

    def lines(prefix: str) -> list[dict[str, Any]]:
        found = []
        for proc in stack.procs:
            if proc.name.startswith(prefix):
                for line in proc.log().splitlines():
                    if call_id in line and line.startswith("{"):
                        found.append(json.loads(line))
        return found

    web = wait_until(lambda: lines("web-"), timeout=10)
    worker = wait_until(lambda: lines("worker-echo-"), timeout=10)
    assert len(web) == 1 and len(worker) == 1, (web, worker)
    for line in (web[0], worker[0]):
        assert line["event"] == "call" and line["call_id"] == call_id
        assert (line["server"], line["tool"], line["outcome"]) == ("echo", "echo", "ok")
        assert line["key"] == "anonymous"
    assert web[0]["side"] == "web" and web[0]["total_ms"] >= 0 and web[0]["worker"] == worker[0]["worker"]
    assert worker[0]["side"] == "worker" and worker[0]["exec_ms"] >= 0 and worker[0]["queue_ms"] >= 0


def test_ws_call_log_names_the_session(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        session = client.ws.response.headers["Mcp-Session-Id"]
        client.call("echo__echo", {"text": "session"})

    def found() -> list[dict[str, Any]]:
        out = []
        for proc in stack.procs:
            for line in proc.log().splitlines():
                if session in line and line.startswith("{"):
                    out.append(json.loads(line))
        return out

    lines = wait_until(lambda: len(found()) >= 2 and found(), timeout=10)
    assert {line["side"] for line in lines} == {"web", "worker"}
    assert len({line["call_id"] for line in lines}) == 1


@pytest.fixture
def ghost_config(tmp_path: Path) -> Path:
    """The test servers plus `ghost`, which no worker of the session's stack serves."""
    config = json.loads((ROOT / "tests" / "mcp_servers.test.json").read_text())
    config["mcpServers"] = {"echo": config["mcpServers"]["echo"],
                            "ghost": {"command": "python", "args": [str(ROOT / "examples" / "servers" / "echo.py")]}}
    config["mcpServers"]["echo"]["args"] = [str(ROOT / "examples" / "servers" / "echo.py")]
    path = tmp_path / "ghost.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def ghost_web(stack: Stack, ghost_config: Path) -> Iterator[str]:
    port = free_port()
    proc = stack.start_web(port, env={"MCP_BROKER_CONFIG": str(ghost_config)})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        stack.web_ports.remove(port)


def test_readyz_is_ready_when_every_server_has_a_worker(stack: Stack) -> None:
    response = httpx2.get(f"{stack.http_url()}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["redis"]["ok"] is True
    assert set(body["servers"]) == set(stack.servers)
    assert all(s["ready"] and s["workers"] >= 1 for s in body["servers"].values())


def test_readyz_shows_a_server_without_worker_in_its_body_and_stays_ready(stack: Stack, ghost_web: str,
                                                                          ghost_config: Path) -> None:
    """Readiness is the broker's (Redis, this web process's catalog): one server without a worker is reported
    per server, and does not take the web process out of a load balancer (issue 12, finding 7)."""
    def ghost() -> dict[str, Any]:
        response = httpx2.get(f"{ghost_web}/readyz", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ready"
        return response.json()["servers"]["ghost"]

    body = httpx2.get(f"{ghost_web}/readyz", timeout=10).json()
    assert body["servers"]["echo"]["ready"] is True
    assert ghost()["ready"] is False and ghost()["workers"] == 0 and "mcp.ghost" in ghost()["reason"]
    # a worker for ghost comes up: the server is ready; it stops: not ready again
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", "mcp.ghost", "-P", "threads", "-c", "2",
            "-n", f"ghost.{free_port()}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    worker = stack._spawn("worker-ghost", argv, {**stack.env, "MCP_BROKER_CONFIG": str(ghost_config)})
    try:
        ready = wait_until(lambda: ghost()["ready"], timeout=60)
        assert ready, worker.log()[-3000:]
        assert ghost()["workers"] == 1
    finally:
        worker.stop()
    assert wait_until(lambda: not ghost()["ready"], timeout=30)


def test_status_json_reports_servers_workers_and_totals(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        client.call("echo__echo", {"text": "status"})
        body = wait_until(lambda: (b := httpx2.get(f"{stack.http_url()}/status.json", timeout=10).json())
                          and b["totals"]["open_sockets"] >= 1 and b)
    assert body["ready"] is True
    servers = {s["name"]: s for s in body["servers"]}
    assert set(servers) == set(stack.servers)
    echo = servers["echo"]
    assert echo["workers"] and echo["workers"][0]["node"]
    assert echo["executions_total"] >= 1 and echo["calls_per_s"] > 0
    assert echo["latency_ms"]["execution_mean"] is not None
    assert body["totals"]["open_sessions"] >= 1


def test_ops_pages_need_an_admin_key_when_keys_are_on(stack: Stack) -> None:
    port = free_port()
    proc = stack.start_web(port, env={"MCP_BROKER_API_KEYS": "admin:k-admin-1,reader:k-reader-1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for path in ("/metrics", "/status", "/status.json"):
            assert httpx2.get(base + path, timeout=10).status_code == 401
            refused = httpx2.get(base + path, headers={"Authorization": "Bearer k-reader-1"}, timeout=10)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            ok = httpx2.get(base + path, headers={"Authorization": "Bearer k-admin-1"}, timeout=10)
            assert ok.status_code == 200
        assert httpx2.get(base + "/status", timeout=10).headers["WWW-Authenticate"].startswith("Basic")
        assert httpx2.get(base + "/readyz", timeout=10).status_code == 200  # probes need no key
    finally:
        proc.stop()
        stack.web_ports.remove(port)


def test_metrics_add_up_across_web_processes(stack: Stack) -> None:
    """Two web processes (as two gunicorn workers or two machines would be): either one's /metrics counts
    the calls and open sockets of both."""
    port = free_port()
    proc = stack.start_web(port)
    try:
        first, second = stack.http_url(), f"http://127.0.0.1:{port}"
        before = scrape(second)
        with RawClient(stack.ws_url()) as a, RawClient(f"ws://127.0.0.1:{port}/mcp") as b:
            for i in range(3):
                a.call("echo__add", {"a": i, "b": 1})
                b.call("echo__add", {"a": i, "b": 2})

            def both() -> bool:
                for base in (first, second):
                    now = scrape(base)
                    calls = (value(now, "mcp_broker_calls_total", server="echo", tool="add", outcome="ok")
                             - value(before, "mcp_broker_calls_total", server="echo", tool="add", outcome="ok"))
                    if calls < 6 or value(now, "mcp_broker_open_sockets", transport="ws") < 2:
                        return False
                return True

            assert wait_until(both), scrape(first)
    finally:
        proc.stop()
        stack.web_ports.remove(port)


def test_http_calls_refused_before_the_queue_are_counted_as_rejected(stack: Stack) -> None:
    base = stack.http_url()
    before = scrape(base)
    with httpx2.Client(base_url=base, timeout=30) as http:
        bad_arguments = http.post("/v1/calls", json={"tool": "echo__add", "arguments": {"a": "x", "b": 1}})
        unknown_tool = http.post("/v1/calls", json={"tool": "echo__no_such_tool", "arguments": {}})
        made_up = http.post("/v1/calls", json={"tool": "zz_made_up__x", "arguments": {}})
        answered = http.post("/v1/calls", json={"tool": "echo__add", "arguments": {"a": 1, "b": 2}})
    assert [r.status_code for r in (bad_arguments, unknown_tool, made_up, answered)] == [400, 400, 400, 200]

    def moved() -> tuple[float, float, float] | None:
        now = scrape(base)
        delta = (value(now, "mcp_broker_calls_total", server="echo", tool="add", outcome="rejected")
                 - value(before, "mcp_broker_calls_total", server="echo", tool="add", outcome="rejected"),
                 value(now, "mcp_broker_calls_total", server="echo", tool="", outcome="rejected")
                 - value(before, "mcp_broker_calls_total", server="echo", tool="", outcome="rejected"),
                 value(now, "mcp_broker_calls_total", server="", tool="", outcome="rejected")
                 - value(before, "mcp_broker_calls_total", server="", tool="", outcome="rejected"))
        return delta if delta == (1, 1, 1) else None

    assert wait_until(moved) == (1, 1, 1)
    assert not any(("server", "zz_made_up") in labels for _, labels in scrape(base))  # no label minted


def test_open_sse_streams_are_counted_beside_websockets(stack: Stack) -> None:
    base, url = stack.http_url(), f"{stack.http_url()}/mcp"
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}

    def sse_open() -> float:
        return value(scrape(base), "mcp_broker_open_sockets", transport="sse")

    # Streams of earlier tests whose clients left are noticed on their next keepalive and may close
    # meanwhile, so the count is checked against what it was while ours was open, never for equality.
    with httpx2.Client(timeout=30) as http:
        session = http.post(url, json=init, headers=headers).headers["Mcp-Session-Id"]
        with http.stream("GET", url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": session}) as stream:
            assert stream.status_code == 200
            assert wait_until(lambda: sse_open() >= 1)  # ours, while it is open
            during = sse_open()
        http.delete(url, headers={"Mcp-Session-Id": session})
    # the server learns the client left on its next write (a keepalive, at most 15 s later)
    assert wait_until(lambda: sse_open() <= during - 1, timeout=40)


def test_call_lines_of_a_burst_are_written_together_as_the_same_lines(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply hub's burst logs its answers' call lines in one write (`observe.lines_together`): nothing
    before the burst ends, then one bare JSON line per call, as lines logged one by one."""
    from broker import observe

    target = tmp_path / "calls.log"
    monkeypatch.setenv("MCP_BROKER_CALL_LOG", str(target))
    monkeypatch.setitem(observe._configured, "pid", 0)  # configure anew for this file (once per process)
    observe.configure_call_log("web")
    try:
        with observe.lines_together():
            with observe.lines_together():  # nested: the outer block writes
                observe.call_line("web", {"call_id": "a", "outcome": "ok"})
            observe.call_line("web", {"call_id": "b", "outcome": "error", "code": -32603})
            observe.call_line("web", {"call_id": "c", "outcome": "ok"})
            assert target.read_text() == ""
        observe.call_line("web", {"call_id": "d", "outcome": "ok"})  # outside a burst: at once
        lines = target.read_text().splitlines()
        assert [json.loads(line)["call_id"] for line in lines] == ["a", "b", "c", "d"]
        assert all(json.loads(line)["event"] == "call" and json.loads(line)["side"] == "web" for line in lines)
    finally:
        for handler in list(observe.log.handlers):
            observe.log.removeHandler(handler)
            handler.close()
        monkeypatch.setitem(observe._configured, "pid", 0)


def test_the_metrics_of_a_burst_s_answers_are_recorded_together_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply hub's burst records its answered calls' metrics at its end, under one lock
    (`observe.web_outcomes_together`); outside a burst, each answer's at once (one lock, not two)."""
    import os

    from broker import observe
    from broker.metrics import Recorder

    recorder = Recorder(redis_getter=lambda: None)  # never flushed: its deltas are read here
    monkeypatch.setattr(recorder, "_start", lambda: None)
    monkeypatch.setattr(recorder, "_pid", os.getpid())
    monkeypatch.setattr(observe, "RECORDER", recorder)
    monkeypatch.setitem(observe._configured, "enabled", False)  # no call lines here
    records: list[tuple[int, int]] = []
    record = recorder.record
    monkeypatch.setattr(recorder, "record", lambda c, o: (records.append((len(c), len(o))), record(c, o))[1])
    call = {"call_id": "a", "server": "echo", "tool": "echo", "method": "tools/call"}
    with observe.web_outcomes_together():
        with observe.web_outcomes_together():  # nested: the outer block records
            observe.web_outcome(call, {"result": {}}, 0.01)
        observe.web_outcome(call, {"error": {"code": -32603, "message": "x"}}, 0.02)
        observe.web_outcome(call, {"result": {"isError": True}}, 0.03)
        assert records == [] and recorder._counts == {}
    assert records == [(3, 3)]
    observe.web_outcome(call, {"result": {}}, 0.04)  # outside a burst: at once
    assert records == [(3, 3), (1, 1)]
    assert recorder._counts == {("mcp_broker_calls", ("echo", "echo", "ok")): 2.0,
                                ("mcp_broker_calls", ("echo", "echo", "error")): 1.0,
                                ("mcp_broker_calls", ("echo", "echo", "tool_error")): 1.0}
    assert recorder._hists[("mcp_broker_end_to_end_seconds", ("echo",))][-1] == pytest.approx(0.1)
