"""Tool search measured on the real stack over the published catalogs of `../shared/catalogs/`.

A broker of its own (its own key prefix, so it shares Redis with the main bench stack without touching
it): one backend per catalog (`examples/servers/catalog.py`, 87 of them, 2,379 tools), one Celery worker
for all their queues, one web process, two keys: `all` (every tool) and `hundred` (allowed only the 15
reference servers `server-*`/`mcp-server-*` but `server-everything`: 101 tools, a typical desktop setup).

Measured, side by side in one run:
- tokens (cl100k, `broker.context.tokens`) of the `tools` a client gets from `tools/list` (every page),
  in full mode and in search mode (`?tools=search`), for each key;
- recall@1 and @5 of `broker__search_tools` (limit 5) over the WebSocket on `queries.json` (the set the
  ranking was tuned on) and `queries_heldout.json` (written after it was frozen); on the tuned set, the
  same measured in-process for each ranking alone (what the fusion buys); the search's latency (the
  first search of a cold web process builds the index);
- the index's build cost in-process (with the vectors the worker published): whole catalog, and after
  one server changed; how long the worker took to embed every tool after the catalogs were out.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.catalogs import catalog_names, catalog_path
from bench.settings import Counts
from broker.context import tokens
from broker.security import hash_key
from tests.stack import ROOT, VENV_BIN, Stack
from tests.wsclient import RawClient

QUERY_SETS = {"tuned": Path(__file__).resolve().parent / "queries.json",  # the ranking was fitted on these
              "held_out": Path(__file__).resolve().parent / "queries_heldout.json"}  # written after: never tuned on
CATALOG_SERVER = ROOT / "examples" / "servers" / "catalog.py"
SEARCH = "broker__search_tools"
KEYS = {"all": f"bench-all-{uuid.uuid4().hex}", "hundred": f"bench-hundred-{uuid.uuid4().hex}"}


def hundred_servers() -> list[str]:
    return [n for n in catalog_names() if n.startswith(("server-", "mcp-server-")) and n != "server-everything"]


def query_sets() -> dict[str, list[dict[str, Any]]]:
    return {name: list(json.loads(path.read_text())["queries"]) for name, path in QUERY_SETS.items()}


class ContextStack:
    """The catalog broker: started in `__enter__`, every catalog published, stopped in `__exit__`."""

    def __init__(self, redis_url: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mcpb-context-"))
        servers = {name: {"command": sys.executable, "args": [str(CATALOG_SERVER), str(catalog_path(name))],
                          "broker": {"timeout_s": 30}} for name in catalog_names()}
        config, keys_file = self.folder / "mcp_servers.json", self.folder / "keys.json"
        config.write_text(json.dumps({"mcpServers": servers}))
        keys_file.write_text(json.dumps({"keys": [
            {"id": "all", "hash": hash_key(KEYS["all"])},
            {"id": "hundred", "hash": hash_key(KEYS["hundred"]), "allow": hundred_servers()}]}))
        self.prefix = f"mcpbctx{uuid.uuid4().hex[:6]}"
        extra = {"MCP_BROKER_PREFIX": self.prefix, "MCP_BROKER_KEYS_FILE": str(keys_file)}
        original = Stack.env

        def env(stack: Stack) -> dict[str, str]:
            return {**original.fget(stack), **extra}  # type: ignore[attr-defined]

        self.stack: Stack = type("ContextStack", (Stack,), {"env": property(env)})(redis_url, config_path=config)
        self.servers = list(servers)

    def __enter__(self) -> ContextStack:
        queues = ",".join(f"mcp.{name}" for name in self.servers)
        argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", queues, "-P", "threads", "-c", "4",
                "-n", f"context.{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
        worker = self.stack._spawn("worker-context", argv)
        port = self.stack.start_web()
        r = self.stack.redis()
        deadline = time.monotonic() + 300
        while not all(r.exists(f"{self.prefix}:catalog:{s}") for s in self.servers):
            if time.monotonic() > deadline or not worker.alive():
                self.stack.stop()
                raise RuntimeError(f"catalogs not published; logs in {self.stack.log_dir}")
            time.sleep(0.5)
        published = time.monotonic()
        deadline = published + 1200  # the worker embeds every tool once (~70 ms each on 2 busy cores)
        while not all(r.exists(f"{self.prefix}:toolvectors:{s}") for s in self.servers):
            if time.monotonic() > deadline or not worker.alive():
                self.stack.stop()
                raise RuntimeError(f"tool vectors not published; logs in {self.stack.log_dir}")
            time.sleep(0.5)
        self.vectors_s = time.monotonic() - published
        del port
        self.stack.wait_web_ready(self.stack.web_ports[0])
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def client(self, key: str, mode: str | None = None) -> RawClient:
        query = f"?tools={mode}" if mode else ""
        return RawClient(f"{self.stack.ws_url()}{query}", additional_headers={"Authorization": f"Bearer {KEYS[key]}"},
                         max_size=64 * 1024 * 1024)


def listed_tools(client: RawClient) -> list[dict[str, Any]]:
    """Every page of tools/list."""
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = client.request("tools/list", {"cursor": cursor} if cursor else None, timeout=60)["result"]
        tools += page["tools"]
        cursor = page.get("nextCursor")
        if not cursor:
            return tools


def list_tokens(ctx: ContextStack, key: str, mode: str | None) -> dict[str, Any]:
    with ctx.client(key, mode) as client:
        tools = listed_tools(client)
    text = json.dumps(tools, separators=(",", ":"), ensure_ascii=False)
    return {"tools": len(tools), "bytes": len(text.encode()), "tokens": tokens.count(text)}


def hits(found: list[str], expect: list[str]) -> tuple[bool, bool]:
    wanted = set(expect)
    return bool(found[:1]) and found[0] in wanted, bool(wanted & set(found[:5]))


class PingWatch:
    """`ping`s on another connection of the same web process while the index is built: whether the event
    loop kept serving (the build runs on a native thread) or stalled every connection."""

    def __init__(self, ctx: ContextStack) -> None:
        self._client = ctx.client("hundred")
        self._stop = threading.Event()
        self.worst_s = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self._client.request("ping", timeout=60)
            self.worst_s = max(self.worst_s, time.perf_counter() - started)
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(70)
        self._client.close()
        return self.worst_s * 1000


def stack_recall(ctx: ContextStack, sets: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """recall@1/@5 of broker__search_tools over the WebSocket per query set, and the search's latency."""
    latencies: list[float] = []
    out: dict[str, Any] = {}
    with ctx.client("all", "search") as client:
        pings = PingWatch(ctx)
        time.sleep(3)  # the same pings with nothing else going on: this machine's own noise
        out["ping_ms_max_idle"] = pings.stop()
        pings = PingWatch(ctx)
        started = time.perf_counter()
        client.call(SEARCH, {"query": "warm up: build the index"}, timeout=120)
        out["first_search_s"] = time.perf_counter() - started
        out["ping_ms_max_during_build"] = pings.stop()
        for name, items in sets.items():
            one = five = 0
            for item in items:
                started = time.perf_counter()
                answer = client.call(SEARCH, {"query": item["query"], "limit": 5}, timeout=60)
                latencies.append(time.perf_counter() - started)
                found = [tool["name"] for tool in answer["result"]["structuredContent"]["tools"]]
                at1, at5 = hits(found, item["expect"])
                one, five = one + at1, five + at5
            out[name] = {"queries": len(items), "recall_at_1": one / len(items), "recall_at_5": five / len(items)}
    out["search_ms_p50"] = statistics.median(latencies) * 1000
    out["search_ms_max"] = max(latencies) * 1000
    return out


