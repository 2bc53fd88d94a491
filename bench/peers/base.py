"""What the driver needs from each peer: the worker command, submit, and the two ways to wait."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol


class Workload(StrEnum):
    """Which measurement the workers are started for; a peer may configure them differently."""

    THROUGHPUT = "throughput"
    LATENCY = "latency"


REDIS_URL_ENV = "BENCH_REDIS_URL"


def redis_url() -> str:
    """The loopback Redis that ``bench.compare`` started (a local default for manual runs)."""
    return os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")


class Peer(Protocol):
    """One peer task queue, as the driver runs it."""

    name: str

    def config(self, workload: Workload) -> str:
        """How it is set up for ``workload``, for the output."""
        ...

    def worker_commands(self, python: str, workload: Workload) -> list[list[str]]:
        """The worker processes to start (two in all), each as an argv."""
        ...

    def submit(self, value: int, workload: Workload) -> object:
        """Enqueue ``echo(value)``; a handle for its result."""
        ...

    def whoami(self, workload: Workload) -> int:
        """Run the ``whoami`` task and return the pid of the worker process that ran it."""
        ...

    def wait_all(self, handles: Sequence[object], workload: Workload) -> list[int]:
        """Block until every handle's task has succeeded; their results in order."""
        ...

    def round_trip(self, value: int) -> int:
        """Submit ``echo(value)`` and block until its result is at the client (P2)."""
        ...
