"""An MCP server that writes down every run of its tool, for the chaos scenarios (tests/chaos.py).

The echo server counts runs in memory, and a count dies with the process that a fault kills. This
server appends one line per run to the file named by `$CHAOS_LEDGER` (`O_APPEND`, one `write` of a
short line: atomic between the processes of all workers), BEFORE the work, so a run cut short by a
SIGKILL or SIGSTOP is on record too:

    <key> <pid> <parent pid> <unix time>

The parent is the worker process (the launcher execs the server in place), so the ledger also tells
which worker ran a call. A call's key says which call it is; two lines with one key are two runs.
"""

from __future__ import annotations

import os
import time

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("ledger")
_ledger = os.open(os.environ["CHAOS_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@server.tool()
async def work(key: str, seconds: float = 0.0) -> str:
    """Record this run of call `key`, then take `seconds` (a call's stand-in for real work)."""
    os.write(_ledger, f"{key} {os.getpid()} {os.getppid()} {time.time():.6f}\n".encode())
    if seconds > 0:
        await anyio.sleep(seconds)
    return key


if __name__ == "__main__":
    server.run("stdio")
