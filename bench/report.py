"""Turn the raw results into the printed table, the targets verdicts and the notes.

Kept apart from the scenarios so the JSON in bench/results/latest.json can be re-rendered
(`python -m bench --render FILE`) without re-running anything.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bench import context_results, own_cpu, serial
from bench.context import report as context_report
from bench.fmt import num as _num
from bench.fmt import table
from bench.fmt import x as _x
from bench.stats import ratio

GIB = 1024.0


def machine() -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, RAM, load when the run began."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is in requirements.txt
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(ram / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------- sections
def overhead_section(o: dict[str, Any]) -> str:
    base = o["direct_sdk"]["p50_ms"]
    rows = []
    labels = [("direct_raw", "direct stdio, raw pipes (floor of the floor)"),
              ("direct_sdk", "(a) direct stdio, mcp SDK Client  [reference]"),
              ("broker_raw", "(b) broker WS uncached, raw ws client"),
              ("broker_sdk", "(b') broker WS uncached, SDK client (AsyncMCPBrokerClient)"),
              ("broker_cached_raw", "(c) broker WS cached, raw ws client")]
    for key, label in labels:
        r = o.get(key) or {}
        if "na" in r:
            rows.append([label, "n/a", "n/a", "n/a", "n/a", r["na"]])
            continue
        note = f"{r.get('errors', 0)} errors" if r.get("errors") else ""
        rows.append([label, r.get("p50_ms"), r.get("p99_ms"), _x(ratio(r.get("p50_ms"), base)),
                     _num(r["p50_ms"] - base if r.get("p50_ms") is not None else None), note])
    return "1. Overhead: trivial echo call, sequential (one in flight)\n" + table(
        ["variant", "p50 ms", "p99 ms", "p50 vs (a)", "p50 - (a) ms", "note"], rows)


def throughput_section(t: dict[str, Any]) -> str:
    direct = t["direct_sdk"]["calls_per_s"]
    rows = [["(ref) direct stdio, mcp SDK", "-", t["direct_sdk"]["window"], direct, "1.00x",
             t["direct_sdk"]["p50_ms"], t["direct_sdk"]["p99_ms"], _cpu(t["direct_sdk"])]]
    for r in t["broker"]:
        rows.append(["broker WS, one socket, raw client", r["workers"], r["window"], r["calls_per_s"],
                     _x(ratio(r["calls_per_s"], direct)), r["p50_ms"], r["p99_ms"], _cpu(r)])
    off = t.get("coalescing_off")
    if off:
        rows.append(["  same, web coalescing off (MAX_BATCH=1)", off["workers"], off["window"], off["calls_per_s"],
                     _x(ratio(off["calls_per_s"], direct)), off["p50_ms"], off["p99_ms"], _cpu(off)])
    for r in t["batch"]:
        rows.append([f"broker POST /v1/batches ({r['batch_size']:,}/batch)", r["workers"],
                     f"{r.get('batches_in_flight', '?')} batches",
                     r["calls_per_s"], _x(ratio(r["calls_per_s"], direct)), r["p50_ms"], r["p99_ms"], _cpu(r)])
    if t["batch_api"] != "available":
        rows.append(["broker POST /v1/batches", "-", "-", "n/a", "n/a", "n/a", "n/a", t["batch_api"]])
    cached = t.get("cached") or {}
    if "na" in cached:
        rows.append(["broker WS cached", "-", "-", "n/a", "n/a", "n/a", "n/a", cached["na"]])
    else:
        rows.append(["broker WS cached (same args)", cached["workers"], cached["window"], cached["calls_per_s"],
                     _x(ratio(cached["calls_per_s"], direct)), cached["p50_ms"], cached["p99_ms"], _cpu(cached)])
    head = f"2. Throughput: {t['calls']:,} trivial calls (p50/p99 = latency per call, or per batch for the batch API)\n"
    cpu_header = "CPU-ms per call: web/workers/backends/redis/client; busy cores; calls per queue message"
    return head + table(["path", "workers", "in flight", "calls/s", "vs direct", "p50 ms", "p99 ms", cpu_header], rows)


def _cpu(r: dict[str, Any]) -> str:
    parts = [r.get(f"{k}_cpu_ms_per_call") for k in ("web", "workers", "backends", "redis", "bench")]
    shown = "/".join("-" if p is None else f"{p:.2f}" for p in parts)
    busy = r.get("box_busy_cores")
    text = f"{shown}; {busy:.2f} of {r.get('cores', 0):.0f}" if busy is not None else shown
    per_message = r.get("calls_per_message")
    return f"{text}; {per_message:.1f} calls/msg" if per_message else text


def connections_section(c: dict[str, Any]) -> str:
    rows = []
    for r in c["runs"]:
        if "error" in r:
            rows.append([r["sockets"], "NO", "-", "-", "-", "-", "-", r["error"][:120]])
            continue
        note = []
        if r.get("connect_failures"):
            note.append(f"{r['connect_failures']} failed to connect: {r.get('first_connect_failure')}")
        if r.get("dropped"):
            note.append(f"{r['dropped']} dropped")
        if r.get("call_errors") or r.get("call_timeouts"):
            note.append(f"{r['call_errors']} errors/{r['call_timeouts']} timeouts: {r.get('first_error')}")
        rows.append([r["sockets"], r["all_stayed_connected"], f"{r['offered_calls_per_s']:.0f}", r["call_n"],
                     r["call_p50_ms"], r["call_p99_ms"], f"{r['web_rss_peak_mib']:.0f}",
                     f"{r['web_rss_per_socket_kib']:.0f}", "; ".join(note)])
    head = (f"3. Connections: sockets held {c['runs'][0].get('hold_s', '?') if c['runs'] else '?'} s, each calling "
            f"echo every ~{c['runs'][0].get('call_interval_s', '?') if c['runs'] else '?'} s; "
            f"web fd limit {c.get('web_fd_limit')}\n")
    return head + table(["sockets", "all stayed connected", "offered calls/s", "calls", "p50 ms", "p99 ms",
                         "web RSS peak MiB", "KiB/socket", "note"], rows)


def peers_section(p: dict[str, Any]) -> str:
    rows = []
    for r in p["rows"]:
        rows.append([r["name"], r["transport"], r["client"], r["p50_ms"], r["p99_ms"], r["calls_per_s"],
                     _x(r.get("p50_vs_broker")) if "baseline" in r else "-",
                     _x(r.get("calls_per_s_vs_broker")) if "baseline" in r else "-",
                     f"{r['errors']} errors" if r.get("errors") else ""])
    for name, why in p.get("skipped", {}).items():
        rows.append([name, "-", "-", "n/a", "n/a", "n/a", "n/a", "n/a", f"skipped: {why}"])
    return ("4. Peers: same echo.py behind other gateways (sequential p50/p99; calls/s with 64 in flight); "
            "ratios are peer / broker with the same client kind\n"
            + table(["gateway", "transport", "client", "p50 ms", "p99 ms", "calls/s", "p50 vs broker",
                     "calls/s vs broker", "note"], rows))


# ---------------------------------------------------------------- targets
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and met / missed / n/a. Reported, never asserted."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: str, met: bool | None, detail: str = "") -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met, "detail": detail})

    o = results.get("overhead") or {}
    if "direct_sdk" in o and "broker_raw" in o:
        over = o["broker_raw"]["p50_ms"] - o["direct_sdk"]["p50_ms"]
        add("uncached p50 overhead over direct (ms)", over, "<= 2 ms", over <= 2.0,
            f"{o['broker_raw']['p50_ms']:.2f} - {o['direct_sdk']['p50_ms']:.2f}")
    cached = o.get("broker_cached_raw") or {}
    if cached and "na" not in cached:
        add("cached p50 (ms)", cached["p50_ms"], "<= 1 ms", cached["p50_ms"] <= 1.0)
    elif o:
        add("cached p50 (ms)", None, "<= 1 ms", None, cached.get("na", ""))
    t = results.get("throughput") or {}
    if t.get("broker"):
        direct = t["direct_sdk"]["calls_per_s"]
        candidates = t["broker"] + t.get("batch", [])
        best = max(candidates, key=lambda r: r["calls_per_s"])
        how = f"{best['workers']} worker(s), " + (f"{best['window']} in flight" if "window" in best else "batch API")
        value = ratio(best["calls_per_s"], direct)
        add("uncached throughput / direct pipelined", value, ">= 0.6x", value is not None and value >= 0.6,
            f"best: {best['calls_per_s']:.0f} vs {direct:.0f} calls/s ({how})")
        tc = t.get("cached") or {}
        if "na" in tc:
            add("cached throughput / direct pipelined", None, ">= 3x", None, tc["na"])
        else:
            value = ratio(tc["calls_per_s"], direct)
            add("cached throughput / direct pipelined", value, ">= 3x", value is not None and value >= 3.0,
                f"{tc['calls_per_s']:.0f} vs {direct:.0f} calls/s")
    c = results.get("connections") or {}
    biggest = max((r for r in c.get("runs", []) if "error" not in r), key=lambda r: r["sockets"], default=None)
    if biggest is not None:
        ok = biggest["all_stayed_connected"] and biggest["web_rss_peak_mib"] < GIB
        add(f"{biggest['sockets']:,} sockets held, web RSS (MiB)", biggest["web_rss_peak_mib"],
            "all connected, < 1 GiB (target is 2,000)", ok,
            f"all connected: {biggest['all_stayed_connected']}")
    p = results.get("peers") or {}
    for row in p.get("rows", []):
        if "calls_per_s_vs_broker" in row:  # peer / broker; the target is broker / peer
            value = ratio(1.0, row["calls_per_s_vs_broker"])
            add(f"trivial calls/s, broker / {row['name'].split()[0]} ({row['transport']})", value, ">= 1.0x",
                value is not None and value >= 1.0, f"{row['calls_per_s'] * (value or 0):.0f} vs "
                f"{row['calls_per_s']:.0f} calls/s, 64 in flight, {row['client']} client, broker 1 worker")
    for key, module in (("own_cpu", own_cpu), ("serial", serial)):
        section = results.get(key) or {}
        if "error" not in section:
            module.targets(section, add)
    context_report.targets(results.get("context") or {}, add)
    return out


def targets_section(items: list[dict[str, Any]]) -> str:
    rows = [[i["target"], _num(i["value"]), i["limit"],
             "n/a" if i["met"] is None else ("met" if i["met"] else "MISSED"), i["detail"]] for i in items]
    return "Targets (reported, not asserted)\n" + table(["target", "measured", "target", "verdict", "detail"], rows)


def notes(results: dict[str, Any]) -> str:
    """The 2-core ceiling, in this run's own numbers."""
    lines = ["Notes"]
    m = results["meta"]["machine"]
    lines.append(f"- Machine: {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}; "
                 f"load average at start {m['loadavg_at_start']}. Every process (Redis, web, workers, backends, the "
                 "load generator) shares these cores, so compare rows of one run, not runs.")
    t = results.get("throughput") or {}
    if t.get("broker"):
        d = t["direct_sdk"]
        direct_cpu = (d.get("bench_cpu_ms_per_call") or 0) + (d.get("backends_cpu_ms_per_call") or 0)
        best = max(t["broker"], key=lambda r: r["calls_per_s"])
        keys = ("web", "workers", "backends", "redis", "bench")
        shares = {k: best.get(f"{k}_cpu_ms_per_call") or 0.0 for k in keys}
        total = sum(shares.values())
        cores = d.get("cores") or 2
        if direct_cpu and total:
            split = ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
            lines.append(
                f"- 2-core ceiling: a direct call costs {direct_cpu:.2f} CPU-ms (client + server), so two cores "
                f"cap it near {1000 * cores / direct_cpu:,.0f} calls/s. Through the broker the same call costs "
                f"{total:.2f} CPU-ms in all ({split}; 'bench' is the load client): the ceiling is "
                f"~{1000 * cores / total:,.0f} calls/s however many workers run. More worker processes only help "
                "while a core is idle; with both busy they add context switches and one more backend each.")
        lines.append("- The broker's latency under load (p50 with 64 in flight) is mostly queueing: with N calls in "
                     "flight and a ceiling of C calls/s, each waits ~N/C.")
    c = results.get("connections") or {}
    if c.get("runs"):
        lines.append("- Connections: one asyncio process holds every client socket; offered load = sockets / "
                     "interval. When that nears the throughput ceiling above, p99 is queueing, not socket count.")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    parts = [f"mcp-broker bench ({results['meta']['mode']} run, {results['meta'].get('duration_s', 0):.0f} s)"]
    sections = [("overhead", overhead_section), ("throughput", throughput_section),
                ("connections", connections_section), ("peers", peers_section), ("context", context_report.render),
                ("context_results", context_results.render), ("own_cpu", own_cpu.render), ("serial", serial.render)]
    for key, fn in sections:
        value = results.get(key)
        if value is None:
            continue
        if "error" in value and set(value) <= {"error", "duration_s"}:  # the scenario failed (run_scenario)
            parts.append(f"{key}: FAILED: {value['error']}")
            continue
        parts.append(fn(value))
    items = targets(results)
    if items:
        parts.append(targets_section(items))
    parts.append(notes(results))
    return "\n\n".join(parts)
