"""`make chaos`: every fault scenario at full size, then the table.

    python -m tests.chaos [--only NAME ...] [--scale F]

`--scale 0.1` runs each scenario with a tenth of its calls (a quick look); the exit status is 1 when any
scenario lost or duplicated a call, did not recover, or ran out of calls before all its faults struck.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from tests.chaos.measure import Row
from tests.chaos.scenarios import LONG


def fmt_recovery(row: Row) -> str:
    if not row.faults:
        return "no fault struck"
    if len(row.faults) < row.planned_faults:
        return f"{len(row.faults)} of {row.planned_faults} faults struck: " + _values(row)
    return _values(row)


def _values(row: Row) -> str:
    values = ", ".join("never" if r is None else f"{r:.1f}" for r in row.recovery)
    return f"{values} (from {row.recovery_from})"


def table(rows: list[Row]) -> str:
    header = ["scenario", "calls", "answered once", "lost", "duplicated", "errors", "re-runs", "caught",
              "recovery s", "took s"]
    lines = [[r.scenario, f"{r.calls:,}", f"{r.answered_once:,}", str(r.lost), str(r.duplicated), str(r.errors),
              str(r.reruns), str(r.caught), fmt_recovery(r), f"{r.elapsed_s:.0f}"] for r in rows]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.append("")
    out += [f"{r.scenario}: {'; '.join(r.notes)}" for r in rows if r.notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(LONG), help="run only these scenarios")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's call count")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    failed: list[str] = []
    for name, (scenario, kwargs) in LONG.items():
        if args.only and name not in args.only:
            continue
        sized = {**kwargs, "size": max(20, int(kwargs["size"] * args.scale))}
        print(f"[{time.strftime('%H:%M:%S')}] {name} {sized}", flush=True)
        try:
            row = scenario(**sized)
        except Exception:  # one broken scenario must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        print(f"    {row.summary()}", flush=True)
        rows.append(row)
    print()
    print(table(rows))
    bad = [r.scenario for r in rows
           if r.lost or r.duplicated or not r.recovered or len(r.faults) < r.planned_faults] + failed
    if bad:
        print(f"\nNOT MET: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
