"""Runs one peer's P3/P1/P2 workloads and prints the numbers as one JSON line (peers' venv only).

``python -m bench.peers.driver --peer huey --tasks 10000 --samples 500 --enqueue 2000``
with ``BENCH_REDIS_URL`` pointing at an empty Redis. In order:

- P3 one-call-per-task enqueue: ``enqueue`` tasks submitted one call at a time
  with no worker running; acknowledged submits/s.
- P1 throughput: start the workers, warm up until both worker processes have
  run a task, then submit ``tasks`` echo tasks one call at a time and wait for
  every result; tasks/s from the first submit to the last result. Every result
  is checked against its input afterwards.
- P2 latency: fresh workers (the peer's latency configuration), then ``samples``
  round trips one at a time; p50 and p99 in ms.

Redis is flushed before each part. Workers run in their own process groups and
are stopped (SIGTERM, then SIGKILL) after each part.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis  # type: ignore[import-not-found]

from bench.peers.base import Peer, Workload, redis_url

ROOT = Path(__file__).resolve().parent.parent.parent
WARMUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def flush() -> None:
    """Empty the benchmark's Redis (it holds nothing else)."""
    redis.Redis.from_url(redis_url()).flushall()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def workers(peer: Peer, workload: Workload, log_dir: Path) -> Iterator[None]:
    """The peer's worker processes, warmed up: each worker process has run a task."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, argv in enumerate(peer.worker_commands(sys.executable, workload)):
            with (log_dir / f"{peer.name}-{workload}-{n}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        pids: set[int] = set()
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while len(pids) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{peer.name} workers did not come up (logs in {log_dir})")
            pids.add(peer.whoami(workload))
        yield
    finally:
        _stop(procs)


def enqueue(peer: Peer, tasks: int) -> float:
    """P3: one call per task, no worker running."""
    flush()
    started = time.perf_counter()
    for i in range(tasks):
        peer.submit(i, Workload.THROUGHPUT)
    rate = tasks / (time.perf_counter() - started)
    flush()
    return rate


def throughput(peer: Peer, tasks: int, log_dir: Path) -> float:
    """P1: end-to-end tasks/s with every result back at the client."""
    flush()
    with workers(peer, Workload.THROUGHPUT, log_dir):
        started = time.perf_counter()
        handles = [peer.submit(i, Workload.THROUGHPUT) for i in range(tasks)]
        values = peer.wait_all(handles, Workload.THROUGHPUT)
        rate = tasks / (time.perf_counter() - started)
    if values != list(range(tasks)):
        raise RuntimeError(f"{peer.name}: wrong results")
    return rate


def latency(peer: Peer, samples: int, log_dir: Path) -> tuple[float, float]:
    """P2: (p50, p99) ms of submit -> result at the client, one task at a time."""
    flush()
    times = []
    with workers(peer, Workload.LATENCY, log_dir):
        for i in range(samples):
            started = time.perf_counter()
            if peer.round_trip(i) != i:
                raise RuntimeError(f"{peer.name}: wrong result")
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> None:
    """Run the three workloads for one peer; print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, choices=["huey", "dramatiq", "celery"])
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--enqueue", type=int, required=True)
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    peer: Peer = importlib.import_module(f"bench.peers.{args.peer}_app").PEER
    with tempfile.TemporaryDirectory(prefix="bench-peer-logs-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        single = enqueue(peer, args.enqueue)
        rate = throughput(peer, args.tasks, log_dir)
        p50, p99 = latency(peer, args.samples, log_dir)
    print(
        json.dumps(
            {
                "peer": peer.name,
                "p1_tasks_per_s": rate,
                "p2_p50_ms": p50,
                "p2_p99_ms": p99,
                "p3_single_per_s": single,
                "config_p1": peer.config(Workload.THROUGHPUT),
                "config_p2": peer.config(Workload.LATENCY),
            }
        )
    )


if __name__ == "__main__":
    main()
