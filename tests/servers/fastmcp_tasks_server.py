"""A third-party SEP-2663 backend for tests/test_upstream_tasks.py: fastmcp + fastmcp-tasks (pinned in
fastmcp-requirements.txt), run over stdio with the python of `.venv-fastmcp` (it cannot share the broker's
venv: fastmcp-tasks excludes the redis the broker pins).

`MARKS` (env): a directory where a tool notes what the test cannot see through the broker: the upstream task
id it ran under (`started-<label>`) and that it was cancelled (`cancelled-<label>`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import mcp_types
from fastmcp import Context, FastMCP
from fastmcp.utilities.tasks import TaskConfig
from fastmcp_tasks import TasksExtension

mcp = FastMCP("fastmcp-tasks-backend")
mcp.add_extension(TasksExtension(url="memory://"))  # an in-process Docket: the stdio child is the whole backend


def mark(name: str, text: str = "") -> None:
    marks = os.environ.get("MARKS")
    if marks:
        Path(marks, name).write_text(text)


@mcp.tool(task=True)  # optional: a task whenever the caller declares the extension
async def slow_compute(ctx: Context, seconds: float = 1.0, label: str = "") -> str:
    mark(f"started-{label}", ctx.task_id or "")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        mark(f"cancelled-{label}", ctx.task_id or "")
        raise
    return f"computed {label} after {seconds}s"


@mcp.tool(task=TaskConfig(mode="required"))
async def confirm_delete(filename: str, ctx: Context) -> str | mcp_types.InputRequiredResult:
    """The guard pattern: without an answer the tool asks, and its task parks in `input_required`. It asks after
    0.5 s, once the broker has handed its client the task (a question within the broker's 250 ms hold would be
    a modern `input_required` round instead, as for the conformance fixture of that name)."""
    if not ctx.input_responses:
        await asyncio.sleep(0.5)
        return mcp_types.InputRequiredResult(input_requests={"confirm": mcp_types.ElicitRequest(
            params=mcp_types.ElicitRequestFormParams(
                message=f"Delete {filename}?",
                requested_schema={"type": "object", "properties": {"confirm": {"type": "boolean"}}}))})
    answer = ctx.input_responses["confirm"].model_dump(by_alias=True, exclude_none=True)
    return f"deleted {filename}: {answer.get('action')}, confirm={answer.get('content', {}).get('confirm')}"


if __name__ == "__main__":
    mcp.run(show_banner=False)
