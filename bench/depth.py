"""P4 depth: dispatch rate, memory and restart time with a deep queue.

Procedure (one coordinator data directory, SQLite ``synchronous=FULL``):

1. Fill ``depth`` tasks (``echo`` of an int) into a queue no node serves, with
   ``submit_many`` batches; the first ones are the measured ones.
2. Restart: SIGKILL the coordinator, start a new one on the same
   ``--data-dir`` and time until it is serving (port file written, health
   SERVING) and a submit is acknowledged. Repeated ``rounds`` times.
3. Dispatch: start two nodes (4 threads, ``--prefetch`` as P1) serving the queue
   and time how long consecutive windows of ``window`` tasks take to finish,
   from the successes of the tasks at the window boundaries (the queue is FIFO
   at equal priority; each boundary is watched with ``Client.wait``, so nothing
   polls the coordinator's counters, which scan the task table).

The empty-queue figure is step 3 on a fresh coordinator holding only the
measured windows. Coordinator RSS is read from /proc after the fill, after each
restart and after the dispatch windows.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from bench.basics import PREFETCH
from bench.cluster import Coordinator, start_node, stop_processes, wait_for
from bench.procfs import peak_rss_mib, rss_mib
from dtq_client import Client, DtqError, TaskSpec

QUEUE = "depth"
FILL_BATCH = 10_000
"""Tasks per ``submit_many`` call while filling (the coordinator's batch limit)."""
WAIT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class DepthPlan:
    """How deep the queue is and how the dispatch rate is sampled."""

    depth: int
    window: int
    """Tasks per measured window; one window is one round of the dispatch figure."""
    rounds: int

    @property
    def boundaries(self) -> list[int]:
        """Indices of the tasks whose successes bound the windows.

        The first window starts a fifth of a window in, so node start-up is not measured.
        """
        first = self.window // 5
        return [first + r * self.window for r in range(self.rounds + 1)]

    @property
    def measured(self) -> int:
        """Tasks the empty-queue run holds: the windows and a fifth of a window either side."""
        return self.boundaries[-1] + self.window // 5


@dataclass
class DepthResult:
    """Every round's numbers of P4."""

    empty_rates: list[float] = field(default_factory=list)
    """Tasks/s per window with only the measured tasks queued."""
    deep_rates: list[float] = field(default_factory=list)
    """Tasks/s per window with ``depth`` tasks queued."""
    rss_mib: list[float] = field(default_factory=list)
    """Coordinator VmRSS after the fill, after each restart, after dispatching."""
    peak_rss_mib: list[float] = field(default_factory=list)
    """VmHWM of each coordinator process, read just before it is stopped."""
    restart_s: list[float] = field(default_factory=list)
    fill_rate: float = 0.0
    """Acknowledged tasks/s while filling."""


def fill(client: Client, total: int, wanted: list[int]) -> dict[int, str]:
    """Submit ``total`` tasks into the queue in batches; the ids of the ``wanted`` indices."""
    want = set(wanted)
    ids: dict[int, str] = {}
    for start in range(0, total, FILL_BATCH):
        stop = min(total, start + FILL_BATCH)
        results = client.submit_many([TaskSpec("echo", i, queue=QUEUE) for i in range(start, stop)])
        ids |= {i: results[i - start].task.id for i in want.intersection(range(start, stop))}
    return ids


def _finished_at(address: str, task_id: str) -> float:
    with Client(address) as client:
        client.wait(task_id, timeout_s=WAIT_TIMEOUT_S)
    return time.perf_counter()


def dispatch_rates(address: str, ids: list[str], window: int) -> list[float]:
    """Start two nodes on the queue; tasks/s between each pair of boundary successes."""
    nodes: list[subprocess.Popen[bytes]] = []
    with ThreadPoolExecutor(len(ids)) as pool:
        try:
            # The watches open in milliseconds; a node process needs far longer to start
            # and the first boundary is a fifth of a window in, so no watch misses its task.
            finished = [pool.submit(_finished_at, address, task_id) for task_id in ids]
            nodes = [
                start_node(address, f"depth-{n}", prefetch=PREFETCH, queues=[QUEUE])
                for n in range(2)
            ]
            times = [f.result() for f in finished]
        finally:
            stop_processes(nodes)
    if any(b <= a for a, b in pairwise(times)):
        raise RuntimeError(f"window boundaries finished out of order: {times}")
    return [window / (b - a) for a, b in pairwise(times)]


def restart(coordinator: Coordinator) -> tuple[Coordinator, float]:
    """SIGKILL ``coordinator``; start another on its data; seconds until a submit is acked."""
    coordinator.kill()
    started = time.perf_counter()
    fresh = Coordinator(coordinator.data_dir)
    address = fresh.wait_address(timeout_s=WAIT_TIMEOUT_S)
    with Client(address) as client:
        wait_for(lambda: _serving(client), 120, "health SERVING and an acknowledged submit", 0.005)
    return fresh, time.perf_counter() - started


def _serving(client: Client) -> bool:
    try:
        if client.health() != "SERVING":
            return False
        client.submit("echo", 0, queue=f"{QUEUE}-probe")
    except DtqError:
        return False
    return True


def _run_on_fresh(
    plan: DepthPlan, total: int, result: DepthResult, body: Callable[[Coordinator, list[str]], None]
) -> None:
    """Fill ``total`` tasks into a fresh coordinator and hand it to ``body`` with the ids."""
    with tempfile.TemporaryDirectory(prefix="dtq-bench-depth-") as tmp:
        coordinator = Coordinator(Path(tmp))
        try:
            with Client(coordinator.wait_address()) as client:
                started = time.perf_counter()
                ids = fill(client, total, plan.boundaries)
                if total == plan.depth:
                    result.fill_rate = total / (time.perf_counter() - started)
            body(coordinator, [ids[i] for i in plan.boundaries])
        finally:
            coordinator.stop()  # a no-op once ``body`` has killed it


def depth(plan: DepthPlan) -> DepthResult:
    """P4: the empty-queue windows, then the deep queue's fill, restarts and windows."""
    result = DepthResult()

    def shallow(coordinator: Coordinator, ids: list[str]) -> None:
        result.empty_rates = dispatch_rates(coordinator.wait_address(), ids, plan.window)

    def deep(coordinator: Coordinator, ids: list[str]) -> None:
        current = coordinator
        result.rss_mib.append(rss_mib(current.pid))
        try:
            for _ in range(plan.rounds):
                result.peak_rss_mib.append(peak_rss_mib(current.pid))
                current, seconds = restart(current)
                result.restart_s.append(seconds)
                result.rss_mib.append(rss_mib(current.pid))
            result.deep_rates = dispatch_rates(current.wait_address(), ids, plan.window)
            result.rss_mib.append(rss_mib(current.pid))
            result.peak_rss_mib.append(peak_rss_mib(current.pid))
        finally:
            current.stop()

    _run_on_fresh(plan, plan.measured, result, shallow)
    _run_on_fresh(plan, plan.depth, result, deep)
    return result
