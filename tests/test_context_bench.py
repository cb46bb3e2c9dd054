"""The `context_results` bench scenario's acceptance, as a test (issue 16: "measured, not claimed"): token
counts are deterministic (no timing), so the figures the README quotes are checked on every run.

Through a real broker (its own key prefix on the test Redis) serving `examples/servers/workspace.py` and
ten published catalogs (`examples/servers/catalog.py`): every shaped result reads back exactly through
`broker__read_result`, every compacted JSON result decodes to the identical value, and the scripted agent
session (tools/list + 10 calls) spends at least 50 % fewer tokens in search mode with shaped results.
"""

from __future__ import annotations

from bench import context_results


def test_the_scripted_session_spends_half_the_tokens_and_every_result_reads_back(redis_url: str) -> None:
    result = context_results.run(redis_url)
    for row in result["rows"]:
        assert row["pages_exact"], row
        assert row["json_lossless"] in (True, None), row
        assert row["shaped_tokens"] <= 10_000 and row["shaped_toon_tokens"] <= 10_000, row
        assert row["toon_tokens"] <= row["compact_tokens"] <= row["raw_tokens"], row
    cut = [row for row in result["rows"] if row["pages"] > 1]
    assert len(cut) >= 3  # the tree, the log and the page are over the default 10,000 tokens
    session = result["session"]
    assert session["every_result_readable"]
    assert session["saved"] >= 0.5, session
    assert session["list_after"] < 0.05 * session["list_before"]
