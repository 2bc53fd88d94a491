"""``make bench``: DTQ's speed on this machine, P1-P5 of issue 5, printed as one table.

Brings up its own coordinators and worker nodes (real processes on loopback,
SQLite with synchronous=FULL) and reports each figure's median and spread over
several rounds, next to its target:

- P1 throughput, P2 round trip, P3 enqueue: see :mod:`bench.basics`.
- P4 depth (dispatch rate with a deep queue, RSS, restart time): :mod:`bench.depth`.
- P5 fleet (coordinator CPU with hundreds of heartbeating nodes, dead-node
  detection): :mod:`bench.fleet`.

Targets relative to the peers (Huey, Dramatiq, Celery) are judged by
``make bench-peers``. Speed is never asserted: the numbers go to stdout and a
JSON file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import basics, concurrent, postgres
from bench.cluster import ROOT
from bench.depth import DepthPlan, depth
from bench.fleet import FleetPlan, fleet
from bench.report import Figure, Target, figures_table, write_json

PARTS = ("P1", "P2", "P3", "P4", "P5")


@dataclass(frozen=True)
class Size:
    """How big each figure's workload is."""

    tasks: int
    latency_samples: int
    enqueue_tasks: int
    rounds: int
    depth: DepthPlan
    fleet: FleetPlan


SIZES = {
    "full": Size(
        tasks=10_000, latency_samples=500, enqueue_tasks=20_000, rounds=3,
        depth=DepthPlan(depth=1_000_000, window=10_000, rounds=3),
        fleet=FleetPlan(nodes=500, victims=3, window_s=20.0, rounds=3, heartbeat_timeout_s=10.0),
    ),
    "small": Size(
        tasks=300, latency_samples=30, enqueue_tasks=500, rounds=1,
        depth=DepthPlan(depth=20_000, window=2_000, rounds=1),
        fleet=FleetPlan(nodes=50, victims=1, window_s=5.0, rounds=1, heartbeat_timeout_s=3.0),
    ),
}  # fmt: skip


