"""A backend that serves one call at a time, like many real stdio servers: `block` sleeps, nothing else runs.

For the bench's serial-backend rows (issue 19): a call to `block` holds the whole process for `ms`
milliseconds (default 10), so one backend does at most ~1000/ms calls/s however many calls are sent at once,
and only more backends (more broker workers, each with its own) serve more. `whoami` answers this process's
pid (the bench warms every worker's backend with it). Stdlib only, on tiny.py's read-answer loop.
"""

from __future__ import annotations

import os
import time

from tiny import answer, serve

TOOLS = [
    {"name": "block", "description": "Hold this (single-threaded) server for `ms` milliseconds, then answer.",
     "inputSchema": {"type": "object", "properties": {"ms": {"type": "number"}}}},
    {"name": "whoami", "description": "This process's pid.", "inputSchema": {"type": "object", "properties": {}}},
]


def call(name: str, arguments: dict) -> dict:
    if name == "block":
        ms = float(arguments.get("ms", 10))
        time.sleep(max(0.0, ms) / 1000)
        return {"content": [{"type": "text", "text": f"blocked {ms:g} ms"}], "isError": False}
    if name == "whoami":
        return {"content": [{"type": "text", "text": str(os.getpid())}], "structuredContent": {"pid": os.getpid()},
                "isError": False}
    return {"content": [{"type": "text", "text": f"unknown tool {name!r}"}], "isError": True}


if __name__ == "__main__":
    serve(lambda message: answer(message, TOOLS, call))
