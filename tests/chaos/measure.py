"""What a chaos scenario measures: per call, the answers the client received and the runs the backend made.

Nothing here is taken from the broker's own counters: a call counts as answered when the CLIENT got its
answer (a batch result line read over HTTP, a WebSocket response), and as run when the ledger server
(`tests/servers/ledger.py`) wrote it down. The clocks agree: every process runs on this host.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Run:
    """One run of a call on a backend, from its ledger line."""

    pid: int  # the backend process
    worker: int  # its parent: the worker process that ran the call
    at: float


@dataclass(frozen=True)
class Fault:
    """One injected fault: when it happened, and when recovery is measured from (the fault, or its healing)."""

    at: float
    origin: float
    what: str


def read_ledger(path: Path) -> dict[str, list[Run]]:
    """Every run on record, by call key (a torn last line, written as we read, is skipped)."""
    runs: dict[str, list[Run]] = defaultdict(list)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return runs
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            runs[parts[0]].append(Run(int(parts[1]), int(parts[2]), float(parts[3])))
    return runs


class Tally:
    """The answers a client received, per call key (thread-safe: reader threads add, the scenario reads)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self._expected = set(self.keys)
        self._receipts: dict[str, list[tuple[float, bool]]] = defaultdict(list)
        self._unexpected: list[str] = []
        self.last_at = time.time()  # when the last answer arrived (or the tally began)
        self.error_kinds: Counter[str] = Counter()  # what the error answers said (first 100 characters)
        self._lock = threading.Lock()

    def receive(self, key: str, ok: bool, at: float | None = None, error: str = "") -> None:
        with self._lock:
            if key in self._expected:
                self.last_at = at or time.time()
                self._receipts[key].append((self.last_at, ok))
                if not ok:
                    self.error_kinds[error[:100]] += 1
            else:
                self._unexpected.append(key)

    def truncate(self, count: int) -> None:
        """Only the first `count` calls were made (a load that stopped early): forget the rest."""
        with self._lock:
            self.keys = self.keys[:count]
            self._expected = set(self.keys)

    def answered(self) -> int:
        with self._lock:
            return len(self._receipts)

    def unanswered(self, keys: list[str] | None = None) -> list[str]:
        with self._lock:
            return [k for k in (keys if keys is not None else self.keys) if k not in self._receipts]

    def snapshot(self) -> dict[str, list[tuple[float, bool]]]:
        with self._lock:
            return {k: list(v) for k, v in self._receipts.items()}

    @property
    def unexpected(self) -> list[str]:
        with self._lock:
            return list(self._unexpected)


def caught_by(fault: Fault, runs: dict[str, list[Run]], receipts: dict[str, list[tuple[float, bool]]]) -> list[str]:
    """The calls a fault caught: running (on the ledger) when it struck and not answered before it."""
    return [key for key, key_runs in runs.items()
            if min(r.at for r in key_runs) < fault.at and not any(t < fault.at for t, _ in receipts.get(key, []))]


def recovery_s(fault: Fault, keys: list[str], runs: dict[str, list[Run]],
               receipts: dict[str, list[tuple[float, bool]]]) -> float | None:
    """Seconds from `fault.origin` until calls are answered again: every call the fault caught has its answer,
    and (when calls were still waiting at the fault) one of the others has been answered successfully.
    None: not recovered (a caught call never answered, or nothing answered successfully after the fault)."""
    caught = caught_by(fault, runs, receipts)
    if any(key not in receipts for key in caught):
        return None
    ends = [min(t for t, _ in receipts[key]) for key in caught]
    caught_set = set(caught)
    waiting = [k for k in keys if k not in caught_set and not any(t < fault.at for t, _ in receipts.get(k, []))]
    if waiting:
        ok_after = [t for k in waiting for t, ok in receipts.get(k, []) if ok and t >= fault.at]
        if not ok_after:
            return None
        ends.append(min(ok_after))
    if not ends:
        return None
    return max(0.0, max(ends) - fault.origin)


@dataclass
class Row:
    """One line of the chaos table."""

    scenario: str
    calls: int
    answered_once: int  # calls the client got exactly one answer for
    lost: int  # calls the client never got an answer for
    duplicated: int  # calls the client got more than one answer for
    errors: int  # calls answered once, with an error (a timeout, a tool error): answered, but not a result
    reruns: int  # backend runs beyond one per call (a call caught mid-run runs again: at least once)
    caught: int  # calls running when a fault struck (summed over the faults)
    faults: list[Fault] = field(default_factory=list)
    planned_faults: int = 1  # how many the scenario meant to inject (fewer if its calls ran out first)
    recovery: list[float | None] = field(default_factory=list)
    recovery_from: str = "fault"
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what one scenario measures beyond the common columns

    @property
    def recovered(self) -> bool:
        return bool(self.recovery) and all(r is not None for r in self.recovery)

    def summary(self) -> str:
        """One line for an assertion message."""
        recovery = ", ".join("never" if r is None else f"{r:.1f}s" for r in self.recovery)
        return (f"{self.scenario}: {self.calls} calls, {self.answered_once} answered once, {self.lost} lost, "
                f"{self.duplicated} duplicated, {self.errors} errors, {self.reruns} re-runs, {self.caught} caught by "
                f"{len(self.faults)} of {self.planned_faults} fault(s), recovery {recovery or '-'} "
                f"(from {self.recovery_from}); " + "; ".join(self.notes))


def tally_row(scenario: str, tally: Tally, ledger: Path, faults: list[Fault], recovery_from: str,
              elapsed_s: float, notes: list[str], planned_faults: int = 1) -> Row:
    """Count what the client received against what it asked for, and what the backends ran."""
    receipts = tally.snapshot()
    runs = read_ledger(ledger)
    counts = [len(receipts.get(k, [])) for k in tally.keys]
    errors = sum(1 for k in tally.keys if len(receipts.get(k, [])) == 1 and not receipts[k][0][1])
    caught = sum(len(caught_by(f, runs, receipts)) for f in faults)
    if tally.error_kinds:
        notes = [*notes, "errors: " + "; ".join(f"{n}x {text!r}" for text, n in tally.error_kinds.most_common(3))]
    if tally.unexpected:
        notes = [*notes, f"{len(tally.unexpected)} answer(s) for calls never made"]
    return Row(
        scenario=scenario,
        calls=len(tally.keys),
        answered_once=sum(1 for c in counts if c == 1),
        lost=sum(1 for c in counts if c == 0),
        duplicated=sum(1 for c in counts if c > 1),
        errors=errors,
        reruns=sum(max(0, len(runs.get(k, [])) - 1) for k in tally.keys),
        caught=caught,
        faults=faults,
        planned_faults=planned_faults,
        recovery=[recovery_s(f, tally.keys, runs, receipts) for f in faults],
        recovery_from=recovery_from,
        elapsed_s=elapsed_s,
        notes=notes,
    )