def basic_figures(size: Size, parts: set[str]) -> list[Figure]:
    """P1-P3, each round on fresh clusters."""
    p1 = Figure(
        f"P1 end-to-end tasks/s (2 nodes x 4 threads, prefetch {basics.PREFETCH})",
        Target.relative(">= 3 x best peer: see bench-peers"),
    )
    fixed = Figure(
        f"P1 end-to-end tasks/s, fixed --prefetch {basics.FIXED_PREFETCH}",
        Target.relative("information"),
    )
    spread = Figure(
        f"P1 end-to-end tasks/s over {basics.MANY_QUEUES:,} queues", Target.relative("information")
    )
    keyed = Figure(
        f"P1 end-to-end tasks/s over {basics.MANY_RATE_KEYS:,} rate keys",
        Target.relative("information"),
    )
    p50 = Figure("P2 round trip p50 ms", Target.relative("<= best peer's p50: see bench-peers"))
    p99 = Figure("P2 round trip p99 ms", Target.at_most(3.0, "<= 3 ms"))
    batched = Figure(
        "P3 batched enqueue tasks/s (submit_many, acks)", Target.at_least(50_000, ">= 50,000/s")
    )
    batched_whole = Figure(
        "P3 batched enqueue tasks/s, whole tasks answered", Target.relative("information")
    )
    single = Figure(
        "P3 one-call-per-task enqueue tasks/s",
        Target.relative(">= best peer's one-call rate: see bench-peers"),
    )
    pipelined = Figure(
        "P3 pipelined one-at-a-time enqueue tasks/s (SubmitTaskStream)",
        Target.relative(">= best peer's one-call rate: see bench-peers"),
    )
    raw = Figure(
        f"P3 raw grpc.aio unary calls/s ({concurrent.CONCURRENCY} in flight)",
        Target.relative("reference for the next row"),
    )
    in_flight = Figure(
        f"P3 single submits/s, {concurrent.CONCURRENCY} in flight", Target.relative("")
    )
    for _ in range(size.rounds):
        if "P1" in parts:
            p1.values.append(basics.throughput(size.tasks))
            fixed.values.append(basics.throughput(size.tasks, prefetch=basics.FIXED_PREFETCH))
            spread.values.append(basics.throughput(size.tasks, queues=basics.MANY_QUEUES))
            keyed.values.append(basics.throughput(size.tasks, rate_keys=basics.MANY_RATE_KEYS))
        if "P2" in parts:
            median, tail = basics.latency(size.latency_samples)
            p50.values.append(median)
            p99.values.append(tail)
        if "P3" in parts:
            rate, whole, one_by_one = basics.enqueue(size.enqueue_tasks)
            batched.values.append(rate)
            batched_whole.values.append(whole)
            single.values.append(one_by_one)
            pipelined.values.append(basics.pipelined_enqueue(size.enqueue_tasks))
            concurrent_tasks = max(10 * concurrent.CONCURRENCY, size.enqueue_tasks // 4)
            raw.values.append(concurrent.raw_rate(concurrent_tasks))
            in_flight.values.append(concurrent.submit_rate(concurrent_tasks))
    if raw.values:
        floor = 0.8 * statistics.median(raw.values)
        in_flight.target = Target.at_least(floor, f">= 80% of raw = {floor:,.0f}")
    figures = (
        p1,
        fixed,
        spread,
        keyed,
        p50,
        p99,
        batched,
        batched_whole,
        single,
        pipelined,
        raw,
        in_flight,
    )
    return [f for f in figures if f.name[:2] in parts]


def depth_figures(plan: DepthPlan) -> tuple[list[Figure], dict[str, object]]:
    """P4 rows and its raw numbers."""
    result = depth(plan)
    empty = Figure(
        "P4 dispatch tasks/s, empty queue", Target.relative("reference for the next row")
    )
    empty.values = result.empty_rates
    floor = 0.8 * statistics.median(result.empty_rates)
    deep = Figure(
        f"P4 dispatch tasks/s, {plan.depth:,} queued",
        Target.at_least(floor, f">= 80% of empty = {floor:,.0f}"),
        values=result.deep_rates,
    )
    rss = Figure(
        "P4 coordinator peak RSS MiB (worst)",
        Target.at_most(1024, "<= 1,024 MiB"),
        values=result.peak_rss_mib,
        judge=max,
    )
    restart = Figure(
        "P4 kill -9 + restart to acked submit s (worst)",
        Target.at_most(10, "<= 10 s"),
        values=result.restart_s,
        judge=max,
    )
    fill = Figure(
        f"P4 fill {plan.depth:,} tasks (batched) tasks/s",
        Target.relative("- (information)"),
        values=[result.fill_rate],
    )
    return [empty, deep, rss, restart, fill], asdict(result)


def fleet_figures(plan: FleetPlan) -> tuple[list[Figure], dict[str, object]]:
    """P5 rows and its raw numbers."""
    result = fleet(plan)
    bound = plan.heartbeat_timeout_s + 1
    rows = [
        Figure(
            f"P5 coordinator CPU % of one core ({plan.nodes} nodes, 1 s heartbeats)",
            Target.at_most(25, "<= 25%"),
            values=result.cpu_percent,
        ),
        Figure(
            f"P5 dead-node detection s (timeout {plan.heartbeat_timeout_s:g} s, worst)",
            Target.at_most(bound, f"<= {bound:g} s"),
            values=result.detection_s,
            judge=max,
        ),
        Figure(
            "P5 live nodes not ACTIVE at the end",
            Target.at_most(0, "0"),
            values=[float(result.false_deaths)],
        ),
    ]
    return rows, asdict(result)


def main() -> int:
    """Run the selected parts, print the table, write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--json", type=Path, help="raw numbers (default .bench/results[-postgres].json)"
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help="comma-separated parts to run (default: all)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="P1-P3 with every coordinator on PostgreSQL (a server started for the run)",
    )
    args = parser.parse_args()
    if args.json is None:
        args.json = ROOT / ".bench" / ("results-postgres.json" if args.postgres else "results.json")
    size = SIZES[args.size]
    parts = {p.strip().upper() for p in args.only.split(",")}
    if args.postgres:
        parts &= {"P1", "P2", "P3"}  # P4 restarts on its data, P5 stores nothing
        with postgres.server():
            return report(args, size, parts, "PostgreSQL")
    return report(args, size, parts, "SQLite")


def report(args: argparse.Namespace, size: Size, parts: set[str], store: str) -> int:
    """Run ``parts``, print the table, write the JSON file."""
    started = time.perf_counter()
    figures = basic_figures(size, parts)
    raw: dict[str, object] = {}
    if "P4" in parts:
        rows, raw["P4"] = depth_figures(size.depth)
        figures += rows
    if "P5" in parts:
        rows, raw["P5"] = fleet_figures(size.fleet)
        figures += rows
    elapsed_s = time.perf_counter() - started
    if store == "PostgreSQL":
        raw["postgres_databases"] = postgres.databases_created()
    print(
        f"\nDTQ benchmark ({args.size}: {size.tasks:,} tasks, {size.rounds} round(s);"
        f" {store}; {os.cpu_count()} CPUs; {elapsed_s:.0f} s)"
    )
    print(figures_table(figures))
    write_json(
        args.json,
        {
            "size": args.size,
            "store": store,
            "cpus": os.cpu_count(),
            "elapsed_s": elapsed_s,
            "results": {f.name: f.summary() for f in figures},
            "raw": raw,
        },
    )
    print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
