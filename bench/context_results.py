"""Scenario `context_results`: tokens of real tool results as a model receives them, through the real broker.

A broker of its own (its own key prefix on the bench's Redis, so nothing mixes with the other scenarios)
serves `examples/servers/workspace.py`, whose tools give the large results agents really get: a directory
tree, an access log, JSON arrays (uniform records; nested tool definitions), a web page as text. Each is
fetched over the MCP WebSocket as:

- raw        `?results=raw` (what programs get, and every endpoint got before issue 16);
- shaped     the model-facing default: cut at 10,000 tokens, page 1 and its note;
- compact    `?result_format=compact&max_result_tokens=0`: minified JSON, whole;
- toon       `?result_format=toon&max_result_tokens=0`: TOON where smaller, else compact, whole;
- shaped+toon `?result_format=toon`: compacted, then cut.

Each shaped result is read back to its end with `broker__read_result` and the pages concatenated must be
exactly the raw text; each compacted one must decode to the identical JSON value. Tokens: cl100k
(broker.context.tokens) of the text parts, the part a client hands its model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.context import compaction, tokens
from tests.stack import ROOT, Stack
from tests.wsclient import RawClient

READ = "broker__read_result"
PREFIX = "mcpb-context-results"
FIXTURES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("directory tree (pip, JSON)", "directory_tree", {"package": "pip"}),
    ("access log (1,000 lines)", "read_log", {"lines": 1000}),
    ("JSON array, uniform (packages)", "list_packages", {}),
    ("JSON array, nested (tool defs)", "list_tools_of", {"catalog": "server-github"}),
    ("web page as text (pydoc)", "fetch_page", {"module": "argparse"}),
)
VARIANTS = {"raw": "?results=raw", "shaped": "", "compact": "?result_format=compact&max_result_tokens=0",
            "toon": "?result_format=toon&max_result_tokens=0", "shaped_toon": "?result_format=toon"}


class _PrefixedStack(Stack):
    """A stack on the bench's Redis under its own key prefix."""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "MCP_BROKER_PREFIX": PREFIX}


@contextmanager
def workspace_stack(redis_url: str, extra_servers: dict[str, Any] | None = None) -> Iterator[Stack]:
    """A web process and a worker per server: `workspace`, plus `extra_servers` (mcpServers entries)."""
    servers = {"workspace": {"command": "python", "args": [str(ROOT / "examples/servers/workspace.py")],
                             "broker": {"timeout_s": 60}}, **(extra_servers or {})}
    path = Path(tempfile.mkdtemp(prefix="mcpb-context-")) / "config.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    stack = _PrefixedStack(redis_url, config_path=path)
    try:
        for server in servers:
            stack.start_worker(server, concurrency=2)
        stack.start_web()
        stack.wait_web_ready(stack.web_ports[0])
        _wait_catalog(stack, list(servers))
        yield stack
    finally:
        stack.stop()


def _wait_catalog(stack: Stack, servers: list[str], timeout_s: float = 120) -> None:
    import time

    r = stack.redis()
    deadline = time.monotonic() + timeout_s
    while not all(r.exists(f"{PREFIX}:catalog:{s}") for s in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"catalogs of {servers} not published; logs in {stack.log_dir}")
        time.sleep(0.3)


def texts(result: dict[str, Any]) -> list[str]:
    return [part["text"] for part in result.get("content", []) if part.get("type") == "text"]


def text_tokens(result: dict[str, Any]) -> int:
    return sum(tokens.count(text) for text in texts(result))


def call(client: RawClient, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    answer = client.call(name, arguments, timeout=120)
    if "result" not in answer:
        raise RuntimeError(f"{name} failed: {answer}")
    return answer["result"]  # type: ignore[no-any-return]


def read_rest(first: dict[str, Any], page: Callable[[str, int], dict[str, Any]]) -> tuple[str, int, int]:
    """(the whole text read back page by page, pages, tokens of reading every page) of a shaped answer."""
    parts = texts(first)
    if len(parts) < 2 or not parts[-1].startswith("[Result cut"):
        return "".join(parts), 1, text_tokens(first)
    note = parts[-1]
    handle = json.loads(note[note.index("{"):note.index("}") + 1])["handle"]
    pages, spent, number = [parts[0]], text_tokens(first), 2
    while True:
        result = page(handle, number)
        page_text, page_note = texts(result)
        pages.append(page_text)
        spent += text_tokens(result)
        if page_note.startswith("[End of result"):
            return "".join(pages), number, spent
        number += 1


def measure(url: str) -> list[dict[str, Any]]:
    rows = []
    clients = {name: RawClient(url + query) for name, query in VARIANTS.items()}
    shaped = clients["shaped"]

    def page(handle: str, number: int) -> dict[str, Any]:
        return call(shaped, READ, {"handle": handle, "page": number})

    try:
        for label, tool, arguments in FIXTURES:
            got = {name: call(client, f"workspace__{tool}", arguments) for name, client in clients.items()}
            raw = "".join(texts(got["raw"]))
            whole, pages, read_all = read_rest(got["shaped"], page)
            value = compaction.parse(raw)
            lossless = all(compaction.identical(compaction.decode("".join(texts(got[v]))), value)
                           for v in ("compact", "toon")) if value is not None else None
            rows.append({
                "result": label, "raw_bytes": len(raw.encode()),
                **{f"{name}_tokens": text_tokens(result) for name, result in got.items()},
                "pages": pages, "read_all_tokens": read_all, "pages_exact": whole == raw, "json_lossless": lossless,
            })
    finally:
        for client in clients.values():
            client.close()
    return rows


def run(redis_url: str) -> dict[str, Any]:
    with workspace_stack(redis_url) as stack:
        rows = measure(stack.ws_url())
    return {"rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = ["context_results: tokens (cl100k) of real results, raw vs as a model gets them",
             f"  {'result':<32} {'raw':>8} {'shaped':>7} {'pages':>5} {'exact':>5} {'compact':>8} {'toon':>7} "
             f"{'shaped+toon':>11} {'lossless':>8}"]
    for row in result["rows"]:
        lossless = "n/a" if row["json_lossless"] is None else ("yes" if row["json_lossless"] else "NO")
        lines.append(f"  {row['result']:<32} {row['raw_tokens']:>8,} {row['shaped_tokens']:>7,} {row['pages']:>5} "
                     f"{'yes' if row['pages_exact'] else 'NO':>5} {row['compact_tokens']:>8,} "
                     f"{row['toon_tokens']:>7,} {row['shaped_toon_tokens']:>11,} {lossless:>8}")
    return "\n".join(lines)
