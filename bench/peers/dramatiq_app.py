"""Dramatiq on Redis: ``dramatiq -p 2 -t 8`` (two worker processes of 8 threads, the default).

Results go through the Results middleware with the Redis backend; the client
blocks on each result (BRPOPLPUSH), for P1 in submission order.
"""
# mypy: allow-untyped-decorators

from __future__ import annotations

import os
from collections.abc import Sequence

import dramatiq  # type: ignore[import-not-found]
from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found]
from dramatiq.results import Results  # type: ignore[import-not-found]
from dramatiq.results.backends import RedisBackend  # type: ignore[import-not-found]

from bench.peers.base import Workload, redis_url

RESULT_TIMEOUT_MS = 60_000

backend = RedisBackend(url=redis_url())
broker = RedisBroker(url=redis_url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def echo(value: int) -> int:
    """The no-op task: takes an int and returns it."""
    return value


@dramatiq.actor(store_results=True, max_retries=0)
def whoami() -> int:
    """The worker process's pid (warm-up: both processes must be taking tasks)."""
    return os.getpid()


class DramatiqPeer:
    """Dramatiq, as the driver runs it."""

    name = "dramatiq"

    def config(self, workload: Workload) -> str:
        """How it is set up."""
        return (
            "dramatiq 2.2 RedisBroker + Results(RedisBackend); dramatiq -p 2 -t 8 (defaults);"
            " client blocks on each result"
        )

    def worker_commands(self, python: str, workload: Workload) -> list[list[str]]:
        """One dramatiq command with two worker processes."""
        return [[python, "-m", "dramatiq", __name__, "-p", "2", "-t", "8"]]

    def submit(self, value: int, workload: Workload) -> object:
        """Enqueue ``echo(value)``."""
        return echo.send(value)

    def whoami(self, workload: Workload) -> int:
        """Pid of the worker that ran a ``whoami`` task."""
        return int(whoami.send().get_result(block=True, timeout=RESULT_TIMEOUT_MS))

    def wait_all(self, handles: Sequence[object], workload: Workload) -> list[int]:
        """Each result in submission order, blocking on each."""
        return [
            int(h.get_result(block=True, timeout=RESULT_TIMEOUT_MS))  # type: ignore[attr-defined]
            for h in handles
        ]

    def round_trip(self, value: int) -> int:
        """Submit, then block on the result."""
        return int(echo.send(value).get_result(block=True, timeout=RESULT_TIMEOUT_MS))


PEER = DramatiqPeer()
