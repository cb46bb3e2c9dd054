"""The web tier's CPU-ms per call over each front end, and A/B of two checkouts side by side.

    python -m bench.web_cpu                              # this checkout: one run, every front end
    python -m bench.web_cpu --ab BASE_TREE --rounds 3    # alternate BASE_TREE and this checkout, medians
    python -m bench.web_cpu --ab BASE --b T1 --b T2      # three sides (A, B, C), alternating
    python -m bench.web_cpu --profile DIR                # also py-spy the web: DIR/web-<front>.txt (raw stacks)
    python -m bench.web_cpu --micro                      # per-call costs in this process, alternating
    python -m bench.web_cpu --probe                      # also the web's own CPU per request by layer (web_probe)

The web process is the tier a Streamable HTTP client feels most (issue 19: 7.5-9.3 CPU-ms of the broker's
own per call on `/servers/<name>/mcp`, five times the WebSocket path). Each run starts an embedded Redis, a
web process and one worker for the stdio probe backend (examples/servers/probe.py, `whoami`), then runs
`--calls` calls with 64 in flight over: one WebSocket with a raw client (`ws`), and the official SDK client
on `/servers/pstdio/mcp` in each era (`http-handshake`: mode legacy; `http-modern`: 2026-07-28). Per call:
CPU of the web processes, the worker and Redis (`bench.cpu.CPUMeter`); the client's own CPU is not counted.
Runs alternate between the checkouts, each in its own processes, as `bench.worker_cpu` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FRONTS = ("ws", "http-handshake", "http-modern")
METRICS = ("web_cpu_ms_per_call", "worker_cpu_ms_per_call", "redis_cpu_ms_per_call", "redis_commands_per_call",
           "redis_connections_per_call", "calls_per_message", "calls_per_s")
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing answers there: `ensure_redis` starts an embedded one
MODERN = "2026-07-28"
PROBE_ENV = "MCP_BROKER_WEB_PROBE"  # set by --probe: the web loads bench/web_probe.py (gunicorn.conf.py)


@contextlib.contextmanager
def probe_config(tree: Path) -> Iterator[Path]:
    probe = str(tree / "examples" / "servers" / "probe.py")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mcp_servers.json"
        config.write_text(json.dumps({"mcpServers": {"pstdio": {
            "command": sys.executable, "args": [probe], "broker": {"concurrency": 16, "timeout_s": 30}}}}))
        yield config


@contextlib.contextmanager
def sampled(pids: list[int], out: Path | None) -> Iterator[None]:
    """py-spy samples these processes while the block runs (raw stacks, `out` named per pid); nothing if None."""
    if out is None:
        yield
        return
    from bench.profile import py_spy

    spies = [subprocess.Popen([py_spy(), "record", "--nonblocking", "--format", "raw", "-r", "200", "-p", str(pid),
                               "-o", str(out.with_name(f"{out.stem}-{pid}.txt"))], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for pid in pids]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)


def run_once(tree: Path, calls: int, window: int = 64, fronts: tuple[str, ...] = FRONTS,
             profile: Path | None = None) -> dict[str, Any]:
    """One stack of the checkout at `tree` (its code: imported from there); CPU-ms per call by front end.
    With `profile` (a folder), py-spy samples the web process during each front end's measured calls."""
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    import psutil

    from bench.cpu import CPUMeter, redis_server_process
    from bench.stack import running_stack

    out: dict[str, Any] = {}
    with probe_config(tree) as config, running_stack(NO_REDIS, config=config, announce=False) as stack:
        worker = psutil.Process(stack.worker_pids("pstdio")[0])
        for front in fronts:
            meter = CPUMeter(lambda w=worker: {
                "worker": [w], "web": stack.web_processes(),
                "redis": [p for p in [redis_server_process(stack.stack.redis_url)] if p]},
                messages=lambda: stack.queue_messages("pstdio"))
            meter = CommandCount(meter, stack.stack.redis_url)
            spy = sampled([p.pid for p in stack.web_processes()], profile / f"web-{front}.txt" if profile else None)
            if os.environ.get(PROBE_ENV):
                from bench.web_probe import probed

                spy = probed(os.environ[PROBE_ENV], spy, front)
            if front == "ws":
                out[front] = asyncio.run(_measure_ws(stack.ws_url, calls, window, meter, spy))
            else:
                mode = "legacy" if front == "http-handshake" else MODERN
                out[front] = asyncio.run(_measure_sdk(f"{stack.http_url}/servers/pstdio/mcp", mode, calls, window,
                                                      meter, spy))
    return out


