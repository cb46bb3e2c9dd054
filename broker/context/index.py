"""The search index over the catalog: BM25 (`bm25s`) on what a model needs to pick a tool.

One document per tool: its name and its server's name and title (split at `_`, `-`, `.` and camelCase,
and counted twice: the words a request shares with a name matter most), its description, and its
parameters' names and descriptions. Words are lower-cased, English stop words dropped and stemmed
(PyStemmer's Snowball), so "listing issues" meets `list_issues`.

An index is a pure function of the catalog it is built from (servers in config order, tools in the order
their server lists them): every web process builds the same one from the same Redis catalog, and ties are
broken by server and tool name, so a query has one answer everywhere. `broker.context.search` keeps one
per web process, rebuilt when the catalog's identity (its servers' document digests) moves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|[0-9]+|[a-z]+")
_STOP = frozenset(STOPWORDS_EN) | frozenset({"you", "your", "can", "use", "using", "used", "will", "want", "need",
                                             "please", "my", "me", "we", "our", "all", "any", "some"})
_STEMMER = Stemmer.Stemmer("english")
_STEMS: dict[str, str] = {}  # word → stem ("" for a stop word): most words recur across tools
NAME_WEIGHT = 2  # name and server words count this many times


def words(text: str) -> list[str]:
    """Lower-cased, stemmed words of `text`, camelCase and snake_case split, stop words dropped."""
    out = []
    for word in _WORD.findall(text):
        lowered = word.lower()
        stem = _STEMS.get(lowered)
        if stem is None:
            stem = "" if lowered in _STOP or len(lowered) < 2 else _STEMMER.stemWord(lowered)
            if len(_STEMS) < 200_000:
                _STEMS[lowered] = stem
        if stem:
            out.append(stem)
    return out


@dataclass(frozen=True)
class Document:
    """One tool of the catalog as the index knows it."""

    server: str
    tool: str  # the backend's own name
    definition: dict[str, Any]  # as the backend lists it (its own name)


def document_words(document: Document, server_title: str = "") -> list[str]:
    """The words a tool is found by: its name's (weighted), then its description's and parameters'."""
    definition = document.definition
    names = f"{document.server} {server_title} {document.tool} {definition.get('title') or ''}"
    parts = [str(definition.get("description") or "")]
    schema = definition.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    for parameter, spec in properties.items() if isinstance(properties, dict) else ():
        parts.append(str(parameter))
        if isinstance(spec, dict):
            parts.append(str(spec.get("description") or ""))
    return words(names) * NAME_WEIGHT + words(" ".join(parts))


class SearchIndex:
    """BM25 over every tool of one catalog (`corpus[i]` is `document_words(documents[i])`)."""

    def __init__(self, identity: Any, documents: list[Document], corpus: list[list[str]]) -> None:
        self.identity = identity
        self.documents = documents
        self._bm25: bm25s.BM25 | None = None
        if documents:
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` (zeros when no word of it is in the catalog)."""
        if self._bm25 is None:
            return np.zeros(len(self.documents), dtype=np.float32)
        vocabulary = self._bm25.vocab_dict
        tokens = [token for token in words(query) if token in vocabulary]
        if not tokens:
            return np.zeros(len(self.documents), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def ranked(self, query: str) -> list[int]:
        """Positions of the documents that match a word of the query, best first (score, then name)."""
        scores = self.scores(query)
        documents = self.documents
        return sorted((int(i) for i in np.flatnonzero(scores > 0)),
                      key=lambda i: (-float(scores[i]), documents[i].server, documents[i].tool))

    def search(self, query: str, limit: int, accept: Callable[[Document], bool]) -> list[Document]:
        """The `limit` best documents `accept` lets through."""
        found: list[Document] = []
        for position in self.ranked(query):
            if accept(self.documents[position]):
                found.append(self.documents[position])
                if len(found) >= limit:
                    break
        return found
