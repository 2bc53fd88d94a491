"""``make bench-peers``: DTQ against Huey, Dramatiq and Celery, same workloads, one run.

Starts its own Redis (Debian's ``redis-server``, loopback, persistence off) and
runs, for each system in turn and for several rounds (the order rotates every
round, so drift in a shared machine's speed hits every system alike):

- P1: N no-op tasks taking an int and returning it, one client, two worker
  processes; tasks/s from the first submit to the last success.
- P2: one task at a time, submit -> result at the client; p50 and p99 ms.
- P3 one-call-per-task enqueue, no worker running; acknowledged submits/s.
- P3 pipelined (DTQ only): one thread submitting one task per call through a
  ``Client.submitter()`` (SubmitTaskStream), each acknowledged after its commit;
  its row compares it with the peers' one-call-per-task rates above.

DTQ runs in this process's venv (``bench.basics``); each peer runs in the peers'
venv (``bench.peers.driver`` as a subprocess), so DTQ never imports a peer.
The table gives each system's median, DTQ / best peer per figure (the median
of the per-round ratios, with their range), and the issue 5 targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import basics
from bench.cluster import ROOT
from bench.redis_server import redis_server
from bench.report import Verdict, fmt, table, write_json

PEERS = ("huey", "dramatiq", "celery")
DRIVER_TIMEOUT_S = 1800
DTQ_CONFIG = (
    "coordinator SQLite WAL synchronous=FULL (every task durable); P1 2 nodes x 4 threads"
    f" --prefetch {basics.PREFETCH} (the default), one Submitter.submit per task (pipelined),"
    " completion when the last task succeeded and the queue counts agree;"
    " P2 2 nodes x 4 threads, Client.submit_and_wait (one call); P3 Client.submit per task;"
    " P3 pipelined: one thread, one Client.submitter(), Submitter.submit per task"
)


@dataclass(frozen=True)
class Size:
    """Workload sizes for one invocation."""

    tasks: int
    samples: int
    enqueue: int
    rounds: int
    pipelined: int
    """DTQ's pipelined submits (as in ``make bench``: long enough to reach a steady rate)."""


SIZES = {
    "full": Size(tasks=10_000, samples=500, enqueue=2_000, rounds=3, pipelined=20_000),
    "small": Size(tasks=1_000, samples=50, enqueue=300, rounds=1, pipelined=1_000),
}


@dataclass(frozen=True)
class Metric:
    """One row of the comparison."""

    key: str
    label: str
    higher_is_better: bool
    target: str
    ratio_bound: float | None = None
    """DTQ / best peer must be at least (higher is better) or at most this; None: absolute."""
    absolute_bound: float | None = None
    """DTQ's own value must be at most this."""
    peer_key: str | None = None
    """The peers' figure DTQ's is compared with, when it is another one (None: ``key``)."""

    def of(self, system: str, numbers: dict[str, dict[str, float]]) -> float:
        """This row's value for ``system`` in one round's numbers."""
        key = self.key if system == "dtq" else self.peer_key or self.key
        return numbers[system][key]


METRICS = (
    Metric("p1_tasks_per_s", "P1 end-to-end tasks/s", True, "DTQ >= 3 x best", ratio_bound=3.0),
    Metric("p2_p50_ms", "P2 round trip p50 ms", False, "DTQ <= best", ratio_bound=1.0),
    Metric("p2_p99_ms", "P2 round trip p99 ms", False, "DTQ <= 3 ms", absolute_bound=3.0),
    # For reference: P3's target is the pipelined row (each task still acknowledged
    # after its commit), not one unary round trip per task.
    Metric("p3_single_per_s", "P3 one-call-per-task enqueue/s", True, "- (reference)"),
    Metric(
        "p3_pipelined_per_s",
        "P3 pipelined enqueue/s (DTQ SubmitTaskStream; peers: one call per task)",
        True,
        "DTQ >= best's one-call",
        1.0,
        peer_key="p3_single_per_s",
    ),
)
PEER_KEYS = tuple(dict.fromkeys(m.peer_key or m.key for m in METRICS))
"""The figures each peer's driver reports."""


def run_dtq(size: Size) -> dict[str, float]:
    """DTQ's numbers for one round."""
    p1 = basics.throughput(size.tasks)
    p50, p99 = basics.latency(size.samples)
    p3 = basics.single_enqueue(size.enqueue)
    pipelined = basics.pipelined_enqueue(size.pipelined)
    return {
        "p1_tasks_per_s": p1,
        "p2_p50_ms": p50,
        "p2_p99_ms": p99,
        "p3_single_per_s": p3,
        "p3_pipelined_per_s": pipelined,
    }


