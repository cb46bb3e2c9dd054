"""The README's code runs, and `make run` behaves for a newcomer (issue 17, "The first five minutes").

Convention for README code blocks (write new ones to fit it):
- Every ```python block is executed, as it stands, against a real broker started here the way `make run`
  starts it (`python -m broker run` with the demo config `mcp_servers.json`, its own embedded Redis), from a
  temp dir outside the repo with `PYTHONPATH` set to the checkout (what the README tells a reader to do).
  The only change made to a block is the port: `127.0.0.1:8000` / `localhost:8000` become the test broker's.
  A block must end by itself (no servers, no input) and exit 0 without printing a traceback.
- A ```python block that cannot run against the demo broker (it needs keys, another config, a service of
  your own) is marked by the HTML comment `<!-- readme: not run (why) -->` on the line just before its
  fence: it is still compiled, so its syntax cannot rot. Prefer making it runnable.
- Pseudo-code, transcripts and shell sessions are fenced ```text / ```sh (not run).
- Every ```json block parses with `json.loads`.

The same broker checks `make run` itself: its "up" banner comes when the tools are callable (checked the
moment it appears) and names the endpoints, the workers are quiet, the port it starts on had a TIME_WAIT
socket (a broker stopped just before), and Ctrl-C stops everything with exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from cli.devrun import EmbeddedRedis, free_port, port_is_free

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*readme:\s*not run\b.*-->\s*$")
BANNER = "==> mcp-broker is up"
START_WAIT_S = 240  # a cold start on 2 loaded cores; bounded, not a timing assertion
SNIPPET_WAIT_S = 120
STOP_WAIT_S = 60


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    run: bool


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of the README, with its language and whether it is marked not to run."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        marked = start > 0 and bool(NOT_RUN.match(lines[start - 1].strip()))
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        blocks.append(Block(lang, start + 1, "\n".join(body) + "\n", not marked))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
JSON = [b for b in BLOCKS if b.lang == "json"]


def make_time_wait(port: int) -> None:
    """Leave a TIME_WAIT socket on 127.0.0.1:`port` (what a just-stopped broker leaves): the listening side
    closes first, so the TIME_WAIT is on the port itself."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        server_side, _ = listener.accept()
        server_side.close()  # FIN from the port's side first
        client.recv(1)  # its FIN arrived
        client.close()


def plain_bind_refused(port: int) -> bool:
    """What the old check did: bind without SO_REUSEADDR."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@dataclass
class DevRun:
    """`python -m broker run` as a newcomer starts it, its output collected as it comes."""

    port: int
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    banner_seen: threading.Event = field(default_factory=threading.Event)
    on_banner: list[str] = field(default_factory=list)  # the tools listed the moment the banner appeared
    returncode: int | None = None

    def pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if line.startswith(BANNER) and not self.banner_seen.is_set():
                self.on_banner.extend(list_tools(self.port))
                self.banner_seen.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) and the exit code."""
        if self.returncode is None:
            if self.popen.poll() is None:
                os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.returncode = self.popen.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.returncode = self.popen.wait(10)
                pytest.fail(f"`broker run` did not stop within {STOP_WAIT_S}s of SIGINT:\n{self.output[-4000:]}")
        return self.returncode


