"""Huey on Redis: ``huey_consumer -k process -w 2`` (two worker processes).

Two Huey instances over the same queue name, because the fastest setting for
each workload differs: for P1 results are stored without notification and the
client counts them (one HLEN); for P2 ``notify_result=True`` lets the client
block on BLPOP for each result instead of polling with back-off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from huey import RedisHuey  # type: ignore[import-not-found]

from bench.peers.base import Workload, redis_url

RESULT_TIMEOUT_S = 60.0

huey_throughput = RedisHuey("bench", url=redis_url(), blocking=True, notify_result=False)
huey_latency = RedisHuey("bench", url=redis_url(), blocking=True, notify_result=True)


def echo(value: int) -> int:
    """The no-op task: takes an int and returns it."""
    return value


def whoami() -> int:
    """The worker process's pid (warm-up: both processes must be taking tasks)."""
    return os.getpid()


TASKS = {
    Workload.THROUGHPUT: (
        huey_throughput,
        huey_throughput.task()(echo),
        huey_throughput.task()(whoami),
    ),
    Workload.LATENCY: (huey_latency, huey_latency.task()(echo), huey_latency.task()(whoami)),
}


class HueyPeer:
    """Huey, as the driver runs it."""

    name = "huey"

    def config(self, workload: Workload) -> str:
        """How it is set up."""
        notify = (
            "notify_result=True, client blocks on BLPOP"
            if workload is Workload.LATENCY
            else ("notify_result=False, client counts results (HLEN)")
        )
        return (
            f"huey 3.5 RedisHuey(blocking=True, {notify}); huey_consumer -k process -w 2 -n -C -q"
        )

    def worker_commands(self, python: str, workload: Workload) -> list[list[str]]:
        """One consumer with two worker processes (its main process only supervises)."""
        return [[python, "-m", "huey.bin.huey_consumer", f"{__name__}.huey_{workload}",
                 "-k", "process", "-w", "2", "-n", "-C", "-q"]]  # fmt: skip

    def submit(self, value: int, workload: Workload) -> object:
        """Enqueue ``echo(value)``."""
        return TASKS[workload][1](value)

    def whoami(self, workload: Workload) -> int:
        """Pid of the worker that ran a ``whoami`` task."""
        return int(TASKS[workload][2]().get(blocking=True, timeout=RESULT_TIMEOUT_S))

    def wait_all(self, handles: Sequence[object], workload: Workload) -> list[int]:
        """Count stored results until all are there, then read them (one HMGET per batch)."""
        huey = TASKS[workload][0]
        deadline = time.monotonic() + RESULT_TIMEOUT_S * 10
        while huey.storage.result_store_size() < len(handles):
            if time.monotonic() > deadline:
                raise TimeoutError("huey: results missing")
            time.sleep(0.002)
        return [int(h.get(preserve=True)) for h in handles]  # type: ignore[attr-defined]

    def round_trip(self, value: int) -> int:
        """Submit, then block on the result notification."""
        result = TASKS[Workload.LATENCY][1](value)
        return int(result.get(blocking=True, timeout=RESULT_TIMEOUT_S))


PEER = HueyPeer()
