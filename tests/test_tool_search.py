"""Tool search as a catalog mode (issue 16, part 1), on the real stack: catalogs of published servers
(`../shared/catalogs/`, served by `examples/servers/catalog.py`), keys with and without search mode, a
deferred server, two web processes."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from broker.security import hash_key
from tests.shared_catalogs import CATALOGS
from tests.stack import ROOT, VENV_BIN, Proc, Stack
from tests.wsclient import RawClient

PREFIX = f"mcpts{uuid.uuid4().hex[:6]}"
CATALOG_SERVER = str(ROOT / "examples" / "servers" / "catalog.py")
ECHO = str(ROOT / "examples" / "servers" / "echo.py")
KEYS = {"admin": "admin-key", "searcher": "searcher-key", "narrow": "narrow-key", "pinner": "pinner-key"}
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "1"}}
SEARCH, CALL = "broker__search_tools", "broker__call_tool"
READ = "broker__read_result"  # listed to every client that gets shaped results (the default)


def served(*catalogs: str, broker: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"command": sys.executable, "args": [CATALOG_SERVER, *(str(CATALOGS / f"{c}.json") for c in catalogs)],
            "broker": {"timeout_s": 20, **(broker or {})}}


def config() -> dict[str, Any]:
    return {"mcpServers": {
        "time": served("mcp-server-time", broker={"pin": ["get_current_time"]}),
        "github": served("server-github"),
        "gitlab": served("gitlab-mcp", broker={"defer": True}),
        "fs": served("server-filesystem"),
        "echo": {"command": sys.executable, "args": [ECHO], "broker": {"timeout_s": 20}},
    }}


def keys_file() -> dict[str, Any]:
    return {"keys": [
        {"id": "admin", "hash": hash_key(KEYS["admin"]), "admin": True},
        {"id": "searcher", "hash": hash_key(KEYS["searcher"]), "tools": "search"},
        {"id": "narrow", "hash": hash_key(KEYS["narrow"]), "tools": "search",
         "allow": ["github__*", "time__get_current_time", "echo__*"]},
        {"id": "pinner", "hash": hash_key(KEYS["pinner"]), "pin": ["fs__read_*"]},
    ]}


@dataclass
class SearchStack:
    stack: Stack
    worker: Proc

    def ws(self, key: str = "admin", query: str = "", index: int = 0, path: str = "/mcp") -> RawClient:
        url = f"ws://127.0.0.1:{self.stack.web_ports[index]}{path}{query}"
        return RawClient(url, additional_headers={"Authorization": f"Bearer {KEYS[key]}"})

    def url(self, index: int = 0) -> str:
        return self.stack.http_url(index)

    def published(self, server: str) -> bool:
        return bool(self.stack.redis().exists(f"{PREFIX}:catalog:{server}"))


@pytest.fixture(scope="module")
def sstack(own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchStack]:
    folder = tmp_path_factory.mktemp("search")
    path, keys_path = folder / "mcp_servers.json", folder / "keys.json"
    path.write_text(json.dumps(config()))
    keys_path.write_text(json.dumps(keys_file()))
    stack = Stack(own_redis_url, config_path=path)
    original_env = type(stack).env

    def env(self: Stack) -> dict[str, str]:
        return {**original_env.fget(self), "MCP_BROKER_PREFIX": PREFIX,  # type: ignore[attr-defined]
                "MCP_BROKER_KEYS_FILE": str(keys_path)}

    stack.__class__ = type("SearchTestStack", (Stack,), {"env": property(env)})
    queues = ",".join(f"mcp.{name}" for name in config()["mcpServers"])
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", queues, "-P", "threads", "-c", "8",
            "-n", f"search.{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    try:
        worker = stack._spawn("worker-search", argv)
        stack.start_web()
        stack.start_web()
        found = SearchStack(stack, worker)
        deadline = time.monotonic() + 90
        while not all(found.published(s) for s in config()["mcpServers"]):
            assert time.monotonic() < deadline, f"catalogs not published; logs in {stack.log_dir}"
            assert worker.alive(), worker.log()[-4000:]
            time.sleep(0.2)
        for port in stack.web_ports:
            stack.wait_web_ready(port)
        yield found
    finally:
        stack.stop()


def names(response: dict[str, Any]) -> list[str]:
    assert "result" in response, response
    return [tool["name"] for tool in response["result"]["tools"]]


def found(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert "result" in response and not response["result"].get("isError"), response
    result = response["result"]
    assert json.loads(result["content"][0]["text"])["tools"] == result["structuredContent"]["tools"]
    return list(result["structuredContent"]["tools"])


def catalog_tools(*catalogs: str) -> dict[str, dict[str, Any]]:
    return {tool["name"]: tool for c in catalogs for tool in json.loads((CATALOGS / f"{c}.json").read_text())["tools"]}


# ---------------------------------------------------------------- modes and listing
def test_full_mode_lists_all_but_the_deferred_server_in_a_stable_order(sstack: SearchStack) -> None:
    with sstack.ws() as client:
        listed = names(client.request("tools/list"))
        again = names(client.request("tools/list"))
    assert listed == again
    assert listed[:3] == [CALL, READ, SEARCH]  # a deferred server: its tools are reachable through these
    assert listed[3:] == sorted(listed[3:])
    assert "github__create_issue" in listed and "time__convert_time" in listed
    assert not [name for name in listed if name.startswith("gitlab__")]
    with sstack.ws(index=1) as other:  # another web process lists the same bytes
        assert names(other.request("tools/list")) == listed


def test_search_mode_lists_pinned_tools_and_the_broker_tools_on_every_transport(sstack: SearchStack) -> None:
    expected = [CALL, READ, SEARCH, "time__get_current_time"]
    with sstack.ws(query="?tools=search") as client:
        response = client.request("tools/list")
        assert names(response) == expected
        search = next(t for t in response["result"]["tools"] if t["name"] == SEARCH)
        assert search["inputSchema"]["required"] == ["query"]
    headers = {"Authorization": f"Bearer {KEYS['admin']}", "Accept": "application/json, text/event-stream"}
    with httpx2.Client(timeout=20) as http:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        opened = http.post(f"{sstack.url()}/mcp?tools=search", json=init, headers={**headers, "Accept":
                                                                                 "application/json"})
        assert opened.status_code == 200, opened.text
        session = {**headers, "Accept": "application/json", "Mcp-Session-Id": opened.headers["Mcp-Session-Id"]}
        listed = http.post(f"{sstack.url()}/mcp?tools=search", headers=session,
                           json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert names(listed.json()) == expected
        modern = http.post(f"{sstack.url(1)}/mcp?tools=search", headers={
            **headers, "Accept": "application/json", "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"},
            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": ENVELOPE}})
        assert modern.status_code == 200, modern.text
        assert names(modern.json()) == expected
        searched = http.post(f"{sstack.url(1)}/mcp?tools=search", headers={
            **headers, "Accept": "application/json", "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call",
            "Mcp-Name": SEARCH}, json={"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
                "name": SEARCH, "arguments": {"query": "list the files in a folder"}, "_meta": ENVELOPE}})
        assert "fs__list_directory" in [t["name"] for t in found(searched.json())]
        bad = http.post(f"{sstack.url()}/mcp?tools=everything", json=init, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == -32600
        assert "tools" in bad.json()["error"]["message"]


def test_a_key_setting_chooses_search_mode_and_the_url_overrides_it(sstack: SearchStack) -> None:
    with sstack.ws("searcher") as client:
        assert names(client.request("tools/list")) == [CALL, READ, SEARCH, "time__get_current_time"]
    with sstack.ws("searcher", query="?tools=full") as client:
        assert "github__create_issue" in names(client.request("tools/list"))
    with sstack.ws("pinner", query="?tools=search") as client:  # the key's pins add to the server's
        listed = names(client.request("tools/list"))
    assert listed[:4] == [CALL, READ, SEARCH, "fs__read_file"] and "time__get_current_time" in listed
    assert all(name.startswith(("broker__", "fs__read_", "time__get_current_time")) for name in listed)


# ---------------------------------------------------------------- search and call
def test_search_finds_tools_with_their_full_schemas_and_both_ways_of_calling_them(sstack: SearchStack) -> None:
    gitlab = catalog_tools("gitlab-mcp")
    with sstack.ws(query="?tools=search") as client:
        results = found(client.call(SEARCH, {"query": "open a merge request", "server": "gitlab", "limit": 3}))
        assert results and len(results) <= 3 and all(r["name"].startswith("gitlab__") for r in results)
        assert "gitlab__create_merge_request" in [r["name"] for r in results]
        hit = next(r for r in results if r["name"] == "gitlab__create_merge_request")
        assert hit["inputSchema"] == gitlab["create_merge_request"]["inputSchema"]
        assert hit["description"] == gitlab["create_merge_request"]["description"]
        everywhere = [r["name"] for r in found(client.call(SEARCH, {"query": "what time is it in Tokyo"}))]
        assert everywhere[0].startswith("time__")
        direct = client.call("gitlab__list_projects", {})  # deferred, not listed: still callable directly
        assert direct["result"]["content"][0]["text"].startswith("list_projects called with")
        via = client.call(CALL, {"name": "github__search_repositories", "arguments": {"query": "mcp"}})
        assert via["result"]["content"][0]["text"] == 'search_repositories called with {"query": "mcp"}'
        refused = client.call(CALL, {"name": "github__search_repositories", "arguments": {}})
        assert refused["result"]["isError"] is True and "query" in refused["result"]["content"][0]["text"]


def test_search_results_and_calls_honour_allow_lists(sstack: SearchStack) -> None:
    with sstack.ws("narrow") as client:
        assert names(client.request("tools/list")) == [CALL, READ, SEARCH, "time__get_current_time"]
        for query in ("create an issue", "merge request", "read a file from disk", "convert time zones"):
            results = [r["name"] for r in found(client.call(SEARCH, {"query": query, "limit": 25}))]
            assert all(n.startswith(("github__", "echo__")) or n == "time__get_current_time" for n in results), results
        unseen = client.call(SEARCH, {"query": "merge request", "server": "gitlab"})["result"]
        assert unseen["isError"] is True and "Unknown server 'gitlab'" in unseen["content"][0]["text"]
        direct = client.call("gitlab__list_projects", {})["error"]
        through = client.call(CALL, {"name": "gitlab__list_projects", "arguments": {}})["error"]
        assert direct == through and direct["code"] == -32003


def test_bad_arguments_to_broker_tools_get_structured_errors(sstack: SearchStack) -> None:
    with sstack.ws(query="?tools=search") as client:
        for name, arguments, words in ((SEARCH, {}, "query"), (SEARCH, {"query": "x", "limit": 0}, "limit"),
                                       (SEARCH, {"query": "x", "colour": 1}, "colour"),
                                       (SEARCH, {"query": "x", "server": "nowhere"}, "nowhere"),
                                       (CALL, {"arguments": {}}, "name"), (CALL, {"name": SEARCH}, SEARCH)):
            answer = client.call(name, arguments)
            text = answer["result"]["content"][0]["text"] if "result" in answer else answer["error"]["message"]
            assert ("result" in answer and answer["result"]["isError"]) or answer["error"]["code"] == -32602, answer
            assert words in text
    # before 2025-11-25, arguments a tool's schema refuses are -32602, for a broker tool as for any
    with RawClient(f"ws://127.0.0.1:{sstack.stack.web_ports[0]}/mcp?tools=search", version="2025-06-18",
                   additional_headers={"Authorization": f"Bearer {KEYS['admin']}"}) as old:
        assert old.call(SEARCH, {"limit": 3})["error"]["code"] == -32602


def test_a_per_server_endpoint_searches_its_own_server_unprefixed(sstack: SearchStack) -> None:
    with sstack.ws(query="?tools=search", path="/servers/github/mcp") as client:
        assert names(client.request("tools/list")) == [CALL, READ, SEARCH]
        results = [r["name"] for r in found(client.call(SEARCH, {"query": "open a pull request"}))]
        assert results and "create_pull_request" in results and not [n for n in results if "__" in n]
        via = client.call(CALL, {"name": "list_commits", "arguments": {"owner": "o", "repo": "r"}})
        assert via["result"]["content"][0]["text"].startswith("list_commits called with")


# ---------------------------------------------------------------- the labeled query set of `make bench`
@pytest.mark.parametrize("name", ["queries.json", "queries_heldout.json"])
def test_the_query_sets_are_everyday_requests_labeled_with_real_tools(name: str) -> None:
    queries = json.loads((ROOT / "bench" / "context" / name).read_text())["queries"]
    known = {f"{server}__{tool['name']}" for path in CATALOGS.glob("*.json")
             for server, tools in [(json.loads(path.read_text())["server"], json.loads(path.read_text())["tools"])]
             for tool in tools}
    assert len(queries) >= (200 if name == "queries.json" else 50)
    assert len({q["query"] for q in queries}) == len(queries)
    assert len({label.split("__")[0] for q in queries for label in q["expect"]}) >= 20
    for entry in queries:
        assert entry["expect"] and set(entry["expect"]) <= known, entry
        for label in entry["expect"]:  # a request names no tool (one-word names like `query` aside)
            tool = label.split("__", 1)[1]
            assert not any(sep in tool for sep in "_-") or tool.lower() not in entry["query"].lower(), entry


# ---------------------------------------------------------------- sentence vectors, published by the worker
def published_vectors(sstack: SearchStack, server: str) -> tuple[list[str], Any]:
    """The texts of the server's published tools and the vectors the worker published for them (None until
    it has, for the catalog's current digest)."""
    from broker.context import vectors

    r = sstack.stack.redis()
    document = json.loads(r.get(f"{PREFIX}:catalog:{server}") or "{}")
    texts = vectors.texts(server, document)
    raw = r.hmget(f"{PREFIX}:toolvectors:{server}", ["head", "vectors"])
    return texts, vectors.decoded({server: raw}, [(server, document.get("digest", ""), len(texts))]).get(server)


