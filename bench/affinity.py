"""The coordinator on one CPU against the scheduler's choice: what thread hand-offs cost.

``python -m bench.affinity [--size small|full] [--json F]`` (``make bench-affinity``)

Every message through the coordinator changes threads several times: gRPC's
event-engine threads read and write the sockets, grpc.aio's poller thread wakes
the event loop, the loop hands each commit to the store's writer thread and is
woken when it is done. Waking a thread that sleeps on the other CPU takes an
inter-processor interrupt, which a virtual machine pays with an exit: on the
2-vCPU machines of issue 5 that costs several times a wake-up on the same CPU
(the first row). This runs P1, P2, P3 pipelined and P3 with 64 in flight (the
workloads of :mod:`bench.basics` and :mod:`bench.concurrent`) with the
coordinator left to the scheduler and with every thread of it on one CPU
(``taskset``), alternately in each round, and prints both. Nothing is judged:
the rows say what pinning a coordinator buys and costs on this machine.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import basics, concurrent
from bench.cluster import ROOT
from bench.report import fmt, spread, table, write_json


@dataclass(frozen=True)
class Size:
    """How much each round does."""

    rounds: int
    wakeups: int
    tasks: int
    """P1's and P3 pipelined's tasks."""
    latency_samples: int
    in_flight_calls: int


SIZES = {
    "small": Size(rounds=1, wakeups=2_000, tasks=2_000, latency_samples=100, in_flight_calls=1_000),
    "full": Size(
        rounds=5, wakeups=20_000, tasks=20_000, latency_samples=1_000, in_flight_calls=10_000
    ),
}


@dataclass
class Pair:
    """One figure measured both ways, a value per round each."""

    name: str
    higher_is_better: bool
    free: list[float] = field(default_factory=list)
    pinned: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        free, pinned = statistics.median(self.free), statistics.median(self.pinned)
        change = (pinned / free - 1) * 100
        better = change > 0 if self.higher_is_better else change < 0
        verdict = "better" if better else "worse"
        return [
            self.name,
            fmt(free),
            spread(self.free),
            fmt(pinned),
            spread(self.pinned),
            f"{change:+.0f}% ({verdict})",
        ]


def wakeup_us(rounds: int, cpus: tuple[int, int]) -> float:
    """Microseconds for one thread to wake another, the two threads on ``cpus``.

    Two threads pass a token back and forth through queues ``rounds`` times; each
    pins itself first (Linux applies ``sched_setaffinity(0, ...)`` to the calling
    thread only).
    """
    ping: queue.SimpleQueue[int] = queue.SimpleQueue()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    def other() -> None:
        os.sched_setaffinity(0, {cpus[1]})
        for _ in range(rounds):
            pong.put(ping.get())

    thread = threading.Thread(target=other)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        thread.start()
        started = time.perf_counter()
        for i in range(rounds):
            ping.put(i)
            pong.get()
        elapsed = time.perf_counter() - started
        thread.join()
    finally:
        os.sched_setaffinity(0, before)
    return elapsed / rounds / 2 * 1e6


def measure(size: Size, cpu: int, other: int) -> list[Pair]:
    """Every figure, free and pinned to ``cpu``, alternately within each round (``other``:
    the second CPU of the wake-up row)."""
    pinned = frozenset({cpu})
    pairs: list[tuple[Pair, Callable[[frozenset[int] | None], float]]] = [
        (
            Pair("P1 tasks/s (2 nodes, --prefetch auto)", True),
            lambda cpus: basics.throughput(size.tasks, coordinator_cpus=cpus),
        ),
        (
            Pair("P2 round trip p50 ms", False),
            lambda cpus: basics.latency(size.latency_samples, cpus)[0],
        ),
        (
            Pair("P3 pipelined submits/s", True),
            lambda cpus: basics.pipelined_enqueue(size.tasks, cpus),
        ),
        (
            Pair(f"P3 single submits/s, {concurrent.CONCURRENCY} in flight", True),
            lambda cpus: concurrent.submit_rate(size.in_flight_calls, cpus),
        ),
    ]
    wakeups = Pair("thread wake-up us (two CPUs / one CPU)", False)
    for _ in range(size.rounds):
        wakeups.free.append(wakeup_us(size.wakeups, (cpu, other)))
        wakeups.pinned.append(wakeup_us(size.wakeups, (cpu, cpu)))
        for pair, run in pairs:
            pair.free.append(run(None))
            pair.pinned.append(run(pinned))
    return [wakeups, *(pair for pair, _ in pairs)]


def main() -> int:
    """Measure, print the table, write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "affinity.json")
    args = parser.parse_args()
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(allowed) < 2 or shutil.which("taskset") is None:
        print("bench.affinity needs Linux, taskset and at least two CPUs: nothing measured")
        return 0
    size = SIZES[args.size]
    cpu = max(allowed)  # not CPU 0, where interrupts tend to land
    started = time.perf_counter()
    pairs = measure(size, cpu, other=min(allowed - {cpu}))
    elapsed_s = time.perf_counter() - started
    print(
        f"\nCoordinator on CPU {cpu} only against the scheduler's choice ({args.size}:"
        f" {size.rounds} round(s); {len(allowed)} CPUs; {elapsed_s:.0f} s)"
    )
    header = ["figure", "scheduler", "spread", "one CPU", "spread", "one CPU vs scheduler"]
    print(table([pair.row() for pair in pairs], header))
    write_json(
        args.json,
        {
            "size": args.size,
            "cpu": cpu,
            "cpus": len(allowed),
            "elapsed_s": elapsed_s,
            "results": {p.name: {"scheduler": p.free, "one_cpu": p.pinned} for p in pairs},
        },
    )
    print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
