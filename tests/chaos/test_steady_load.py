"""RELIABILITY.md 2.8, L1: steady load with no faults.

Two nodes of four threads run 10,000 witness tasks (1,000 at small size) that
four client threads submit one call at a time, each as fast as the coordinator
answers: a closed loop, so the load stays steady instead of piling up. Every
task must succeed exactly once (one witness line each, no second lease), and
the coordinator's fds and RSS must come back to within 10 % of the baseline.

The baseline is taken after a warm-up of a few hundred tasks (gRPC channels,
thread pools and SQLite connections exist by then), not at a cold start.
What is left to grow is SQLite's page cache, which holds at most 2 MiB per
connection (the default ``cache_size``): measured at full size it adds ~4 MiB
over the first ~5,000 tasks and then stays flat (30,000 tasks in six rounds:
+4.1 MiB after the first, +0.9 MiB over the other five), so the 10 % (~5.7
MiB) is held strictly, without the checker's usual few MiB of slack.

Dispatch latency is *submit commit -> handler start on a node*: from the
task's ``created_at`` (the coordinator's wall clock, stamped in the committing
transaction) to the witness line the handler writes first thing. It splits at
the coordinator's ``lease.granted`` event into the wait for a lease and the
delivery to the node. Witness and event times are ``time.monotonic()``, the
same clock in every process on Linux; one offset turns them into wall time.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.checker import Expect
from tests.chaos.cluster import ChaosCluster
from tests.chaos.conftest import Scenario, Size
from tests.chaos.ledger import LoadClient
from tests.chaos.resources import Usage
from tests.chaos.test_process_faults import witness
from tests.harness import wait_until

pytestmark = pytest.mark.chaos

NODES = ("a", "b")
THREADS = 4
CLIENT_THREADS = 4


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float], unit: float = 1000.0) -> str:
    """``p50 / p99 / max`` of ``values`` in milliseconds (by default)."""
    return " / ".join(
        f"{v * unit:.1f}" for v in (percentile(values, 0.5), percentile(values, 0.99), max(values))
    )


def task_times(db: Path) -> dict[str, tuple[float, float | None]]:
    """``(created_at, finished_at)`` of every stored task (coordinator wall clock), by id."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT id, created_at, finished_at FROM tasks").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@dataclass(frozen=True)
class Dispatch:
    """Per task, its first attempt's times in seconds (see the module docstring)."""

    total_s: list[float]
    """Submit commit -> handler start."""
    queued_s: list[float]
    """Submit commit -> ``lease.granted``."""
    delivered_s: list[float]
    """``lease.granted`` -> handler start."""


def dispatch_times(cluster: ChaosCluster, task_ids: set[str]) -> Dispatch:
    """The dispatch latency of each of ``task_ids`` that ran."""
    created = {t: c for t, (c, _) in task_times(cluster.db).items() if t in task_ids}
    granted = {
        e["task_id"]: float(e["mono"])
        for e in cluster.events(frozenset({"lease.granted"}))
        if e["attempt"] == 1 and e["task_id"] in created
    }
    started: dict[str, float] = {}
    for execution in cluster.executions():
        if execution.attempt == 1 and execution.task_id in created:
            started.setdefault(execution.task_id, execution.ts)
    wall = time.time() - time.monotonic()  # monotonic -> wall clock
    return Dispatch(
        total_s=[started[t] + wall - created[t] for t in started],
        queued_s=[granted[t] + wall - created[t] for t in granted],
        delivered_s=[started[t] - granted[t] for t in started if t in granted],
    )


def redelivered(cluster: ChaosCluster) -> list[tuple[str, int]]:
    """(task_id, attempt) of every lease beyond a task's first."""
    return [
        (e["task_id"], e["attempt"])
        for e in cluster.events(frozenset({"lease.granted"}))
        if e["attempt"] > 1
    ]


class UsageSampler:
    """Samples the coordinator's fds and RSS on a thread, to report the peak under load."""

    def __init__(self, cluster: ChaosCluster, period_s: float = 0.25) -> None:
        self.cluster = cluster
        self.period_s = period_s
        self.samples: list[Usage] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):  # the sampling period, not a synchronisation
            with contextlib.suppress(OSError):  # the coordinator died: the checker says so
                self.samples.append(self.cluster.usage())

    @property
    def peak(self) -> Usage:
        """The largest fd count and RSS seen (not necessarily at the same moment)."""
        return Usage(max(s.fds for s in self.samples), max(s.rss_kib for s in self.samples))

    def __enter__(self) -> UsageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.scenario_id("L1")
@pytest.mark.timeout(600)
def test_l1_steady_load(scenario: Scenario, size: Size) -> None:
    """10,000 no-op witness tasks on 2 nodes x 4 threads: each runs once, nothing leaks."""
    total = size.pick(1_000, 10_000)
    warm_up = size.pick(200, 1_000)
    cluster = scenario.start()
    cold = cluster.usage()
    for node in NODES:
        cluster.add_node(node, threads=THREADS)
    cluster.wait_nodes(*NODES)

    LoadClient(
        cluster.address, scenario.ledger, witness(), total=warm_up, prefix="l1-warm",
        threads=CLIENT_THREADS,
    ).start().join(120)  # fmt: skip
    wait_until(lambda: len(cluster.executions()) >= warm_up, 60, what="the warm-up tasks run")
    baseline = cluster.mark_baseline()
    warm_ids = set(scenario.ledger.acknowledged().values())
    warm_calls = len(scenario.ledger.calls)

    started = time.monotonic()
    with UsageSampler(cluster) as sampler:
        LoadClient(
            cluster.address, scenario.ledger, witness(), total=total, prefix="l1",
            threads=CLIENT_THREADS,
        ).start().join(size.pick(120, 480))  # fmt: skip
        submit_s = time.monotonic() - started
        wait_until(
            lambda: len(cluster.executions()) >= warm_up + total,
            60,
            interval_s=0.1,
            what="every task run",
        )
    load_ids = set(scenario.ledger.acknowledged().values()) - warm_ids

    times = task_times(cluster.db)
    finished = [end for t in load_ids if (end := times[t][1]) is not None]
    span_s = max(finished) - min(times[t][0] for t in load_ids)
    calls = [d for d, _ in scenario.ledger.calls[warm_calls:]]
    dispatch = dispatch_times(cluster, load_ids)
    scenario.note(
        f"{len(load_ids)} tasks in {span_s:.2f} s (first commit to last finish): "
        f"{len(load_ids) / span_s:.0f} tasks/s; submits {len(load_ids) / submit_s:.0f}/s "
        f"from {CLIENT_THREADS} threads, call p50/p99/max {spread(calls)} ms"
    )
    scenario.note(
        f"dispatch (submit commit -> start) p50/p99/max {spread(dispatch.total_s)} ms; "
        f"commit -> lease {spread(dispatch.queued_s)} ms, lease -> start "
        f"{spread(dispatch.delivered_s)} ms"
    )
    scenario.note(
        f"coordinator: cold {cold}; baseline after {warm_up} warm-up tasks {baseline}; "
        f"peak under load {sampler.peak}"
    )

    extra = []
    runs = Counter(e.task_id for e in cluster.executions())
    not_once = {t: runs[t] for t in load_ids | warm_ids if runs[t] != 1}
    if not_once:
        extra.append(f"tasks not run exactly once (task: runs): {dict(list(not_once.items())[:3])}")
    again = redelivered(cluster)
    if again:
        extra.append(f"{len(again)} leases redelivered without a fault, e.g. {again[:3]}")
    scenario.finish(Expect(dup_bound=0, fd_slack=0, rss_slack_kib=0), extra)
