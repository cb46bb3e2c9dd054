"""`python -m broker call` and `python -m broker batch`, run as a user would, against the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT, Stack


def broker(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args, "--url", stack.http_url()], cwd=ROOT,
                          env=stack.env, capture_output=True, text=True, timeout=timeout)


def test_call_prints_the_result(stack: Stack) -> None:
    done = broker(stack, "call", "echo__echo", '{"text": "héllo"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["structuredContent"]["result"] == "héllo"


def test_call_errors_exit_1(stack: Stack) -> None:
    unknown = broker(stack, "call", "echo__nope")
    assert unknown.returncode == 1 and "unknown_tool" in unknown.stderr and "echo__nope" in unknown.stderr
    failed = broker(stack, "call", "echo__fail")
    assert failed.returncode == 1 and json.loads(failed.stdout)["isError"] is True
    timed_out = broker(stack, "call", "echo__slow", '{"seconds": 3, "steps": 1}', "--timeout", "0.3")
    assert timed_out.returncode == 1 and "504 timeout" in timed_out.stderr
    bad = broker(stack, "call", "echo__echo", "[1]")
    assert bad.returncode == 2 and "JSON object" in bad.stderr


def test_batch_writes_every_result(stack: Stack, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps({"tool": "echo__echo", "arguments": {"text": f"t{i}"}, "id": i}) + "\n"
                             for i in range(200)))
    out = tmp_path / "results.jsonl"
    done = broker(stack, "batch", str(calls), "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 200
    outcomes = [json.loads(line) for line in lines]
    assert sorted(o["id"] for o in outcomes) == list(range(200))
    assert all(o["result"]["structuredContent"]["result"] == f"t{o['id']}" for o in outcomes)
    assert "200/200 results, 200 done, 0 failed" in done.stderr
    assert "[########################] 200/200 100%" in done.stderr  # the last progress line (not a TTY)


def test_batch_with_a_failure_exits_1_and_a_bad_file_names_its_line(stack: Stack, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    calls.write_text(json.dumps({"tool": "echo__echo", "arguments": {"text": "a"}}) + "\n"
                     + json.dumps({"tool": "echo__fail"}) + "\n")
    done = broker(stack, "batch", str(calls), "-o", str(tmp_path / "out.jsonl"), "-q")
    assert done.returncode == 1
    assert "2/2 results, 1 done, 1 failed" in done.stderr and "[#" not in done.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2

    calls.write_text(json.dumps({"tool": "echo__echo", "arguments": {"text": "a"}}) + "\n{oops\n")
    bad = broker(stack, "batch", str(calls))
    assert bad.returncode == 1 and "line 2: not valid JSON" in bad.stderr and bad.stdout == ""
