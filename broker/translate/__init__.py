"""The translator: the broker's tools in the shapes LLM APIs and OpenAPI tool clients speak (issue 18).

`names` maps tool names into each API's limits and back; the per-provider modules shape definitions.
"""
