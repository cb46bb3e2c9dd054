"""The search index over the catalog: BM25 (`bm25s`) fused with sentence embeddings (all-MiniLM-L6-v2,
`broker.context.embeddings`), on what a model needs to pick a tool.

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

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from broker.context.embeddings import ModelUnavailable, embed
from broker.context.thesaurus import expand

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|[0-9]+|[a-z]+")
_STOP = frozenset(STOPWORDS_EN) | frozenset({"you", "your", "can", "use", "using", "used", "will", "want", "need",
                                             "please", "my", "me", "we", "our", "all", "any", "some"})
_STEMMER = Stemmer.Stemmer("english")
_STEMS: dict[str, str] = {}  # word → stem ("" for a stop word): most words recur across tools
NAME_WEIGHT = 2  # name and server words count this many times
CANDIDATES = 200  # from each ranking, before fusion
RRF_K = 10  # reciprocal rank fusion's constant (10, 30, 60 measured: 10 best on the query set)
NAME_BOOST = 1.0  # x the share of a tool name's words the request uses
SERVER_BOOST = 0.5  # when the request names the tool's server
log = logging.getLogger(__name__)
_SAID: set[str] = set()  # why the model is unavailable, said once a process


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
    """Every tool of one catalog, ranked for a request by BM25 and embeddings fused.

    `corpus[i]` is `document_words(documents[i])`; `vectors[i]` its unit vector (`embeddings.tool_text`)
    where `present[i]` (its server's vectors are published: `broker.context.vectors`).
    A request is expanded with the tools' words (`thesaurus.expand`); the BM25 ranking and the embedding
    ranking (their best `CANDIDATES` each) are fused by reciprocal rank (k = `RRF_K`), then a tool whose
    name's words the request uses (`NAME_BOOST` x the share of them) or whose server it names
    (`SERVER_BOOST`) moves up: most misses of the fused ranking were the right server's sibling tool
    (`update_merge_request` for "open a merge request"). Ties: server, then tool name.
    """

    def __init__(self, identity: Any, documents: list[Document], corpus: list[list[str]],
                 vectors: np.ndarray, present: np.ndarray | None = None) -> None:
        self.identity = identity
        self.documents = documents
        self._vectors = vectors
        self._present = np.ones(len(documents), dtype=bool) if present is None else present
        self._names = [frozenset(words(document.tool)) for document in documents]
        self._servers = [frozenset(words(document.server)) for document in documents]
        self._bm25: bm25s.BM25 | None = None
        if documents:
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)

    def lexical(self, query_words: list[str]) -> list[int]:
        """Positions of the documents BM25 scores above zero, best first."""
        if self._bm25 is None:
            return []
        vocabulary = self._bm25.vocab_dict
        tokens = [token for token in query_words if token in vocabulary]
        if not tokens:
            return []
        scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)
        documents = self.documents
        return sorted((int(i) for i in np.flatnonzero(scores > 0)),
                      key=lambda i: (-float(scores[i]), documents[i].server, documents[i].tool))[:CANDIDATES]

    def semantic(self, query: str) -> list[int]:
        """Positions of the `CANDIDATES` documents nearest the query's vector, best first (documents whose
        vectors are not published yet take no part). Nothing when this process cannot load the model: the
        search goes on by BM25 alone rather than failing."""
        if not self._present.any():
            return []
        try:
            query_vector = embed([query])[0]
        except ModelUnavailable as err:
            if str(err) not in _SAID:
                _SAID.add(str(err))
                log.error("tool search by BM25 alone: the embedding model is unavailable (%s)", err)
            return []
        similarity = np.where(self._present, self._vectors @ query_vector, -np.inf)
        best = np.argsort(-similarity, kind="stable")[:CANDIDATES]
        return [int(i) for i in best if self._present[i]]

    def ranked(self, query: str) -> list[int]:
        """Positions of the candidate documents, best first."""
        expanded = expand(query)
        query_words = words(expanded)
        fused: dict[int, float] = {}
        for ranking in (self.lexical(query_words), self.semantic(expanded)):
            for rank, position in enumerate(ranking):
                fused[position] = fused.get(position, 0.0) + 1.0 / (RRF_K + rank)
        asked = frozenset(query_words)
        documents, names, servers = self.documents, self._names, self._servers

        def score(position: int) -> float:
            name = names[position]
            coverage = len(name & asked) / len(name) if name else 0.0
            named_server = 1.0 if servers[position] & asked else 0.0
            return fused[position] * (1.0 + NAME_BOOST * coverage + SERVER_BOOST * named_server)

        final = {position: score(position) for position in fused}
        return sorted(final, key=lambda i: (-final[i], documents[i].server, documents[i].tool))

    def search(self, query: str, limit: int, accept: Callable[[Document], bool]) -> list[Document]:
        """The `limit` best documents `accept` lets through."""
        found: list[Document] = []
        for position in self.ranked(query):
            if accept(self.documents[position]):
                found.append(self.documents[position])
                if len(found) >= limit:
                    break
        return found