def list_tools(port: int) -> list[str]:
    """tools/list over Streamable HTTP in the modern era (one request, no session)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "readme-test", "version": "1"}}}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/list"}
    response = httpx2.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers, timeout=30)
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip())
    return [t["name"] for t in json.loads(text)["result"]["tools"]]


@pytest.fixture(scope="module")
def devrun() -> Iterator[DevRun]:
    redis = EmbeddedRedis(aof=False)
    url = redis.start()
    port = free_port()
    make_time_wait(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_BROKER_")}
    env.update(REDIS_URL=url, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(
        [sys.executable, "-m", "broker", "run", "--config", str(ROOT / "mcp_servers.json"), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    run = DevRun(port, popen)
    threading.Thread(target=run.pump, daemon=True).start()
    try:
        if not run.banner_seen.wait(START_WAIT_S):
            pytest.fail(f"no banner within {START_WAIT_S}s:\n{run.output[-6000:]}")
        yield run
    finally:
        run.stop()
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
        redis.stop()


def test_the_readme_has_python_and_json_blocks() -> None:
    assert len(PYTHON) >= 2 and JSON


@pytest.mark.parametrize("block", JSON, ids=[f"line{b.line}" for b in JSON])
def test_json_block_parses(block: Block) -> None:
    try:
        json.loads(block.code)
    except ValueError as err:
        pytest.fail(f"README.md line {block.line}: the ```json block does not parse: {err}")


def test_python_blocks_marked_not_run_still_compile() -> None:
    for block in PYTHON:
        compile(block.code, f"README.md:{block.line}", "exec")


@pytest.mark.parametrize("block", [b for b in PYTHON if b.run], ids=lambda b: f"line{b.line}")
def test_python_block_runs_against_the_demo_broker(block: Block, devrun: DevRun) -> None:
    code = re.sub(r"(127\.0\.0\.1|localhost):8000\b", f"127.0.0.1:{devrun.port}", block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_BROKER_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)  # as the README says: the checkout on the path (until installed as a package)
    with tempfile.TemporaryDirectory(prefix="readme-snippet-") as tmp:  # outside the repo: honest imports
        script = Path(tmp) / f"readme_line{block.line}.py"
        script.write_text(code, encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, str(script)], cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=SNIPPET_WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"README.md line {block.line}: the snippet did not end within {SNIPPET_WAIT_S}s")
    assert done.returncode == 0, f"README.md line {block.line} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


def test_the_banner_comes_when_every_tool_is_callable(devrun: DevRun) -> None:
    from broker.config import load_config

    config = load_config(ROOT / "mcp_servers.json")
    servers = {name.split(config.separator, 1)[0] for name in devrun.on_banner} - {"broker"}  # its own tools
    assert servers == set(config.servers), f"at the banner tools/list had {sorted(devrun.on_banner)}"
    banner = devrun.output[devrun.output.index(BANNER):]
    for needed in (f"ws://127.0.0.1:{devrun.port}/mcp", f"http://127.0.0.1:{devrun.port}/mcp",
                   f"http://127.0.0.1:{devrun.port}/status", "-m broker call "):
        assert needed in banner, f"the banner lacks {needed!r}:\n{banner[:1500]}"
    line = next(ln for ln in banner.splitlines() if "-m broker call " in ln)
    command = line.split("try a call", 1)[1].strip()  # pasted into a shell at the repo root, as printed
    done = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the banner's call line {command!r} failed: {done.stderr}"


def test_workers_are_quiet(devrun: DevRun) -> None:
    output = devrun.output
    for noise in ("SecurityWarning", "MCPDeprecationWarning", "DeprecationWarning", "[tasks]", ".> transport:",
                  "Traceback", "Control socket listening"):
        assert noise not in output, f"{noise!r} in the `make run` output:\n{output[-6000:]}"


def test_started_on_a_port_a_stopped_broker_left_in_time_wait(devrun: DevRun) -> None:
    """The fixture left a TIME_WAIT on the port before starting (which a plain bind refuses): it started."""
    assert "is in use" not in devrun.output
    assert devrun.banner_seen.is_set()


def test_port_is_free_ignores_time_wait_but_not_a_listener() -> None:
    port = free_port()
    make_time_wait(port)
    assert plain_bind_refused(port), "no TIME_WAIT was left: the test proves nothing"
    assert port_is_free(port)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        assert not port_is_free(port)
    with socket.socket() as wildcard:
        wildcard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wildcard.bind(("0.0.0.0", port))
        wildcard.listen(1)
        assert not port_is_free(port)


def test_no_shared_gunicorn_control_socket(devrun: DevRun) -> None:
    """gunicorn >= 25 listens on ~/.gunicorn/gunicorn.ctl for every instance of the user: ours opens none."""
    pids = set(subprocess.run(["pgrep", "-f", f"127.0.0.1:{devrun.port}"], capture_output=True,
                              text=True).stdout.split())
    assert pids, "the web process was not found"
    unix = subprocess.run(["ss", "-xlp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in unix.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert not [line for line in ours if "gunicorn.ctl" in line], ours


def test_ctrl_c_stops_everything_and_exits_0(devrun: DevRun) -> None:
    """Last in the file (it ends the module's broker): Ctrl-C, then exit 0, nothing SIGKILLed."""
    code = devrun.stop()
    output = devrun.output
    assert code == 0, output[-4000:]
    assert "SIGKILL" not in output, output[-4000:]
    assert "stopped all processes" in output
    assert "Traceback" not in output, output[-6000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", devrun.port), timeout=2).close()
