"""``make bench``: DTQ's speed, measured on this machine, printed as one table.

Brings up its own coordinator and worker nodes (real processes on loopback,
SQLite with synchronous=FULL) for each round, and reports the median and spread
of several rounds:

- P1 throughput: N no-op tasks (``echo`` of an int), one client submitting in
  batches, two worker nodes; tasks/s from the first submit to the last success.
- P2 latency: one task at a time on an idle system, submit -> result at the
  client (``Client.submit`` + ``Client.wait``), p50 and p99.
- P3 enqueue: batched submits (``submit_many``) and one-call-per-task submits,
  acknowledged (committed) tasks/s.

Speed is never asserted here; the numbers go to stdout and a JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dtq_client import Client, NodeState, TaskSpec

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Size:
    """How big each figure's workload is."""

    tasks: int
    latency_samples: int
    enqueue_tasks: int
    rounds: int


SIZES = {
    "full": Size(tasks=10_000, latency_samples=500, enqueue_tasks=20_000, rounds=3),
    "small": Size(tasks=300, latency_samples=30, enqueue_tasks=500, rounds=1),
}


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def cluster(nodes: int, threads: int = 4, prefetch: int = 0) -> Iterator[str]:
    """A coordinator process and ``nodes`` worker processes; yields the address."""
    with tempfile.TemporaryDirectory(prefix="dtq-bench-") as tmp:
        port_file = Path(tmp) / "port"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dtq_server",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    tmp,
                    "--port-file",
                    str(port_file),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
            )
        ]
        try:
            _wait_for(port_file.exists, 20, "the coordinator")
            address = port_file.read_text().strip()
            for n in range(nodes):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "dtq_worker",
                            "dtq_worker.demo:registry",
                            "--coordinator",
                            address,
                            "--threads",
                            str(threads),
                            "--prefetch",
                            str(prefetch),
                            "--node-id",
                            f"bench-{n}",
                            "--log-level",
                            "warning",
                        ],
                        cwd=ROOT,
                    )
                )
            with Client(address) as client:
                _wait_for(
                    lambda: sum(n.state is NodeState.ACTIVE for n in client.nodes()) == nodes,
                    20,
                    "the nodes",
                )
            yield address
        finally:
            # Nodes first (they leave cleanly), then the coordinator.
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


PREFETCH = 16
"""P1's nodes hold this many tasks beyond their 4 threads (dtq-worker --prefetch)."""


def throughput(size: Size) -> float:
    """P1: end-to-end tasks/s (nodes with --prefetch 16)."""
    with cluster(nodes=2, prefetch=PREFETCH) as address, Client(address) as client:
        started = time.perf_counter()
        client.submit_many([TaskSpec("echo", i) for i in range(size.tasks)])
        _wait_for(lambda: client.queues()[0].succeeded == size.tasks, 600, "all tasks to succeed")
        return size.tasks / (time.perf_counter() - started)


def latency(size: Size) -> tuple[float, float]:
    """P2: submit -> result round trip, (p50, p99) in milliseconds."""
    with cluster(nodes=2) as address, Client(address) as client:
        samples = []
        for i in range(size.latency_samples):
            started = time.perf_counter()
            task = client.submit("echo", i)
            client.wait(task.id, timeout_s=30)
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        return statistics.median(samples), p99


def enqueue(size: Size) -> tuple[float, float]:
    """P3: acknowledged submits/s, batched and one call per task (no nodes running)."""
    with cluster(nodes=0) as address, Client(address) as client:
        started = time.perf_counter()
        client.submit_many([TaskSpec("echo", i) for i in range(size.enqueue_tasks)])
        batched = size.enqueue_tasks / (time.perf_counter() - started)
        single_n = max(1, size.enqueue_tasks // 10)
        started = time.perf_counter()
        for i in range(single_n):
            client.submit("echo", i)
        single = single_n / (time.perf_counter() - started)
        return batched, single


def summarise(values: list[float]) -> dict[str, float]:
    """Median and spread of a figure's rounds."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "results.json")
    args = parser.parse_args()
    size = SIZES[args.size]
    figures: dict[str, list[float]] = {
        f"P1 end-to-end tasks/s (2 nodes x 4 threads, prefetch {PREFETCH})": [],
        "P2 round trip p50 ms": [],
        "P2 round trip p99 ms": [],
        "P3 batched enqueue tasks/s": [],
        "P3 one-call-per-task enqueue tasks/s": [],
    }
    keys = list(figures)
    for _ in range(size.rounds):
        figures[keys[0]].append(throughput(size))
        p50, p99 = latency(size)
        figures[keys[1]].append(p50)
        figures[keys[2]].append(p99)
        batched, single = enqueue(size)
        figures[keys[3]].append(batched)
        figures[keys[4]].append(single)
    results = {name: summarise(values) for name, values in figures.items()}
    width = max(len(name) for name in results)
    print(f"\nDTQ benchmark ({args.size}: {size.tasks} tasks, {size.rounds} round(s))")
    print(f"{'figure'.ljust(width)}  {'median':>10}  {'min':>10}  {'max':>10}")
    for name, r in results.items():
        print(f"{name.ljust(width)}  {r['median']:>10.1f}  {r['min']:>10.1f}  {r['max']:>10.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"size": args.size, "results": results}, indent=2))
    print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