class CommandCount:
    """Redis commands per call by name (INFO commandstats before and after): each is a round trip and a
    send/recv pair for someone, which on loopback is most of what a call's Redis traffic costs in CPU."""

    def __init__(self, meter: Any, redis_url: str) -> None:
        import redis

        self._meter, self._r, self._before = meter, redis.Redis.from_url(redis_url), {}

    def _stats(self) -> dict[str, int]:
        stats = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in self._r.info("commandstats").items()}
        stats["(connections)"] = int(self._r.info("stats")["total_connections_received"])
        return stats

    def start(self) -> None:
        self._before = self._stats()
        self._meter.start()

    def stop(self, calls: int, elapsed_s: float) -> dict[str, Any]:
        out = self._meter.stop(calls, elapsed_s)
        after = self._stats()
        per_call = {n: (c - self._before.get(n, 0)) / calls for n, c in after.items() if c > self._before.get(n, 0)}
        per_call.pop("info", None)
        out["redis_connections_per_call"] = per_call.pop("(connections)", 0.0)  # new clients: a connect each
        out["redis_commands_per_call"] = sum(per_call.values())
        out["redis_commands"] = {n: round(v, 2) for n, v in sorted(per_call.items(), key=lambda kv: -kv[1])}
        return out


async def _measure_ws(url: str, calls: int, window: int, meter: Any, spy: Any) -> dict[str, Any]:
    from bench.wsclient import RawSession

    session = await RawSession.open(url)
    try:
        await session.pipelined("pstdio__whoami", lambda i: {}, min(500, calls), window, 120)  # warm
        with spy:
            meter.start()
            result = await session.pipelined("pstdio__whoami", lambda i: {}, calls, window, 600)
        return {"calls_per_s": calls / result.elapsed_s, "errors": result.errors,
                **meter.stop(calls, result.elapsed_s)}
    finally:
        await session.close()


async def _measure_sdk(url: str, mode: str, calls: int, window: int, meter: Any, spy: Any) -> dict[str, Any]:
    from mcp import Client

    from bench.direct import sdk_pipelined

    async with Client(url, mode=mode) as client:
        await sdk_pipelined(client, min(300, calls), window, "whoami")  # warm: connections, sessions
        with spy:
            meter.start()
            result = await sdk_pipelined(client, calls, window, "whoami")
        return {"calls_per_s": calls / result.elapsed_s, "errors": result.errors,
                **meter.stop(calls, result.elapsed_s)}


