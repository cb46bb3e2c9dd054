"""Fault scenarios run end to end against a real broker: what is lost, what is answered twice, how fast it recovers.

Each scenario (`tests/chaos/scenarios.py`) is a function `scenario(size, ...) -> Row`. It starts a broker of its
own (a private redis-server with AOF, ledger-server workers, gunicorn web processes: `tests/chaos/cluster.py`),
runs `size` calls, injects its fault while calls run, and counts per call (`tests/chaos/measure.py`):

- answered once / lost / duplicated: the answers the CLIENT received (batch results read over HTTP and resumed
  with `?after=` as the CLI does; WebSocket responses by request id, across reconnects), never the broker's
  own counters;
- re-runs: backend runs beyond one per call, from the ledger server's file (a call caught mid-run by a fault runs
  again: execution is at least once, the answer exactly once);
- caught: calls running when a fault struck;
- recovery: per fault, from the fault (or from its healing: a Redis restart) until every call it caught is
  answered and, when calls were still waiting, another one has been answered successfully.

`tests/test_chaos.py` runs every scenario small in the default suite (asserting 0 lost, 0 duplicated);
`make chaos` (`python -m tests.chaos`) runs them large and prints the table.
"""
