"""Celery on Redis (broker and result backend): two ``celery worker -P solo`` processes.

Two solo workers beat one prefork worker with ``-c 2`` on two cores (no pool
process hand-off). Gossip, mingle and worker heartbeats are off, as for any
throughput-minded deployment; results go to Redis and the client waits on them
(pub/sub), for P1 with ``ResultSet.join_native``.
"""
# mypy: allow-untyped-decorators

from __future__ import annotations

import os
from collections.abc import Sequence

from celery import Celery  # type: ignore[import-not-found]
from celery.result import ResultSet  # type: ignore[import-not-found]

from bench.peers.base import Workload, redis_url

RESULT_TIMEOUT_S = 600.0
PREFETCH_MULTIPLIER = 16

app = Celery("bench", broker=redis_url(), backend=redis_url())
app.conf.update(
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="echo")
def echo(value: int) -> int:
    """The no-op task: takes an int and returns it."""
    return value


@app.task(name="whoami")
def whoami() -> int:
    """The worker process's pid (warm-up: both processes must be taking tasks)."""
    return os.getpid()


class CeleryPeer:
    """Celery, as the driver runs it."""

    name = "celery"

    def config(self, workload: Workload) -> str:
        """How it is set up."""
        return (
            "celery 5.7 Redis broker + Redis results; 2 x worker -P solo,"
            f" prefetch multiplier {PREFETCH_MULTIPLIER}, without gossip/mingle/heartbeat"
        )

    def worker_commands(self, python: str, workload: Workload) -> list[list[str]]:
        """Two solo workers."""
        return [
            [python, "-m", "celery", "-A", __name__, "worker", "-P", "solo", "-n", f"w{i}@bench",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
            for i in range(2)
        ]  # fmt: skip

    def submit(self, value: int, workload: Workload) -> object:
        """Enqueue ``echo(value)``."""
        return echo.delay(value)

    def whoami(self, workload: Workload) -> int:
        """Pid of the worker that ran a ``whoami`` task."""
        return int(whoami.delay().get(timeout=RESULT_TIMEOUT_S))

    def wait_all(self, handles: Sequence[object], workload: Workload) -> list[int]:
        """Every result, gathered natively by the Redis backend."""
        values = ResultSet(list(handles)).join_native(timeout=RESULT_TIMEOUT_S)
        return [int(v) for v in values]

    def round_trip(self, value: int) -> int:
        """Submit, then wait on the result."""
        return int(echo.delay(value).get(timeout=RESULT_TIMEOUT_S))


PEER = CeleryPeer()
