"""One web process's search index, kept in step with the Redis catalog.

The index is derived from the catalog alone (`broker.context.index`), keyed by its identity: the
configured servers that have published, each with its document's digest (a worker's
`store_server_catalog` writes the digest of what its backend lists). Every web process reads the same
documents, so every process builds the same index; a change (a reload, a backend's list_changed) moves
the identity and the next search — or the catalog-changed message, whichever comes first — rebuilds it.

Cost: tokenizing the 2,379 tools of `../shared/catalogs/` took 0.5-0.9 s and indexing 0.3-0.6 s on this
machine's 2 busy cores, so (1) each server's words are kept by its digest, and a change re-reads only the
server that moved; (2) a build runs on a real OS thread when gevent has patched threading (gunicorn's
gevent worker), so the event loop goes on serving while it runs instead of stalling every connection of
the process for the whole build: measured (`make bench`, scenario `context`), during 6.8-9.3 s cold
builds the slowest `ping` on another connection took 0.55-1.3 s (~25 ms just before; 2 cores at load
13): the GIL still makes the loop wait at times. A build in a process of its own would remove that; not
done yet.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from broker.context.embeddings import DIM, embed, tool_text
from broker.context.index import Document, SearchIndex, document_words

if TYPE_CHECKING:
    from broker.catalog import Catalog

T = TypeVar("T")
Identity = tuple[tuple[str, str], ...]


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
        # (server, digest) → its tools' words and vectors: a change re-reads only the server that moved
        self._kept: dict[tuple[str, str], tuple[list[list[str]], np.ndarray]] = {}
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
        if current is not None and current.identity == identity:
            return current
        with self._lock:  # one build at a time; who waited finds it done
            current = self._index
            if current is None or current.identity != identity:
                current = off_the_event_loop(lambda: self._build(identity, documents))
                self._index = current
        return current

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

    def _build(self, identity: Identity, catalog_documents: dict[str, dict[str, Any]]) -> SearchIndex:
        documents: list[Document] = []
        corpus: list[list[str]] = []
        vectors: list[np.ndarray] = []
        kept: dict[tuple[str, str], tuple[list[list[str]], np.ndarray]] = {}
        for server, digest in identity:
            doc = catalog_documents[server]
            tools = [Document(server, str(tool.get("name", "")), tool) for tool in doc.get("tools", [])]
            info = doc.get("serverInfo") or {}
            title = f"{info.get('title') or ''} {info.get('description') or ''}"
            server_kept = self._kept.get((server, digest))
            if server_kept is None:
                server_kept = ([document_words(tool, title) for tool in tools],
                               embed([tool_text(server, tool.tool, tool.definition) for tool in tools]))
            kept[(server, digest)] = server_kept
            documents += tools
            corpus += server_kept[0]
            vectors.append(server_kept[1])
        self._kept = kept
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, DIM), dtype=np.float32)
        return SearchIndex(identity, documents, corpus, matrix)