def published_vectors(ctx: ContextStack, documents: dict[str, dict[str, Any]]) -> Any:
    """A vector source (`IndexKeeper._build`) reading what the stack's worker published, for the same tools."""
    from broker.context import vectors

    r = ctx.stack.redis()

    def source(wanted: list[tuple[str, str, int]]) -> dict[str, Any]:
        found = {}
        for server, _, count in wanted:
            published = json.loads(r.get(f"{ctx.prefix}:catalog:{server}") or "{}")
            if [t.get("name") for t in published.get("tools", [])] != [t.get("name") for t in
                                                                          documents[server]["tools"]]:
                raise RuntimeError(f"{server}: the served catalog is not the file's")
            raw = r.hmget(f"{ctx.prefix}:toolvectors:{server}", ["head", "vectors"])
            array = vectors.decoded({server: raw}, [(server, published["digest"], count)]).get(server)
            if array is None:
                raise RuntimeError(f"{server}: no tool vectors published")
            found[server] = array
        return found

    return source


def offline_rankings(ctx: ContextStack, items: list[dict[str, Any]]) -> dict[str, Any]:  # the tuned set
    """The index in this process over the same catalogs (the vectors the stack's worker published): build
    cost, and each ranking's recall alone."""
    from broker.context.index import words
    from broker.context.keeper import IndexKeeper
    from broker.context.thesaurus import expand

    documents = {}
    for name in catalog_names():
        documents[name] = {"tools": json.loads(catalog_path(name).read_text())["tools"], "digest": "0"}
    keeper, servers, source = IndexKeeper(), list(documents), published_vectors(ctx, documents)
    started = time.perf_counter()
    index = keeper._build(keeper.identity(servers, documents), documents, source)
    build_s = time.perf_counter() - started
    documents[servers[0]] = {**documents[servers[0]], "digest": "1"}
    started = time.perf_counter()
    keeper._build(keeper.identity(servers, documents), documents, source)
    rebuild_s = time.perf_counter() - started

    def recall(rank: Any) -> dict[str, float]:
        one = five = 0
        for item in items:
            found = [f"{index.documents[i].server}__{index.documents[i].tool}" for i in rank(item["query"])[:5]]
            at1, at5 = hits(found, item["expect"])
            one, five = one + at1, five + at5
        return {"recall_at_1": one / len(items), "recall_at_5": five / len(items)}

    return {"tools": len(index.documents), "build_s": build_s, "rebuild_one_server_s": rebuild_s,
            "bm25_plain": recall(lambda q: index.lexical(words(q))),
            "bm25_thesaurus": recall(lambda q: index.lexical(words(expand(q)))),
            "embeddings": recall(lambda q: index.semantic(expand(q))),
            "fused": recall(index.ranked)}


def run(counts: Counts, redis_url: str) -> dict[str, Any]:
    del counts  # the same work in --quick: the catalog is what it is, and 307 searches take seconds
    sets = query_sets()
    out: dict[str, Any] = {}
    with ContextStack(redis_url) as ctx:
        out["servers"] = len(ctx.servers)
        out["offline"] = {**offline_rankings(ctx, sets["tuned"]), "vectors_s": ctx.vectors_s}
        out["recall"] = stack_recall(ctx, sets)  # first: its first search builds the index (a search-mode
        # tools/list would start the build in the background and blur the ping measurement)
        out["list"] = {f"{key}_{mode or 'full'}": list_tokens(ctx, key, mode)
                       for key in ("all", "hundred") for mode in (None, "search")}
    for key in ("all", "hundred"):
        full, search = out["list"][f"{key}_full"]["tokens"], out["list"][f"{key}_search"]["tokens"]
        out["list"][f"{key}_saved"] = 1 - search / full if full else 0.0
    return out
