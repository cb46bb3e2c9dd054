"""A small MCP server for the demo, the tests and the benchmarks.

Its tools cover what a gateway must carry: a trivial call (echo), typed
arguments (add), a slow call with progress (slow), a tool that always fails
(fail), a counter that tells tests how often the backend really ran (runs,
stamp), a tool that changes the tool list at run time (grow), and tools that
talk back to the client mid-call: log messages (chatty), sampling (ask_model)
and elicitation (ask_user); and a result of any size (blob) for the broker's result limit. `nap` sleeps
without a word (no progress, nothing until its result), and `naps` tells whether a nap was cancelled: the
cancellation tests watch the backend itself see a client's cancel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel

server = MCPServer("echo")
_runs: dict[str, int] = {}


def _count(tool: str) -> None:
    _runs[tool] = _runs.get(tool, 0) + 1


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    _count("echo")
    return text


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    _count("add")
    return a + b


@server.tool()
async def slow(seconds: float = 1.0, steps: int = 4, ctx: Context | None = None) -> str:
    """Sleep for `seconds`, reporting progress `steps` times."""
    _count("slow")
    steps = max(1, steps)
    for step in range(1, steps + 1):
        await anyio.sleep(seconds / steps)
        if ctx is not None:
            await ctx.report_progress(step, steps, f"step {step}/{steps}")
    return f"slept {seconds}s"


@server.tool()
def fail(message: str = "this tool always fails") -> str:
    """Always raise: the client must see isError, never a retry."""
    _count("fail")
    raise RuntimeError(message)


@server.tool()
def runs(tool: str = "") -> dict[str, int]:
    """How many times each tool ran in this process (or one tool's count)."""
    return {tool: _runs.get(tool, 0)} if tool else dict(_runs)


@server.tool()
def stamp(key: str) -> dict[str, int | str]:
    """A result that differs on every real run: shows whether an answer came from a cache."""
    _count("stamp")
    return {"key": key, "run": _runs["stamp"], "pid": os.getpid()}


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool named `name` and tell the client the tool list changed."""

    def grown(text: str = "") -> str:
        return f"{name}: {text}"

    server.add_tool(grown, name=name, description=f"A tool grown at run time: {name}")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
async def chatty(count: int = 3, ctx: Context | None = None) -> str:
    """Send `count` log messages (info, then warning), then answer: logging passthrough."""
    assert ctx is not None
    for i in range(count):
        await ctx.log("warning" if i == count - 1 else "info", f"message {i + 1} of {count}", logger_name="chatty")
    return f"sent {count}"


@server.tool()
async def ask_model(question: str, ctx: Context) -> str:
    """Ask the CLIENT's model (sampling/createMessage) and return its answer."""
    result = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=question))], max_tokens=50
    )
    content = result.content
    return content.text if isinstance(content, TextContent) else str(content)


class Preference(BaseModel):
    colour: str


@server.tool()
async def ask_user(question: str, ctx: Context) -> str:
    """Ask the CLIENT's user (elicitation/create) and return what they chose."""
    answer = await ctx.elicit(question, Preference)
    return f"{answer.action}: {answer.data.colour}" if answer.action == "accept" and answer.data else answer.action


@server.tool()
async def ask_roots(ctx: Context) -> list[str]:
    """Ask the CLIENT for its roots (roots/list) and return their URIs."""
    listed = await ctx.session.list_roots()
    return [str(root.uri) for root in listed.roots]


@server.tool()
def blob(size: int) -> str:
    """A text of `size` bytes: for tests of the broker's result size limit."""
    return "x" * max(0, size)


@server.tool()
def whoami() -> dict[str, int | str]:
    """The backend's pid and an env var, so tests can see which process answered."""
    return {"pid": os.getpid(), "marker": os.environ.get("ECHO_MARKER", "")}


NAPS_DIR = Path(os.environ.get("ECHO_NAPS_DIR") or Path(tempfile.gettempdir()) / "mcp-broker-naps")


def _nap_state(key: str, state: str | None = None) -> str:
    """A nap's state, kept in a file per key so a test can read it without a call (a backend that runs one
    call at a time could not answer `naps` while it naps)."""
    path = NAPS_DIR / "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    if state is not None:
        NAPS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(state)
        return state
    return path.read_text() if path.exists() else "unknown"


@server.tool()
async def nap(key: str, seconds: float = 30.0) -> str:
    """Sleep `seconds` sending nothing (no progress, no log); `naps(key)` says whether it was cancelled."""
    _nap_state(key, "started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _nap_state(key, "cancelled")
        raise
    _nap_state(key, "finished")
    return f"napped {seconds}s"


@server.tool()
def naps(key: str) -> str:
    """What became of the nap `key`: started, cancelled, finished, or unknown."""
    return _nap_state(key)

if __name__ == "__main__":
    server.run("stdio")