def test_the_worker_publishes_tool_vectors_and_search_ranks_by_meaning_on_every_process(sstack: SearchStack) -> None:
    from broker.context.embeddings import embed

    deadline = time.monotonic() + 240  # one worker embeds ~100 tools, one server at a time
    for server in config()["mcpServers"]:
        texts, stored = published_vectors(sstack, server)
        while stored is None:
            assert time.monotonic() < deadline, f"no tool vectors for {server}; logs in {sstack.stack.log_dir}"
            time.sleep(0.2)
            texts, stored = published_vectors(sstack, server)
        assert stored.shape == (len(texts), 384)
        assert abs(stored - embed(texts)).max() < 1e-5  # the model's vectors of exactly these tools
    # no word of this request is in any tool's name, description or parameters (BM25 finds nothing):
    # only the vectors know that "how late is it" asks for the time
    query = {"query": "how late is it in Sydney", "server": "time", "limit": 3}  # BM25 alone: no result at all
    clients = [sstack.ws(query="?tools=search", index=i) for i in range(2)]
    try:
        firsts: list[list[str]] = []
        while not firsts or any(f[:1] != ["time__get_current_time"] for f in firsts):
            assert time.monotonic() < deadline + 30, firsts  # a process that built its index before the
            firsts = [[t["name"] for t in found(c.call(SEARCH, query))] for c in clients]  # vectors looks again
            time.sleep(0.2)
        assert firsts[0] == firsts[1]  # both web processes rank alike
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------- a catalog change, on every web process
def searchable_everywhere(sstack: SearchStack, query: dict[str, Any], wanted: str, timeout: float = 60) -> float:
    """Search on both web processes until `wanted` is a result on each; seconds from the first try."""
    clients = [sstack.ws(query="?tools=search", index=i) for i in range(2)]
    started, pending = time.monotonic(), {0, 1}
    try:
        while pending:
            for index in sorted(pending):
                answer = clients[index].call(SEARCH, query)
                if "result" in answer and not answer["result"].get("isError") and wanted in [
                        t["name"] for t in answer["result"]["structuredContent"]["tools"]]:
                    pending.discard(index)
            assert time.monotonic() - started < timeout, f"{wanted} not found on web process(es) {pending}"
            time.sleep(0.05)
        return time.monotonic() - started
    finally:
        for client in clients:
            client.close()


