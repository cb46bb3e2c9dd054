"""Cells and tables of the printed report, shared by bench/report.py and the scenarios that render their own
section (bench/own_cpu.py, bench/serial.py)."""

from __future__ import annotations

import math
from typing import Any


def num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[num(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])
