"""Sentence vectors from `wordllama` 0.4 (a static token-embedding model, 16 MB of weights in its wheel).

Loaded offline, always: the weights are in the wheel's `weights/`; its tokenizer config ships under
`tokenizers/` in the wheel, which wordllama looks up only in its cache folder (`<cache>/tokenizers/`), so
the package's own folder is given as the cache (`cache_dir=<wordllama>/`), with `disable_download=True`:
nothing is ever fetched. Loading took 0.4 s; embedding the 2,379 tools of `../shared/catalogs/` 1.2 s on
this machine's busy cores, so vectors are kept per server digest (`broker.context.keeper`).

Why at all: BM25 matches words; a request worded unlike a tool's description ("how do I drive from Lyon
to Geneva" for `maps_directions`) has none in common. Fused with BM25 (reciprocal rank fusion,
`broker.context.index`), recall@5 rose from 0.83 to 0.89 on `bench/context/queries.json`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

DIM = 256
_MODEL: Any = None
_LOCK = threading.Lock()
_SEPARATORS = re.compile(r"[_\-.]+")
DESCRIPTION_CHARS = 300  # the start of a description says what a tool does; the rest dilutes the average


def model() -> Any:
    """The process's one WordLlama model (loaded on first use)."""
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            import wordllama

            _MODEL = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, dim=DIM,
                                              disable_download=True)
    return _MODEL


def tool_text(server: str, tool: str, definition: dict[str, Any]) -> str:
    """What a tool's vector is made of: its server and name as words, and the start of its description."""
    name = _SEPARATORS.sub(" ", f"{server} {tool}")
    return f"{name}: {str(definition.get('description') or '')[:DESCRIPTION_CHARS]}"


def embed(texts: list[str]) -> np.ndarray:
    """Unit vectors (float32, one row per text)."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.asarray(model().embed(texts, norm=True), dtype=np.float32)
