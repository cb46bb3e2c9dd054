"""Benchmarks for mcp-broker: `python -m bench` (= `make bench`).

Every number the broker is judged by is printed next to a floor measured in the
same run on the same machine (a direct warm MCP stdio session, and peer
gateways), because on a small shared box absolute numbers drift run to run
while side-by-side ratios stay meaningful.
"""