def ab(base: Path, rounds: int, calls: int, after: list[Path],
       fronts: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Alternate runs of `base` and each of `after` (B, C, ...), each a process of its own running this file
    with `--tree`."""
    from bench.ab import alternate  # here, not at the top: a run with `--tree` imports from that tree

    return alternate(__file__, [base, *after], rounds, ["--calls", str(calls), "--fronts", ",".join(fronts)],
                     "web_cpu_ms_per_call", fronts)


def render(runs: dict[str, list[dict[str, Any]]], fronts: tuple[str, ...] = FRONTS) -> str:
    from bench.ab import render as render_runs

    return render_runs(runs, fronts, METRICS, "front")


def micro(rounds: int = 5) -> str:
    """Two of the web's per-call costs in this process, alternating, medians of `rounds` (process CPU): the
    tools/call params load (the schema's, the quick one), and an answer's Redis writes (its SSE event and its
    session's forget) one round trip each, the forgets held in bursts of 4 as the web does (`broker.held`),
    and the events held too (what 752f870 did), on an embedded Redis,
    and the call log lines of a burst written one record each against together, and a queue message's send
    (its session record and LPUSH) pipelined against in one script (`web.services.push_calls`)."""
    import uuid

    import redis

    from broker import keys, wire
    from broker.events import EventLog
    from broker.held import held
    from broker.held import pipeline as held_pipeline
    from broker.protocol.framing import _message_schema, message_error
    from broker.protocol.registry import quick_call_tool_params
    from broker.schemas import CallToolParamsSchema
    from broker.sessions import SessionStore
    from cli.devrun import EmbeddedRedis
    from web.services import push_calls
    from workers.dispatch import run_calls_message

    def cpu_us(fn: Any, n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - started) / n * 1e6

    def line(what: str, sides: dict[str, list[float]]) -> str:
        return what + ": " + ", ".join(f"{name} {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                                       for name, v in sides.items())

    schema, params = CallToolParamsSchema(), {"name": "pstdio__whoami", "arguments": {"a": 1}, "_meta": {"x": 1}}
    loads: dict[str, list[float]] = {"schema": [], "quick": []}
    envelope = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    envelopes: dict[str, list[float]] = {"schema": [], "quick": []}
    for _ in range(rounds):
        loads["schema"].append(cpu_us(lambda: schema.load(params), 5000))
        loads["quick"].append(cpu_us(lambda: quick_call_tool_params(params), 5000))
        envelopes["schema"].append(cpu_us(lambda: _message_schema.validate(envelope), 5000))
        envelopes["quick"].append(cpu_us(lambda: message_error(envelope), 5000))
    embedded = EmbeddedRedis(aof=False)
    try:
        r = redis.Redis.from_url(embedded.start(), decode_responses=True)
        events, sessions, session = EventLog(r), SessionStore(r), uuid.uuid4().hex
        answer = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "x" * 100}]}}

        def burst() -> None:
            for _ in range(4):
                events.append(session, "p1", answer)
                sessions.forget(session, [uuid.uuid4().hex])

        def burst_held() -> None:  # as the web does: the forgets held, each SSE event written at once
            with held(r):
                burst()

        def burst_all_held() -> None:  # the SSE events held too (752f870; undone: the XADD is the delivery)
            with held(r):
                pipe = held_pipeline()
                assert pipe is not None
                for _ in range(4):
                    key = keys.sse_stream(session, "p1")
                    pipe.xadd(key, {"data": wire.dumps(answer)})
                    pipe.expire(key, events.ttl_s)
                    sessions.forget(session, [uuid.uuid4().hex])

        def forgets_held() -> None:  # a burst of 8 answers of one session: their forgets alone
            with held(r):
                for _ in range(8):
                    sessions.forget(session, [uuid.uuid4().hex])

        writes: dict[str, list[float]] = {"a round trip each": [], "forgets held": [], "events held too": []}
        forgets: dict[str, list[float]] = {"held": []}
        for _ in range(rounds):
            writes["a round trip each"].append(cpu_us(burst, 300) / 4)
            writes["forgets held"].append(cpu_us(burst_held, 300) / 4)
            writes["events held too"].append(cpu_us(burst_all_held, 300) / 4)
            forgets["held"].append(cpu_us(forgets_held, 300) / 8)

        def message(i: int) -> list[dict[str, Any]]:
            return [{"call_id": uuid.uuid4().hex, "session": session, "rid": i, "server": "pstdio",
                     "method": "tools/call", "name": "whoami", "arguments": {"a": 1}}]

        def send_pipelined() -> None:  # what 5c516ac sent: the same commands, no MULTI/EXEC
            pipe = r.pipeline(transaction=False)
            for key, entries in sessions.records(message(1)).items():  # one HSET and one EXPIRE per session
                pipe.hset(key, mapping=entries)
                pipe.expire(key, sessions.ttl_s)
            pipe.lpush("mcp.bench", run_calls_message("mcp.bench", message(1)))
            pipe.execute()

        sends: dict[str, list[float]] = {"pipeline": [], "script": []}
        for _ in range(rounds):
            sends["pipeline"].append(cpu_us(send_pipelined, 300))
            sends["script"].append(cpu_us(lambda: push_calls(r, sessions, "mcp.bench", message(1)), 300))
            r.delete("mcp.bench", keys.session_calls(session))
        posts = post_stream_reads(events, session, answer, rounds, cpu_us)
    finally:
        embedded.stop()
    with tempfile.TemporaryDirectory() as tmp:
        from broker import observe

        os.environ["MCP_BROKER_CALL_LOG"] = str(Path(tmp) / "calls.log")
        observe.configure_call_log("web")
        fields = {"call_id": uuid.uuid4().hex, "session": None, "key": "anonymous", "server": "pstdio",
                  "tool": "whoami", "outcome": "ok", "total_ms": 1.234, "worker": "pstdio.abc@host"}

        def lines() -> None:
            for _ in range(4):
                observe.call_line("web", fields)

        def lines_together() -> None:
            with observe.lines_together():
                lines()

        logged: dict[str, list[float]] = {"a record each": [], "together": []}
        for _ in range(rounds):
            logged["a record each"].append(cpu_us(lines, 1000) / 4)
            logged["together"].append(cpu_us(lines_together, 1000) / 4)
    return "\n".join([line("tools/call params load, CPU us per call", loads),
                      line("a request's JSON-RPC envelope check, CPU us per message", envelopes),
                      line("an answer's writes (SSE event + forget), CPU us per answer, bursts of 4", writes),
                      line("an answer's forget alone, CPU us per answer, bursts of 8 of one session", forgets),
                      line("call log lines to a file, CPU us per line, bursts of 4", logged),
                      line("a queue message of one call and its session record, CPU us per send", sends),
                      line("a handshake POST's answer written, then read back or handed over: CPU us", posts)])


def post_stream_reads(events: Any, session: str, answer: dict[str, Any], rounds: int,
                      cpu_us: Any) -> dict[str, list[float]]:
    """A handshake POST's answer written to its stream (XADD + EXPIRE), then read back by its response with an
    XREAD (as before `web/transports/post_stream.py`), or handed over in-process through a queue (as now)."""
    import queue

    last = {"after": "0"}
    handed: queue.Queue[Any] = queue.Queue()

    def read_back() -> None:
        events.append(session, "rb", answer)
        [(last["after"], _)] = events.read(session, "rb", last["after"], None)

    def hand_over() -> None:
        handed.put((events.append(session, "ho", answer), answer))
        handed.get_nowait()

    out: dict[str, list[float]] = {"read back": [], "handed over": []}
    for _ in range(rounds):
        out["read back"].append(cpu_us(read_back, 300))
        out["handed over"].append(cpu_us(hand_over, 300))
    return out



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per front end per run")
    parser.add_argument("--ab", type=Path, metavar="BASE_TREE", help="a checkout to compare with (git worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--b", type=Path, action="append", metavar="TREE",
                        help="the other side of --ab (default: here); repeat for a third side (C), ...")
    parser.add_argument("--json", action="store_true", help="one run, its JSON on the last line")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the web: DIR/web-<front>.txt (raw)")
    parser.add_argument("--micro", action="store_true", help="per-call costs in this process (see `micro`)")
    parser.add_argument("--probe", action="store_true", help="the web's own CPU per request by layer (web_probe)")
    parser.add_argument("--fronts", default=",".join(FRONTS), help=f"comma-separated, of {', '.join(FRONTS)}")
    args = parser.parse_args(argv)
    fronts = tuple(f for f in args.fronts.split(",") if f in FRONTS)
    started = time.monotonic()
    if args.micro:
        print(micro())
    elif args.ab is not None:
        after = [b.resolve() for b in args.b or [ROOT]]
        print(render(ab(args.ab.resolve(), args.rounds, args.calls, after, fronts), fronts))
    else:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        if args.probe:
            os.environ[PROBE_ENV] = str(Path(tempfile.mkdtemp(prefix="web-probe-")) / "web")
        result = run_once(args.tree.resolve(), args.calls, fronts=fronts,
                          profile=args.profile.resolve() if args.profile else None)
        if args.json:
            print(json.dumps(result))
            return 0
        print(render({"this checkout": [result]}, fronts))
        for front in fronts:
            print(f"{front}: Redis commands per call {result[front]['redis_commands']}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
