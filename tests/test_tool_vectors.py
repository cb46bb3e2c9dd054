"""Tool vectors in Redis (`broker.context.vectors`): one worker embeds a digest however many list it, a claim
whose holder died lapses, a stale or old-format entry is never taken for this digest's, and a process that
cannot load the model searches by BM25 alone. Real Redis (the test database), the real model and index."""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.catalog import store_server_catalog
from broker.context import embeddings, vectors
from broker.context.index import Document, SearchIndex, document_words
from tests.shared_catalogs import catalogs
from tests.stack import ROOT, VENV_BIN

SERVER = "server-slack"  # 8 tools


@pytest.fixture
def r(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The test database under a prefix of this test's own (the key names of `broker.keys`)."""
    monkeypatch.setattr(keys, "PREFIX", f"mcptv{uuid.uuid4().hex[:6]}")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store_server_catalog(client, SERVER, {"tools": catalogs()[SERVER]})
    yield client
    for key in client.scan_iter(f"{keys.PREFIX}:*"):
        client.delete(key)


def digest(r: redis.Redis) -> str:
    return str(json.loads(r.get(keys.catalog(SERVER)) or "{}")["digest"])


PUBLISHER = """
import json, sys, time
import redis
from broker import keys
from broker.context import embeddings, vectors
keys.PREFIX = sys.argv[2]
r = redis.Redis.from_url(sys.argv[1], decode_responses=True)
embeddings.embed(["warm"])  # loaded before the start, so the processes race on the claim, not the model
r.incr(keys.PREFIX + ":ready")
while not r.exists(keys.PREFIX + ":go"):
    time.sleep(0.01)
print(json.dumps({"wrote": vectors.publish(r, sys.argv[3])}))
"""


def test_of_several_workers_listing_the_same_digest_one_embeds(r: redis.Redis, redis_url: str) -> None:
    procs = [subprocess.Popen([str(VENV_BIN / "python"), "-c", PUBLISHER, redis_url, keys.PREFIX, SERVER],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        deadline = time.monotonic() + 120
        while int(r.get(f"{keys.PREFIX}:ready") or 0) < len(procs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        r.set(f"{keys.PREFIX}:go", "1")
        outcomes = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1])["wrote"] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(outcomes) == [False, False, True]  # the others waited on the claim and found the vectors
    assert not r.exists(keys.tool_vectors_claim(SERVER, digest(r)))  # released by the one that embedded
    texts = vectors.texts(SERVER, json.loads(r.get(keys.catalog(SERVER)) or "{}"))
    found = vectors.stored(r, [(SERVER, digest(r), len(texts))])[SERVER]
    assert abs(found - embeddings.embed(texts)).max() < 1e-5


def test_a_claim_whose_holder_died_lapses_and_the_next_worker_embeds(r: redis.Redis,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "CLAIM_POLL_S", 0.1)
    claim = keys.tool_vectors_claim(SERVER, digest(r))
    r.set(claim, "a-worker-that-died", ex=2)  # as its SET NX EX left it
    assert vectors.publish(r, SERVER) is True
    assert not r.exists(claim)
    assert vectors.publish(r, SERVER) is False  # nothing moved: the head says so


def test_stale_and_old_format_vectors_are_not_this_digests(r: redis.Redis) -> None:
    texts = vectors.texts(SERVER, json.loads(r.get(keys.catalog(SERVER)) or "{}"))
    wanted = [(SERVER, digest(r), len(texts))]
    r.set(keys.tool_vectors(SERVER), json.dumps({"model": "old", "vectors": ""}))  # the first format: a string
    assert not vectors.arrived(r, wanted) and vectors.fetch(r, wanted) == {}
    r.delete(keys.tool_vectors(SERVER))
    r.hset(keys.tool_vectors(SERVER), mapping={"head": vectors.head("another-digest", len(texts)),
                                               "vectors": vectors.encode(embeddings.embed(texts))})
    assert not vectors.arrived(r, wanted) and vectors.fetch(r, wanted) == {}  # a stale digest's are not read
    r.set(keys.tool_vectors(SERVER), "{}")
    assert vectors.publish(r, SERVER) is True  # and are replaced, whatever their type
    assert vectors.arrived(r, wanted) and set(vectors.stored(r, wanted)) == {SERVER}


def test_the_pipeline_id_moves_with_what_makes_a_tool_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    assert embeddings._pipeline_id() == embeddings.MODEL_ID
    for name, value in (("MAX_TOKENS", 128), ("DESCRIPTION_CHARS", 200), ("TOKENIZER_SHA256", "0" * 64)):
        with monkeypatch.context() as m:
            m.setattr(embeddings, name, value)
            assert embeddings._pipeline_id() != embeddings.MODEL_ID, name


@pytest.fixture
def unloaded() -> Iterator[None]:
    embeddings.release()  # this process may have loaded the model already
    yield
    embeddings.release()


@pytest.mark.parametrize("broken", ["missing", "not-pinned"])
def test_a_process_that_cannot_load_the_model_searches_by_bm25_alone(
        broken: str, unloaded: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    tools = [Document(SERVER, tool["name"], tool) for tool in catalogs()[SERVER]]
    index = SearchIndex("id", tools, [document_words(t) for t in tools],
                        embeddings.embed([embeddings.tool_text(SERVER, t.tool, t.definition) for t in tools]))
    wanted = index.search("post a message to a slack channel", 3, lambda _: True)
    embeddings.release()
    model = tmp_path / "model.onnx"
    if broken == "not-pinned":
        model.write_bytes(b"not the model")
    monkeypatch.setattr(embeddings, "model_path", lambda: model)
    with pytest.raises(embeddings.ModelUnavailable):
        embeddings.embed(["anything"])
    caplog.set_level(logging.ERROR, logger="broker.context.index")
    for _ in range(3):
        found = index.search("post a message to a slack channel", 3, lambda _: True)
        assert [d.tool for d in found][:1] == ["slack_post_message"] and found != []
    assert len([rec for rec in caplog.records if "BM25 alone" in rec.getMessage()]) == 1  # said once
    assert [d.tool for d in wanted][:1] == ["slack_post_message"]