def run_peer(peer: str, size: Size, python: Path, redis_url: str) -> dict[str, Any]:
    """One peer's numbers for one round, from the driver in the peers' venv."""
    env = os.environ | {"BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(python), "-m", "bench.peers.driver", "--peer", peer, "--tasks", str(size.tasks),
         "--samples", str(size.samples), "--enqueue", str(size.enqueue)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=DRIVER_TIMEOUT_S,
        check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _best(values: dict[str, float], higher_is_better: bool) -> tuple[str, float]:
    pick = max if higher_is_better else min
    name = pick(values, key=lambda k: values[k])
    return name, values[name]


def comparison(
    rounds: list[dict[str, dict[str, float]]], peers: tuple[str, ...]
) -> tuple[str, dict[str, object]]:
    """The table (text) and its numbers: medians per system, per-round ratios to the best peer."""
    systems = ("dtq", *peers)
    rows = []
    summary: dict[str, object] = {}
    for m in METRICS:
        medians = {s: statistics.median(m.of(s, r) for r in rounds) for s in systems}
        best_name, best = _best({p: medians[p] for p in peers}, m.higher_is_better)
        ratios = [
            m.of("dtq", r) / _best({p: m.of(p, r) for p in peers}, m.higher_is_better)[1]
            for r in rounds
        ]
        ratio = statistics.median(ratios)
        if m.ratio_bound is not None:
            ok = ratio >= m.ratio_bound if m.higher_is_better else ratio <= m.ratio_bound
            verdict = Verdict.PASS if ok else Verdict.FAIL
        elif m.absolute_bound is not None:
            verdict = Verdict.PASS if medians["dtq"] <= m.absolute_bound else Verdict.FAIL
        else:
            verdict = Verdict.NONE
        span = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        rows.append(
            [m.label, *(fmt(medians[s]) for s in systems), best_name, f"{ratio:.2f}{span}",
             m.target, str(verdict)]
        )  # fmt: skip
        summary[m.key] = {
            "medians": medians,
            "per_round": {s: [m.of(s, r) for r in rounds] for s in systems},
            "best_peer": best_name,
            "best_peer_median": best,
            "dtq_over_best_per_round": ratios,
            "dtq_over_best": ratio,
            "target": m.target,
            "verdict": str(verdict),
        }
    header = ["figure", "DTQ", *(p.capitalize() for p in peers), "best peer", "DTQ/best",
              "target", "pass/fail"]  # fmt: skip
    return table(rows, header), summary


def main() -> int:
    """Run every system interleaved, print the comparison, write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--peers-python", type=Path, required=True)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "peers.json")
    args = parser.parse_args()
    size = SIZES[args.size]
    peers = tuple(p for p in args.peers.split(",") if p)
    systems = ["dtq", *peers]
    configs: dict[str, str] = {"dtq": DTQ_CONFIG}
    rounds: list[dict[str, dict[str, float]]] = []
    started = time.perf_counter()
    with redis_server() as url:
        for r in range(size.rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            numbers: dict[str, dict[str, float]] = {}
            for system in order:
                print(f"round {r + 1}/{size.rounds}: {system}", file=sys.stderr, flush=True)
                if system == "dtq":
                    numbers[system] = run_dtq(size)
                else:
                    raw = run_peer(system, size, args.peers_python, url)
                    configs[system] = f"P1: {raw['config_p1']} | P2: {raw['config_p2']}"
                    numbers[system] = {key: float(raw[key]) for key in PEER_KEYS}
            rounds.append(numbers)
    elapsed_s = time.perf_counter() - started
    text, summary = comparison(rounds, peers)
    print(
        f"\nDTQ vs peers ({args.size}: {size.tasks:,} tasks, {size.samples} round-trip samples,"
        f" {size.enqueue:,} one-call submits, {size.pipelined:,} DTQ pipelined submits;"
        f" {size.rounds} round(s), interleaved;"
        f" {os.cpu_count()} CPUs; {elapsed_s:.0f} s)"
    )
    print(text)
    print("\nconfigurations (Redis: loopback, RDB and AOF off):")
    for system in systems:
        print(f"  {system}: {configs[system]}")
    write_json(
        args.json,
        {"size": args.size, "cpus": os.cpu_count(), "elapsed_s": elapsed_s, "configs": configs,
         "rounds": rounds, "summary": summary},
    )  # fmt: skip
    print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
