"""The fault scenarios: each `scenario(size, ...) -> Row` starts its own broker (`Cluster`), runs `size` calls
through it, injects its fault while calls are running, and counts what the client received.

Faults are spaced: the next one strikes once its share of the calls is answered AND every call the previous
fault caught has been answered, so each fault's recovery is measured alone. A batch that ends before all its
faults struck reports fewer faults (the tests assert the count). Calls take `seconds` on the backend so a
batch lasts long enough for its faults at a moderate rate (a few hundred calls/s: the point is what a fault
does, not how fast the broker is, and the box is shared).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from tests.chaos.cluster import BatchReader, Cluster, ResumingClient, Trickle, registered
from tests.chaos.measure import Fault, Row, Tally, caught_by, read_ledger, tally_row
from tests.faultproxy import FaultProxy

STALL_S = 60.0
"""A batch with no new answer for this long is taken as stuck (every recovery measured is well below it);
the short runs of tests/test_chaos.py give up sooner (`stall_s`)."""


def _start_batch(cluster: Cluster, prefix: str, size: int, seconds: float,
                 timeout_s: float) -> tuple[Tally, BatchReader]:
    keys = [f"{prefix}{i}" for i in range(size)]
    tally = Tally(keys)
    reader = BatchReader(cluster.http_url(), cluster.submit_batch(keys, seconds), tally, timeout_s)
    reader.start()
    return tally, reader


def _running(cluster: Cluster, tally: Tally) -> Counter[int]:
    """Calls running now (on the ledger, not answered), per worker pid."""
    receipts = tally.snapshot()
    return Counter(runs[-1].worker for key, runs in read_ledger(cluster.ledger).items() if key not in receipts)


def _wait_turn(cluster: Cluster, tally: Tally, reader: BatchReader | Trickle, fraction: float, previous: Fault | None,
               timeout: float, running_on: Callable[[Counter[int]], bool] = lambda counts: sum(counts.values()) > 0,
               stall_s: float = STALL_S) -> bool:
    """Wait until `fraction` of the calls are answered, the previous fault's caught calls are answered, and calls
    are running where the fault will strike. False if the batch ended (or the wait timed out) first."""

    def stalled() -> bool:
        return time.time() - tally.last_at > stall_s

    def due() -> bool:
        if reader.finished.is_set() or stalled():
            return True
        if tally.answered() < fraction * len(tally.keys):
            return False
        if previous is not None and tally.unanswered(caught_by(previous, read_ledger(cluster.ledger),
                                                                tally.snapshot())):
            return False
        return running_on(_running(cluster, tally))

    return cluster.wait(due, timeout) and not reader.finished.is_set() and not stalled()


def _finish(cluster: Cluster, reader: BatchReader | Trickle, timeout: float, stall_s: float = STALL_S) -> list[str]:
    tally = reader.tally
    cluster.wait(lambda: reader.finished.is_set() or time.time() - tally.last_at > stall_s, timeout, poll=0.2)
    reader.stop()
    reader.join(30)
    notes = [f"batch {reader.final_state or 'did not end'}"]
    if reader.reconnects:
        notes.append(f"results stream resumed {reader.reconnects}x")
    return notes


def _budget(size: int, seconds: float, parallel: int, faults: int, per_fault_s: float) -> float:
    """A generous bound on a batch scenario's run time: the calls at a quarter of full speed, plus the faults."""
    return 60 + 4 * size * seconds / parallel + faults * per_fault_s


