"""What observability costs a call: `python -m bench.observe_cost`.

Times, in one process and without Redis on the path, exactly what the broker does per call: the web
side's `observe.web_outcome` (a counter, a histogram, the JSON log line) and the worker side's
`observe.worker_outcome` (a counter, two histograms, the log line), with the log line written to
/dev/null and with it switched off; and, apart, one flush of the deltas to Redis (once a second per
process, not per call). Prints microseconds per call.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

from broker import observe
from broker.calls import Call
from broker.metrics import Recorder

CALL = {"call_id": "0123456789abcdef0123456789abcdef", "server": "echo", "tool": "echo", "session": "s" * 32,
        "key": "ops", "queued_at": time.time(), "method": "tools/call"}
WORKER_CALL = Call.from_message(CALL)  # what a worker reads from the message
OUTCOME = {"call_id": CALL["call_id"], "result": {"content": [], "isError": False}, "worker": "echo.1@host"}


def per_call_us(fn: Callable[[], None], n: int = 50_000, rounds: int = 5) -> float:
    """Median over `rounds` of the mean cost of `fn` in microseconds."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(results)


def main() -> int:
    recorder = Recorder(flush_s=3600)  # no background flush during the timing
    observe.RECORDER = recorder  # type: ignore[attr-defined]
    import broker.observe as module

    module.RECORDER = recorder
    os.environ["MCP_BROKER_CALL_LOG"] = os.devnull
    module.configure_call_log("bench")
    rows = [
        ("counter inc", per_call_us(lambda: recorder.inc("mcp_broker_calls", ("echo", "echo", "ok")))),
        ("histogram observe", per_call_us(lambda: recorder.observe("mcp_broker_end_to_end_seconds", ("echo",), 0.002))),
        ("web side, log line on", per_call_us(lambda: observe.web_outcome(CALL, OUTCOME, 0.002))),
        ("worker side, log line on", per_call_us(lambda: observe.worker_outcome(WORKER_CALL, OUTCOME, "w", 0.001,
                                                                                 0.002))),
    ]
    logging.getLogger(observe.CALL_LOGGER).handlers.clear()
    rows += [
        ("web side, log line off", per_call_us(lambda: observe.web_outcome(CALL, OUTCOME, 0.002))),
        ("worker side, log line off", per_call_us(lambda: observe.worker_outcome(WORKER_CALL, OUTCOME, "w", 0.001,
                                                                                  0.002))),
    ]
    for name, value in rows:
        print(f"{name:28s} {value:8.2f} µs/call")
    try:
        timings = []
        for _ in range(5):
            for i in range(200):  # 200 tools' worth of series
                recorder.inc("mcp_broker_executions", ("echo", f"t{i}", "ok"))
                recorder.observe("mcp_broker_execution_seconds", ("echo", f"t{i}"), 0.01)
            started = time.perf_counter()
            recorder.flush()
            timings.append((time.perf_counter() - started) * 1000)
        print(f"{'flush of 200 tools':28s} {statistics.median(timings):8.2f} ms (once a second, off the call path)")
    except Exception as err:  # no Redis here: the per-call numbers above stand on their own
        print(f"flush not measured: {err!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
