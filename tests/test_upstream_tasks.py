"""Tasks made by a backend (issue 15, item 3), against a real third-party implementation of the tasks
extension: fastmcp + fastmcp-tasks 4.1.4 (`tests/servers/fastmcp_tasks_server.py`), behind the broker in the
modern era. The worker resolves the backend's own task (`workers/backends/upstream_tasks.py`); the client
only ever sees the broker's call or the broker's task.

fastmcp-tasks excludes the redis the broker pins, so its backend runs from its own venv, `.venv-fastmcp`,
built here from the registry (pinned: `tests/servers/fastmcp-requirements.txt`) when it is missing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.installs import installed
from tests.stack import ROOT, Stack
from tests.test_tasks import WEB_ENV, Web

SERVER = ROOT / "tests" / "servers" / "fastmcp_tasks_server.py"
PATH = "/servers/fm/mcp"


@pytest.fixture(scope="session")
def fastmcp_python() -> Path:
    """The python of the fastmcp venv, built (python -m venv + pip from the registry) when missing."""
    return installed("fastmcp")


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fastmcp-marks")


@pytest.fixture(scope="module")
def fm_stack(redis_url: str, fastmcp_python: Path, marks: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`fm`: the fastmcp backend in the modern era; its tools are tasks for the broker's clients too."""
    config = tmp_path_factory.mktemp("upstream-tasks") / "mcp_servers.json"
    config.write_text(json.dumps({"mcpServers": {"fm": {
        "command": str(fastmcp_python), "args": [str(SERVER)], "env": {"MARKS": str(marks)},
        "broker": {"protocol": "2026-07-28", "timeout_s": 30, "max_timeout_s": 90,
                   "tasks": {"slow_compute": "optional", "confirm_delete": "optional"}}}}}))
    stack = Stack(redis_url, config_path=config)
    try:
        stack.start_worker("fm")
        stack.start_web(env=WEB_ENV)
        stack.wait_for_catalog(["fm"])
        stack.wait_web_ready(stack.web_ports[0])
        yield stack
    finally:
        stack.stop()


def wait_for(path: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)
    return path.read_text()


def test_a_client_task_on_a_backend_task_completes(fm_stack: Stack, marks: Path) -> None:
    with httpx2.Client(timeout=60) as http:
        web = Web(http, fm_stack.web_ports[0], path=PATH)
        created = web.call("slow_compute", {"seconds": 1.5, "label": "done"})["result"]
        assert created["resultType"] == "task" and created["status"] == "working"
        upstream_id = wait_for(marks / "started-done")
        assert upstream_id and created["taskId"] != upstream_id  # the broker's own handle
        done = web.until(created["taskId"], "completed")
        assert done["result"]["content"][0]["text"] == "computed done after 1.5s"
        assert upstream_id not in json.dumps(done)  # the upstream id never reaches the client


def test_a_client_without_the_extension_gets_a_synchronous_result(fm_stack: Stack, marks: Path) -> None:
    with httpx2.Client(timeout=60) as http:
        web = Web(http, fm_stack.web_ports[0], path=PATH)
        answer = web.call("slow_compute", {"seconds": 0.5, "label": "sync"}, tasks=False)["result"]
        assert answer["resultType"] == "complete" and "taskId" not in answer
        assert answer["content"][0]["text"] == "computed sync after 0.5s"
        assert wait_for(marks / "started-sync")  # it did run as the backend's task (the worker polled it)


def test_a_backend_question_is_answered_with_tasks_update(fm_stack: Stack) -> None:
    with httpx2.Client(timeout=60) as http:
        web = Web(http, fm_stack.web_ports[0], path=PATH)
        handle = web.call("confirm_delete", {"filename": "x.txt"})["result"]["taskId"]
        asked = web.until(handle, "input_required", timeout=20)
        (key, question), = asked["inputRequests"].items()
        assert question["method"] == "elicitation/create" and question["params"]["message"] == "Delete x.txt?"
        assert ":" not in key  # the backend's key embeds its task id: the broker lists its own
        web.task("update", handle, inputResponses={key: {"action": "accept", "content": {"confirm": True}}})
        done = web.until(handle, "completed")
        assert done["result"]["content"][0]["text"] == "deleted x.txt: accept, confirm=True"


def test_a_cancelled_task_cancels_the_backend_task(fm_stack: Stack, marks: Path) -> None:
    with httpx2.Client(timeout=60) as http:
        web = Web(http, fm_stack.web_ports[0], path=PATH)
        handle = web.call("slow_compute", {"seconds": 60, "label": "cancel"})["result"]["taskId"]
        upstream_id = wait_for(marks / "started-cancel")
        assert web.task("cancel", handle)["result"]["resultType"] == "complete"
        assert web.until(handle, "cancelled", timeout=5)["status"] == "cancelled"
        assert wait_for(marks / "cancelled-cancel") == upstream_id  # the backend's own task was cancelled


def test_a_client_without_the_extension_answers_a_backend_task_question_in_a_round(fm_stack: Stack) -> None:
    """confirm_delete is a task-only tool of the backend: the worker's task lets a client that declares
    nothing use it, its question coming back as the modern era's `input_required` round."""
    with httpx2.Client(timeout=60) as http:
        web = Web(http, fm_stack.web_ports[0], path=PATH)
        round_one = web.call("confirm_delete", {"filename": "y.txt"}, tasks=False)["result"]
        assert round_one["resultType"] == "input_required" and "taskId" not in round_one
        (key, question), = round_one["inputRequests"].items()
        assert question["method"] == "elicitation/create"
        done = web.call("confirm_delete", {"filename": "y.txt"}, tasks=False, requestState=round_one["requestState"],
                        inputResponses={key: {"action": "accept", "content": {"confirm": False}}})["result"]
        assert done["resultType"] == "complete"
        assert done["content"][0]["text"] == "deleted y.txt: accept, confirm=False"