# ------------------------------------------------------------------ worker SIGKILL
def worker_sigkill(size: int = 10_000, kills: int = 3, seconds: float = 0.1, stall_s: float = STALL_S) -> Row:
    """Two workers; `kills` times, the one running the most calls is SIGKILLed and a new one started (the
    supervisor). Its calls come back through its lease: a live worker restores them once its heartbeat expires."""
    started = time.time()
    with Cluster(workers=2) as cluster:
        budget = _budget(size, seconds, 2 * cluster.concurrency, kills, 60)
        tally, reader = _start_batch(cluster, "w", size, seconds, budget)
        faults: list[Fault] = []
        for k in range(kills):
            if not _wait_turn(cluster, tally, reader, (k + 1) / (kills + 1), faults[-1] if faults else None, budget,
                              stall_s=stall_s):
                break
            busiest = _running(cluster, tally).most_common(1)[0][0]
            victim = next((w for w in cluster.live_workers() if w.popen.pid == busiest), cluster.live_workers()[0])
            now = time.time()
            cluster.kill_worker(victim)
            faults.append(Fault(now, now, f"SIGKILL worker {victim.popen.pid}"))
            cluster.start_worker()
        notes = _finish(cluster, reader, budget, stall_s)
        return tally_row(f"worker SIGKILL x{kills}", tally, cluster.ledger, faults, "fault", time.time() - started,
                         notes + cluster.notes, planned_faults=kills)