def test_a_tool_added_by_list_changed_is_searchable_on_every_web_process(sstack: SearchStack) -> None:
    name = f"zebrafinder{uuid.uuid4().hex[:6]}"
    with sstack.ws() as client:
        searchable_everywhere(sstack, {"query": "echo text unchanged", "server": "echo"}, "echo__echo")  # warm
        assert client.call("echo__grow", {"name": name})["result"]["isError"] is False
    seconds = searchable_everywhere(sstack, {"query": name, "server": "echo"}, f"echo__{name}")
    print(f"grown tool searchable on both web processes {seconds:.2f} s after the call returned")


def test_a_server_added_by_reload_is_searchable_on_every_web_process(sstack: SearchStack) -> None:
    path = sstack.stack.config_path
    changed = json.loads(path.read_text())
    changed["mcpServers"]["fetchy"] = served("mcp-server-fetch")
    path.write_text(json.dumps(changed))
    answer = httpx2.post(f"{sstack.url()}/v1/admin/reload", timeout=30,
                         headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert answer.status_code == 200 and answer.json()["added"] == ["fetchy"], answer.text
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", "mcp.fetchy", "-P", "threads", "-c", "2",
            "-n", f"fetchy.{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    sstack.stack._spawn("worker-fetchy", argv)
    deadline = time.monotonic() + 90
    while not sstack.published("fetchy"):
        assert time.monotonic() < deadline, f"fetchy not published; logs in {sstack.stack.log_dir}"
        time.sleep(0.05)
    seconds = searchable_everywhere(sstack, {"query": "fetch a web page from the internet as markdown",
                                             "server": "fetchy"}, "fetchy__fetch")
    print(f"added server searchable on both web processes {seconds:.2f} s after its catalog was published")
    while published_vectors(sstack, "fetchy")[1] is None:
        assert time.monotonic() < deadline + 120, f"no tool vectors for fetchy; logs in {sstack.stack.log_dir}"
        time.sleep(0.2)
    del changed["mcpServers"]["fetchy"]  # and a reload that removes it takes all it left in Redis
    path.write_text(json.dumps(changed))
    answer = httpx2.post(f"{sstack.url()}/v1/admin/reload", timeout=30,
                         headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert answer.status_code == 200 and answer.json()["removed"] == ["fetchy"], answer.text
    r = sstack.stack.redis()
    assert not r.exists(f"{PREFIX}:catalog:fetchy", f"{PREFIX}:health:fetchy", f"{PREFIX}:toolvectors:fetchy")
