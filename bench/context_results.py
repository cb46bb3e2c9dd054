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
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.context import compaction, tokens
from tests.stack import ROOT, VENV_BIN, Stack
from tests.wsclient import RawClient

READ = "broker__read_result"
PREFIX = "mcpb-context-results"
FIXTURES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("directory tree (pip, JSON)", "directory_tree", {"package": "pip"}),
    ("access log (1,000 lines)", "read_log", {"lines": 1000}),
    ("JSON array, uniform (packages)", "list_packages", {}),
    ("JSON array, nested (tool defs)", "list_tools_of", {"catalog": "server-github"}),
    ("web page as text (pydoc socket)", "fetch_page", {"module": "socket"}),
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
    queues = ",".join(f"mcp.{name}" for name in servers)
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", queues, "-P", "threads", "-c", "8",
            "-n", f"context.{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    try:
        stack._spawn("worker-context", argv)  # one worker process for every server (each its own backend)
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


# ---------------------------------------------------------------- a scripted agent session
SESSION_CATALOGS = {"github": "server-github", "gitlab": "gitlab-mcp", "fs": "server-filesystem",
                    "slack": "server-slack", "notion": "notion-mcp-server", "jira": "jira-mcp", "sentry": "sentry-mcp",
                    "postgres": "server-postgres", "playwright": "playwright-mcp", "grafana": "mcp-grafana"}
# (what the user asks, which the agent searches for in search mode; the tool it then calls; its arguments)
SESSION: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("show the directory tree of the pip package", "workspace__directory_tree", {"package": "pip"}),
    ("read the web server access log", "workspace__read_log", {"lines": 1000}),
    ("list the installed python packages", "workspace__list_packages", {}),
    ("fetch the socket module documentation web page", "workspace__fetch_page", {"module": "socket"}),
    ("show the tool definitions of a published MCP server", "workspace__list_tools_of", {"catalog": "server-github"}),
    ("create an issue in a github repository", "github__create_issue",
     {"owner": "acme", "repo": "web", "title": "5xx on /api/v1/cart", "body": "Seen in the access log."}),
    ("open a merge request in gitlab", "gitlab__create_merge_request",
     {"project_id": "acme/web", "title": "Fix cart 5xx", "source_branch": "fix-cart", "target_branch": "main"}),
    ("post a message to a slack channel", "slack__slack_post_message",
     {"channel_id": "C0123", "text": "Cart errors fixed in acme/web!42"}),
    ("search sentry issues of an organization", "sentry__search_issues",
     {"organizationSlug": "acme", "query": "is:unresolved cart"}),
    ("search grafana dashboards", "grafana__search_dashboards", {"query": "cart latency"}),
)
SEARCH = "broker__search_tools"
SEARCH_LIMIT = 5


def _catalog_server(catalog: str) -> dict[str, Any]:
    from bench.catalogs import catalog_path

    return {"command": sys.executable, "args": [str(ROOT / "examples/servers/catalog.py"), str(catalog_path(catalog))],
            "broker": {"timeout_s": 60}}


def list_tokens(client: RawClient) -> tuple[int, int]:
    """(tools listed, tokens of their definitions as a client hands them to its model: compact JSON)."""
    answer = client.request("tools/list", timeout=120)
    tools = answer["result"]["tools"]
    return len(tools), tokens.count(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))


def session(url: str) -> dict[str, Any]:
    """The scripted session before (full list, raw results) and after (search mode, shaped results); every
    shaped result is then read to its end through the page tool and checked against the raw one."""
    with RawClient(url + "?tools=full&results=raw") as before, RawClient(url + "?tools=search") as after:
        listed_before, list_before = list_tokens(before)
        listed_after, list_after = list_tokens(after)
        rows, exact = [], True
        for ask, tool, arguments in SESSION:
            raw = call(before, tool, arguments)
            hits = call(after, SEARCH, {"query": ask, "limit": SEARCH_LIMIT})
            names = [hit["name"] for hit in (hits.get("structuredContent") or {}).get("tools", [])]
            shaped = call(after, tool, arguments)
            whole, pages, read_all = read_rest(shaped, lambda h, n: call(after, READ, {"handle": h, "page": n}))
            exact = exact and whole == "".join(texts(raw))
            rank = names.index(tool) + 1 if tool in names else None
            rows.append({"tool": tool, "raw": text_tokens(raw), "search": text_tokens(hits),
                         "shaped": text_tokens(shaped), "pages": pages, "read_all": read_all, "found_rank": rank})
    before_total = list_before + sum(r["raw"] for r in rows)
    after_total = list_after + sum(r["search"] + r["shaped"] for r in rows)
    return {"tools_before": listed_before, "tools_after": listed_after, "list_before": list_before,
            "list_after": list_after, "calls": rows, "before": before_total, "after": after_total,
            "saved": 1 - after_total / before_total, "every_result_readable": exact,
            "after_reading_every_page": list_after + sum(r["search"] + r["read_all"] for r in rows)}


def run(redis_url: str) -> dict[str, Any]:
    extra = {name: _catalog_server(catalog) for name, catalog in SESSION_CATALOGS.items()}
    with workspace_stack(redis_url, extra) as stack:
        rows = measure(stack.ws_url())
        agent = session(stack.ws_url())
    return {"rows": rows, "session": agent}


def render(result: dict[str, Any]) -> str:
    lines = ["context_results: tokens (cl100k) of real results, raw vs as a model gets them",
             f"  {'result':<32} {'raw':>8} {'shaped':>7} {'pages':>5} {'exact':>5} {'compact':>8} {'toon':>7} "
             f"{'shaped+toon':>11} {'lossless':>8}"]
    for row in result["rows"]:
        lossless = "n/a" if row["json_lossless"] is None else ("yes" if row["json_lossless"] else "NO")
        lines.append(f"  {row['result']:<32} {row['raw_tokens']:>8,} {row['shaped_tokens']:>7,} {row['pages']:>5} "
                     f"{'yes' if row['pages_exact'] else 'NO':>5} {row['compact_tokens']:>8,} "
                     f"{row['toon_tokens']:>7,} {row['shaped_toon_tokens']:>11,} {lossless:>8}")
    agent = result.get("session")
    if agent:
        lines += ["", f"  scripted agent session over {len(SESSION_CATALOGS) + 1} servers (tools/list + "
                      f"{len(agent['calls'])} calls), tokens:",
                  f"    before (full list of {agent['tools_before']} tools, raw results): {agent['before']:>9,} "
                  f"(list {agent['list_before']:,})",
                  f"    after (search mode: {agent['tools_after']} listed, a search before each call, shaped "
                  f"results): {agent['after']:>9,} (list {agent['list_after']:,})",
                  f"    saved: {agent['saved']:.0%}; every result readable through paging: "
                  f"{'yes' if agent['every_result_readable'] else 'NO'}; reading every page too: "
                  f"{agent['after_reading_every_page']:,}"]
        for row in agent["calls"]:
            rank = row["found_rank"] or "-"
            lines.append(f"    {row['tool']:<32} raw {row['raw']:>7,}  search {row['search']:>5,} (rank {rank})  "
                         f"shaped {row['shaped']:>6,}  pages {row['pages']}")
    return "\n".join(lines)