# ------------------------------------------------------------------ web SIGKILL
def web_sigkill(size: int = 3_000, kills: int = 3, clients: int = 30, seconds: float = 0.2,
                stall_s: float = STALL_S) -> Row:
    """Two web processes; WebSocket clients on one of them send calls, and it is SIGKILLed while they run.
    Each client reconnects to the OTHER web process with its `Mcp-Session-Id` and must get every answer once;
    the killed process is started again on its port (the supervisor) and is the next one killed."""
    started = time.time()
    per_round = max(1, size // (clients * kills))
    keys = [f"c{c}.{k}.{n}" for k in range(kills) for c in range(clients) for n in range(per_round)]
    tally = Tally(keys)
    faults: list[Fault] = []
    with Cluster(workers=2, webs=2) as cluster:
        urls = [cluster.stack.ws_url(i) for i in range(2)]
        fleet = [ResumingClient(urls[0], tally) for _ in range(clients)]
        try:
            on = 0
            for k in range(kills):
                rounds = {c: [f"c{c}.{k}.{n}" for n in range(per_round)] for c in range(clients)}
                if not cluster.wait(lambda: all(c.connected.is_set() for c in fleet), 30):
                    break
                for c, client in enumerate(fleet):
                    client.call(rounds[c], seconds)
                # the fault must find calls the broker took (on record in Redis) and some of them running
                cluster.wait(lambda: all(registered(cluster, c, rounds[i]) for i, c in enumerate(fleet))  # noqa: B023
                             and sum(_running(cluster, tally).values()) > 0, 30, poll=0.02)
                for client in fleet:
                    client.target = urls[1 - on]
                now = time.time()
                cluster.kill_web(on)
                faults.append(Fault(now, now, f"SIGKILL web {k + 1}"))
                cluster.restart_web(on)
                round_keys = [key for ks in rounds.values() for key in ks]
                cluster.wait(lambda: not tally.unanswered(round_keys)  # noqa: B023
                             or time.time() - tally.last_at > stall_s, 120, poll=0.2)
                on = 1 - on
            cluster.wait(lambda: not tally.unanswered() or time.time() - tally.last_at > stall_s, 120, poll=0.2)
            resumed = sum(c.reconnects for c in fleet)
        finally:
            for client in fleet:
                client.close()
        notes = [f"{clients} clients, {resumed} resumptions on the other web process"]
        return tally_row(f"web SIGKILL x{kills}, clients resume elsewhere", tally, cluster.ledger, faults, "fault",
                         time.time() - started, notes + cluster.notes, planned_faults=kills)


# ------------------------------------------------------------------ Redis SIGKILL + restart (AOF)
def redis_sigkill(size: int = 10_000, kills: int = 3, down_s: float = 3.0, seconds: float = 0.1,
                  stall_s: float = STALL_S) -> Row:
    """Redis (AOF on, `appendfsync everysec`) is SIGKILLed `kills` times in one batch and started again on the
    same port after `down_s`. Recovery is measured from the restart."""
    started = time.time()
    with Cluster(workers=2) as cluster:
        budget = _budget(size, seconds, 2 * cluster.concurrency, kills, 90)
        tally, reader = _start_batch(cluster, "r", size, seconds, budget)
        faults: list[Fault] = []
        for k in range(kills):
            if not _wait_turn(cluster, tally, reader, (k + 1) / (kills + 1), faults[-1] if faults else None, budget,
                              stall_s=stall_s):
                break
            now = time.time()
            cluster.redis_server.kill()
            time.sleep(down_s)
            cluster.redis_server.restart()
            faults.append(Fault(now, time.time(), f"SIGKILL Redis, restart after {down_s:g}s"))
        notes = _finish(cluster, reader, budget, stall_s)
        return tally_row(f"Redis SIGKILL + restart (AOF) x{kills}", tally, cluster.ledger, faults, "restart",
                         time.time() - started, notes + cluster.notes, planned_faults=kills)


# ------------------------------------------------------------------ half-open partition of a worker
def worker_partition(size: int = 5_000, per_s: float = 100, hold_s: float = 30.0, seconds: float = 0.25,
                     after_s: float = 60, stall_s: float = STALL_S, warmup: float = 0.1) -> Row:
    """Two workers, one reaching Redis through a fault proxy, under steady traffic (calls arriving at `per_s` a
    second, as small batches); once `warmup` of `size` calls are answered the proxy goes silent both ways
    (sockets open, nothing flows: a half-open link) for `hold_s`, then heals. The other worker must take over
    the partitioned one's calls; the partitioned worker must notice (with `hold_s` past its lease: exit
    non-zero, so that its supervisor restarts it) and it, or its restart (behind the same proxy), must serve
    again after the heal. Traffic goes on until all `size` calls are made or `after_s` after that."""
    started = time.time()
    with Cluster(workers=1) as cluster, FaultProxy.for_url(cluster.redis_server.url) as proxy:
        cut = cluster.start_worker(env={"REDIS_URL": proxy.url_for(cluster.redis_server.url)})
        budget = 120 + size / per_s + hold_s
        tally = Tally([f"p{i}" for i in range(size)])
        reader = Trickle(cluster, tally, seconds, per_s, budget)
        reader.start()
        faults: list[Fault] = []
        proxied = cluster.env_of(cut)
        back_s: float | None = None
        healed_at = 0.0

        def serving_again() -> bool:
            """The partitioned worker, or the supervisor's restart of it (also behind the proxy), ran a call."""
            pids = cluster.pids_with(proxied)
            return any(r.worker in pids and r.at > healed_at for runs in read_ledger(cluster.ledger).values()
                       for r in runs)

        if _wait_turn(cluster, tally, reader, warmup, None, budget,
                      running_on=lambda counts: counts[cut.popen.pid] > 0,
                      stall_s=stall_s):
            now = time.time()
            proxy.partition()
            faults.append(Fault(now, now, f"half-open partition of worker {cut.popen.pid} for {hold_s:g}s"))
            cluster.wait(lambda: False, hold_s)
            proxy.heal()
            healed_at = time.time()
            if cluster.wait(lambda: serving_again() or reader.submitted >= size, budget) and serving_again():
                back_s = time.time() - healed_at
                cluster.wait(lambda: reader.submitted >= size, after_s)
        reader.enough()
        notes = _finish(cluster, reader, budget, stall_s)
        # the expectation: a worker whose link is dead past its lease exits non-zero (its supervisor
        # restarts it) instead of sitting wedged
        exits = [(code, at - faults[0].at) for pid, code, at in cluster.exits
                 if faults and pid == cut.popen.pid and faults[0].at <= at <= healed_at]
        noticed_s = exits[0][1] if exits and exits[0][0] else None
        if faults:
            notes.append(f"partitioned worker exited ({exits[0][0]}) {exits[0][1]:.1f}s into the partition" if exits
                         else "partitioned worker did not exit during the partition")
            notes.append("partitioned worker never served again after the heal" if back_s is None
                         else f"partitioned worker serving again {back_s:.1f}s after the heal")
        row = tally_row("half-open partition of a worker", tally, cluster.ledger, faults, "fault",
                        time.time() - started, notes + cluster.notes)
        row.extra["back_in_service_s"] = back_s
        row.extra["noticed_s"] = noticed_s
        return row


# ------------------------------------------------------------------ hung backend (SIGSTOP) under load
def hung_backend(size: int = 3_000, per_s: float = 75, seconds: float = 0.1, timeout_s: float = 10,
                 after_s: float = 10, stall_s: float = STALL_S, warmup: float = 0.1) -> Row:
    """One worker under steady traffic (calls arriving at `per_s` a second, as small batches); once `warmup` of
    `size` calls are answered its backend is SIGSTOPped (alive, silent: a hung server). The worker must notice
    (calls time out, a ping goes unanswered), restart the backend and run the calls that keep coming on the
    fresh one. Traffic goes on until all `size` calls are made, or until `after_s` after the first call ran on
    a fresh backend (so a short run is not all hang), or the run stalls. Calls caught in the hang, or queued
    behind it past their time limit, are answered with a timeout (counted under errors), never lost."""
    started = time.time()
    with Cluster(workers=1, timeout_s=timeout_s) as cluster:
        budget = 120 + size / per_s
        tally = Tally([f"h{i}" for i in range(size)])
        traffic = Trickle(cluster, tally, seconds, per_s, budget)
        traffic.start()
        faults: list[Fault] = []
        stopped: int | None = None
        if _wait_turn(cluster, tally, traffic, warmup, None, budget, stall_s=stall_s):
            backend = cluster.backend_of(cluster.live_workers()[0])
            if backend is not None:
                now = time.time()
                backend.suspend()
                stopped = backend.pid
                faults.append(Fault(now, now, f"SIGSTOP backend {backend.pid}"))

        def fresh_runs() -> list[float]:
            return [r.at for runs in read_ledger(cluster.ledger).values() for r in runs
                    if faults and r.pid != stopped and r.at > faults[0].at]

        if faults and cluster.wait(lambda: bool(fresh_runs()) or traffic.submitted >= size
                                   or time.time() - tally.last_at > stall_s, budget) and fresh_runs():
            cluster.wait(lambda: traffic.submitted >= size, after_s)
        traffic.enough()
        notes = _finish(cluster, traffic, budget, stall_s)
        fresh = fresh_runs()
        restarted_s = min(fresh) - faults[0].at if fresh else None
        if faults:
            notes.append("backend never restarted" if restarted_s is None
                         else f"a fresh backend ran calls {restarted_s:.1f}s after the SIGSTOP")
        row = tally_row("hung backend (SIGSTOP) under load", tally, cluster.ledger, faults, "fault",
                        time.time() - started, notes + cluster.notes)
        row.extra["backend_restarted_s"] = restarted_s
        return row


# `make chaos`: the long versions (a few minutes in all); tests/test_chaos.py runs the same functions small
LONG: dict[str, tuple[Callable[..., Row], dict[str, float]]] = {
    "worker-kill": (worker_sigkill, {"size": 10_000, "kills": 3, "seconds": 0.25}),
    "web-kill": (web_sigkill, {"size": 3_000, "kills": 3, "clients": 30, "seconds": 0.2}),
    "redis-kill": (redis_sigkill, {"size": 10_000, "kills": 3, "down_s": 3.0, "seconds": 0.1}),
    "partition": (worker_partition, {"size": 5_000, "per_s": 100, "hold_s": 30.0, "seconds": 0.25,
                                     "after_s": 60}),
    "hung-backend": (hung_backend, {"size": 3_000, "per_s": 75, "seconds": 0.1, "timeout_s": 10, "after_s": 60}),
}
