"""One web process's search index, kept in step with the Redis catalog.

The index is derived from the catalog alone (`broker.context.index`), keyed by its identity: the
configured servers that have published, each with its document's digest (a worker's
`store_server_catalog` writes the digest of what its backend lists). Every web process reads the same
documents, so every process builds the same index; a change (a reload, a backend's list_changed) moves
the identity and the next search — or the catalog-changed message, whichever comes first — rebuilds it.

The tools' sentence vectors are not computed here: the worker that publishes a server's catalog embeds
its tools once per digest and stores them in Redis (`broker.context.vectors`; 20 CPU-ms a tool on this
machine, 48 CPU-s for the 2,379 tools of `../shared/catalogs/`, 187 s in a `make bench` at load ~12); a build reads them
(`vectors.fetch`: two round trips on the event loop, Redis I/O is gevent's; decoded off it with the rest of
the build) and a server whose vectors are not out yet is ranked by BM25 alone, its vectors' head looked
up again at most once a second until they are.

Cost: tokenizing the 2,379 tools took 0.5-0.9 s and indexing 0.3-0.6 s on this machine's 2 busy cores,
so (1) each server's words and vectors are kept by its digest, and a change re-reads only the server
that moved (0.5 s); (2) a build runs on a real OS thread when gevent has patched threading (gunicorn's
gevent worker), so the event loop goes on serving while it runs: measured (`make bench`, scenario
`context`), during a 3.5 s cold first search (index build and model load) the slowest `ping` on another
connection took 116 ms (16 ms over the 3 s before; 2 cores at load ~12). Before the vectors moved to the
workers, the web embedded every tool itself with `wordllama` during the build and the same ping took
0.55-1.3 s.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from broker.context import vectors
from broker.context.embeddings import DIM
from broker.context.index import Document, SearchIndex, document_words

if TYPE_CHECKING:
    from broker.catalog import Catalog

T = TypeVar("T")
Identity = tuple[tuple[str, str], ...]
Wanted = list[tuple[str, str, int]]  # (server, digest, tool count)
VectorSource = Callable[[Wanted], dict[str, np.ndarray]]
RECHECK_S = 1.0  # while some servers' vectors are missing, how often a search looks for them in Redis


def off_the_event_loop(work: Callable[[], T]) -> T:
    """`work()` on a native thread when gevent patched this process (the calling greenlet waits, the loop
    runs on); called directly otherwise."""
    if "gevent" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            import gevent

            return gevent.get_hub().threadpool.apply(work)  # type: ignore[no-any-return]
    return work()


class IndexKeeper:
    """The current `SearchIndex` of a catalog, rebuilt when the catalog moves."""

    def __init__(self) -> None:
        self._index: SearchIndex | None = None
        # (server, digest) → its tools' words: a change re-reads only the server that moved
        self._kept: dict[tuple[str, str], list[list[str]]] = {}
        self._vectors: dict[tuple[str, str], np.ndarray] = {}  # (server, digest) → its tools' vectors
        self._missing: Wanted = []  # servers of the current index searched without vectors (none published yet)
        self._checked = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def identity(servers: list[str], documents: dict[str, dict[str, Any]]) -> Identity:
        """The published servers, in config order, with their documents' digests."""
        return tuple((server, str(documents[server].get("digest", ""))) for server in servers if server in documents)

    def index(self, catalog: Catalog) -> SearchIndex:
        """The index of the catalog as it is now (built, or rebuilt, if it moved)."""
        catalog.ensure_fresh()
        documents = catalog.documents  # replaced whole by each load: one consistent catalog
        identity = self.identity(list(catalog.config.servers), documents)
        current = self._index
        if current is not None and current.identity == identity and not self._vectors_arrived(catalog):
            return current
        with self._lock:  # one build at a time; who waited finds it done
            current = self._index
            if current is None or current.identity != identity or self._missing:
                wanted = [(server, digest, len(documents[server].get("tools", []))) for server, digest in identity
                          if (server, digest) not in self._vectors]
                raws = vectors.fetch(catalog.redis, wanted)  # here: Redis I/O belongs to the event loop
                current = off_the_event_loop(lambda: self._build(identity, documents,
                                                                 lambda wanted: vectors.decoded(raws, wanted)))
                self._index = current
        return current

    def _vectors_arrived(self, catalog: Catalog) -> bool:
        """Whether vectors missing from the current index are in Redis now (their heads looked up at most once
        a second: a stale digest's vectors are not read)."""
        missing, now = self._missing, time.monotonic()
        if not missing or now - self._checked < RECHECK_S:
            return False
        self._checked = now
        return vectors.arrived(catalog.redis, missing)

    def warm(self, catalog: Catalog) -> None:
        """Build in the background if nothing is built yet: called when a client is shown the search tool
        (its tools/list), so the model's first search finds the index ready. Measured: building the 2,379
        tools took 2-6 s on this machine's busy cores (the first search of a cold process waited that long)."""
        if self._index is None and not self._lock.locked():
            threading.Thread(target=self.index, args=(catalog,), name="tool-index", daemon=True).start()

    def refresh(self, catalog: Catalog) -> None:
        """Rebuild now if an index is kept (a process nobody searched on builds none)."""
        if self._index is not None:
            self.index(catalog)

    def _build(self, identity: Identity, catalog_documents: dict[str, dict[str, Any]],
               source: VectorSource) -> SearchIndex:
        """The index of these documents; vectors from `source` (Redis: `broker.context.vectors`) for the
        servers not kept already, the others (none published yet) searched by BM25 alone."""
        documents: list[Document] = []
        corpus: list[list[str]] = []
        per_server: list[tuple[str, str, list[Document]]] = []
        kept: dict[tuple[str, str], list[list[str]]] = {}
        for server, digest in identity:
            doc = catalog_documents[server]
            tools = [Document(server, str(tool.get("name", "")), tool) for tool in doc.get("tools", [])]
            info = doc.get("serverInfo") or {}
            title = f"{info.get('title') or ''} {info.get('description') or ''}"
            server_words = self._kept.get((server, digest))
            if server_words is None:
                server_words = [document_words(tool, title) for tool in tools]
            kept[(server, digest)] = server_words
            documents += tools
            corpus += server_words
            per_server.append((server, digest, tools))
        found = {key: self._vectors[key] for key in kept if key in self._vectors}
        wanted = [(server, digest, len(tools)) for server, digest, tools in per_server if (server, digest) not in found]
        for server, array in source(wanted).items():
            digest = next(d for s, d, _ in wanted if s == server)
            found[(server, digest)] = array
        matrix = np.zeros((len(documents), DIM), dtype=np.float32)
        present = np.zeros(len(documents), dtype=bool)
        start = 0
        for server, digest, tools in per_server:
            array = found.get((server, digest))
            if array is not None and len(array) == len(tools):
                matrix[start:start + len(tools)] = array
                present[start:start + len(tools)] = True
            start += len(tools)
        self._kept, self._vectors = kept, found
        self._missing = [(server, digest, len(tools)) for server, digest, tools in per_server
                         if (server, digest) not in found and tools]
        self._checked = time.monotonic()
        return SearchIndex(identity, documents, corpus, matrix, present)
