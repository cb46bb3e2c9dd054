"""Context management (issue 16): what the broker does so a model's context holds more of what matters.

Tool search (what a model is shown of the catalog, and the tools the broker serves itself):

    tools.py        `BROKER_TOOLS`: the broker's own tools (answered in the web process, never by a backend),
                    one row each; `tools_call` consults it before a call is routed to a backend
    modes.py        catalog modes (`full`, `search`): which mode a conversation is in; deferred and pinned
                    tools; what `tools/list` shows
    names.py        the reserved `broker__` namespace of the broker's tools
    search_tool.py  `broker__search_tools`; call_tool.py: `broker__call_tool`
    index.py        BM25 over the catalog's tools; keeper.py: one index per web process, kept in step

Results shaped for a model (JSON compacted, long text cut into pages a model reads on):

    shaping.py      who gets shaped results, the per-server/per-tool policy, `shape` of one result
    compaction.py   `result_format`: raw, compact (minified JSON), toon (TOON where smaller), lossless
    pages.py        cutting a text into pages of N tokens at clean boundaries; tokens.py: cl100k counts, offline
    result_pages.py the kept pages in Redis (per principal, TTL); read_result.py: `broker__read_result`
"""
