"""Plain tools/call over the fast lane (`workers.backends.fastlane`), against the real probe server over both
backend transports: the backend sees the lane's request (not the SDK session's), the answer is the one the
SDK session's path gives, a cancelled call is cancelled in the backend too, and a backend that dies under a
call fails it as unavailable (retried by the worker), never leaves it waiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import parse_config
from cli.devrun import free_port
from workers.backends.errors import BackendUnavailable, CallCancelled
from workers.backends.pool import BackendPool

PROBE = str(Path(__file__).resolve().parent.parent / "examples" / "servers" / "probe.py")
TIMEOUT_S = 30.0


class Kept:
    """A call's way back to its client (`CallChannel`), kept here: progress notes and log lines."""

    def __init__(self) -> None:
        self.notes: list[tuple[float, float | None, str | None]] = []

    def progress(self, value: float, total: float | None, message: str | None) -> None:
        self.notes.append((value, total, message))

    def log(self, params: dict[str, Any]) -> None:
        pass

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"error": {"code": -32601, "message": f"{method}: not in this test"}}


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"the probe server did not listen on {port}"
            time.sleep(0.1)


class Probe:
    """A worker's backend pool with one session to the probe server, over stdio or Streamable HTTP."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.http: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        if kind == "http":
            self.revive()
            server: dict[str, Any] = {"url": f"http://127.0.0.1:{self.port}/mcp"}
        else:
            server = {"command": sys.executable, "args": [PROBE]}
        config = parse_config({"mcpServers": {"probe": {**server, "broker": {"timeout_s": TIMEOUT_S}}}})
        self.pool = BackendPool(config)
        self.session = self.pool.session("probe")

    def revive(self) -> None:
        """(HTTP) the server, started again on its port."""
        self.http = subprocess.Popen([sys.executable, PROBE, "--http", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)

    def kill(self, pid: int) -> None:
        """SIGKILL the backend: the worker's stdio child `pid`, or the HTTP server."""
        if self.http is not None:
            self.http.kill()
            self.http.wait(10)
        else:
            os.kill(pid, signal.SIGKILL)

    def signal(self, pid: int, signum: int) -> None:
        """Send `signum` to the backend: the worker's stdio child `pid`, or the HTTP server."""
        os.kill(self.http.pid if self.http is not None else pid, signum)

    def lane_calls(self) -> int:
        return self.session._lane.calls

    def close(self) -> None:
        self.pool.close()
        if self.http is not None:
            self.http.kill()
            self.http.wait(10)


@pytest.fixture(scope="module", params=["stdio", "http"])
def probe(request: pytest.FixtureRequest) -> Iterator[Probe]:
    found = Probe(request.param)
    try:
        yield found
    finally:
        found.close()


def forward(probe: Probe, tool: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}

    async def call() -> dict[str, Any]:
        return await probe.session.forward("tools/call", params, TIMEOUT_S, **options)

    return probe.pool.run(call)


def structured(result: dict[str, Any]) -> Any:
    return result["structuredContent"]


def test_a_plain_call_takes_the_lane_and_answers_as_the_sdk_session_does(probe: Probe) -> None:
    before = probe.lane_calls()
    plain = forward(probe, "request", {}, meta={"note": "kept", "gone": None})
    assert probe.lane_calls() == before + 1  # written by the lane, not by the SDK session
    seen = structured(plain)
    assert seen["meta"] == {"note": "kept"}, seen  # a null in _meta is dropped, as the SDK session drops it
    # a call that asked for progress goes through the SDK session (its notes are matched to it there)
    kept = Kept()
    through_sdk = forward(probe, "request", {}, call_id="c-progress", channel=kept, progress=True,
                          meta={"note": "kept", "gone": None})
    assert probe.lane_calls() == before + 1, "a progress call took the lane"
    assert structured(through_sdk)["id"] != seen["id"] and structured(through_sdk)["meta"] == seen["meta"]
    # the same tool's answer, both ways, is the same wire dict (every key, the text content too)
    lane = forward(probe, "env", {"name": "PATH"})
    sdk = forward(probe, "env", {"name": "PATH"}, call_id="c-env", channel=kept, progress=True)
    assert lane == sdk and lane["structuredContent"]["value"] == os.environ["PATH"], (lane, sdk)
    failed_lane = forward(probe, "no_such_tool", {})
    failed_sdk = forward(probe, "no_such_tool", {}, call_id="c-none", channel=kept, progress=True)
    assert failed_lane == failed_sdk and failed_lane.get("isError") is True, (failed_lane, failed_sdk)


def test_a_cancelled_lane_call_is_cancelled_in_the_backend(probe: Probe) -> None:
    seconds = 25.0 + time.monotonic() % 1  # this test's own mark among the server's cancelled holds

    async def cancel_soon() -> None:
        await asyncio.sleep(0.5)
        assert probe.session.cancel("c-hold"), "the call was not running"

    async def call_and_cancel() -> None:
        params = {"name": "hold", "arguments": {"seconds": seconds}}
        canceller = asyncio.ensure_future(cancel_soon())
        with pytest.raises(CallCancelled):
            await probe.session.forward("tools/call", params, TIMEOUT_S, call_id="c-hold")
        await canceller

    probe.pool.run(call_and_cancel)
    deadline = time.monotonic() + 10
    while seconds not in structured(forward(probe, "cancelled", {}))["result"]:
        assert time.monotonic() < deadline, "the backend never heard of the cancellation"
        time.sleep(0.1)


def test_a_session_closed_under_a_lane_call_fails_it_at_once(probe: Probe) -> None:
    """A hung backend's session is closed (`restart_hung`, `restart_if`): its waiting plain calls fail as
    unavailable (retried on a fresh session) as the SDK's own do, not when the transport has shut down (a
    stopped stdio server takes its 2 s grace and 2 s more after SIGTERM), which is past this call's deadline.
    The close itself ends too: a stopped HTTP server never answers the session's DELETE, which waited the
    client's 300 s between reads (`workers.backends.keepalive.TERMINATE_TIMEOUT_S`)."""
    pid = structured(forward(probe, "whoami", {}))["pid"]
    probe.signal(pid, signal.SIGSTOP)
    try:
        async def call_while_closed() -> None:
            async def close_soon() -> None:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(probe.session.close)

            closer = asyncio.ensure_future(close_soon())
            with pytest.raises(BackendUnavailable):
                await probe.session.forward("tools/call", {"name": "whoami", "arguments": {}}, 3.0)
            await closer

        probe.pool.run(call_while_closed)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a stdio backend: killed by the close
            probe.signal(pid, signal.SIGCONT)
    assert structured(forward(probe, "whoami", {}))["pid"] != pid or probe.kind == "http"  # a fresh session


def test_a_backend_that_dies_under_a_lane_call_fails_it_as_unavailable(probe: Probe) -> None:
    pid = structured(forward(probe, "whoami", {}))["pid"]

    async def call_while_killed() -> None:
        async def kill_soon() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(probe.kill, pid)

        killer = asyncio.ensure_future(kill_soon())
        with pytest.raises(BackendUnavailable):  # not the call's deadline (BackendTimeout): at once
            await probe.session.forward("tools/call", {"name": "hold", "arguments": {"seconds": 20}}, TIMEOUT_S)
        await killer

    probe.pool.run(call_while_killed)
    if probe.kind == "http":
        probe.revive()
    deadline = time.monotonic() + TIMEOUT_S
    while True:  # a fresh backend answers (the session restarts; an HTTP one may take its time to listen)
        try:
            assert structured(forward(probe, "whoami", {}))["pid"] != pid
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline, "no fresh backend answered"
            time.sleep(0.2)
