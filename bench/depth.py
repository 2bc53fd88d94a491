"""P4 depth: dispatch rate, memory and restart time with a deep queue.

Procedure (SQLite ``synchronous=FULL``). Two coordinators, each over its own
data directory, differ only in how deep their queue is:

1. Fill: the *shallow* one gets just the measured tasks, the *deep* one
   ``depth`` tasks (``echo`` of an int, ``submit_many`` batches) whose first
   ones are the measured ones. Both queues are paused first (a durable queue
   setting), so nothing runs until a window opens.
2. Restart: SIGKILL the deep coordinator, start a new one on the same
   ``--data-dir`` and time until it is serving (port file written, health
   SERVING) and a submit is acknowledged; ``rounds`` times. The shallow one is
   killed and restarted once, so both dispatch from a restarted process (the
   board rebuilt from the store, SQLite's cache cold): depth is the only
   difference between them.
3. Dispatch: two nodes (4 threads, a fixed ``--prefetch 64``) serve each
   coordinator. Windows alternate between the two (shallow, deep, shallow,
   deep, ...), so a change in the machine's speed during the run touches both
   figures alike: the window's queue is resumed, the tasks/s between the
   successes of the window's two boundary tasks is its rate, and the queue is
   paused again. Each window starts a fifth of a window after the resume
   point (the queue is FIFO at equal priority), so ramp-up is not measured;
   each boundary is watched with ``Client.wait``, so nothing polls the
   coordinator's counters, which scan the task table.

Coordinator RSS is read from /proc after the fill, after each restart and
after the dispatch windows.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.basics import FIXED_PREFETCH
from bench.cluster import Coordinator, start_node, stop_processes, wait_active, wait_for
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
    """Tasks per measured window; one window per coordinator is one round."""
    rounds: int

    @property
    def lead(self) -> int:
        """Tasks between a window's resume point and its first boundary (ramp-up)."""
        return self.window // 5

    @property
    def windows(self) -> list[tuple[int, int]]:
        """(first, last) boundary task index of each round's window."""
        return [
            (self.lead + r * (self.window + self.lead), (r + 1) * (self.window + self.lead))
            for r in range(self.rounds)
        ]

    @property
    def boundaries(self) -> list[int]:
        """Every boundary task index, in order."""
        return [i for window in self.windows for i in window]

    @property
    def measured(self) -> int:
        """Tasks the shallow queue holds: the windows, their lead-ins, and one lead after."""
        return self.windows[-1][1] + self.lead


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
        specs = [TaskSpec("echo", i, queue=QUEUE) for i in range(start, stop)]
        acks = client.submit_many(specs, answer="ack")
        ids |= {i: acks[i - start].task_id for i in want.intersection(range(start, stop))}
    return ids


def _finished_at(address: str, task_id: str) -> float:
    with Client(address) as client:
        client.wait(task_id, timeout_s=WAIT_TIMEOUT_S)
    return time.perf_counter()


@dataclass
class _Side:
    """One of the two coordinators, its measured task ids and its two nodes."""

    coordinator: Coordinator
    ids: dict[int, str]
    """Task id per boundary index."""
    rates: list[float]
    """Where this side's window rates go."""
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.coordinator.wait_address(timeout_s=WAIT_TIMEOUT_S)


def _window(side: _Side, pool: ThreadPoolExecutor, first: int, last: int) -> None:
    """Resume the side's queue; its rate between boundaries ``first`` and ``last``; pause."""
    address = side.address
    # The watches open before the resume, so neither boundary can finish unseen.
    start, end = (pool.submit(_finished_at, address, side.ids[i]) for i in (first, last))
    with Client(address) as client:
        client.resume_queue(QUEUE)
        try:
            began, ended = start.result(), end.result()
        finally:
            client.pause_queue(QUEUE)
    if ended <= began:
        raise RuntimeError(f"window boundaries finished out of order: {began}, {ended}")
    side.rates.append((last - first) / (ended - began))


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


def _filled(
    data_dir: Path, total: int, plan: DepthPlan
) -> tuple[Coordinator, dict[int, str], float]:
    """A coordinator holding ``total`` tasks on the paused queue; its boundary ids; the
    acknowledged tasks/s of the fill."""
    coordinator = Coordinator(data_dir)
    try:
        with Client(coordinator.wait_address()) as client:
            client.pause_queue(QUEUE)
            started = time.perf_counter()
            ids = fill(client, total, plan.boundaries)
            rate = total / (time.perf_counter() - started)
    except BaseException:
        coordinator.stop()
        raise
    return coordinator, ids, rate


def _stop(sides: list[_Side]) -> None:
    """Nodes first, so they leave instead of being declared dead; then the coordinators."""
    stop_processes(node for side in sides for node in side.nodes)
    for side in sides:
        side.coordinator.stop()


def depth(plan: DepthPlan) -> DepthResult:
    """P4: fill both coordinators, restart them, then alternate their dispatch windows."""
    result = DepthResult()
    with ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="dtq-bench-depth-")))
        shallow_dir, deep_dir = tmp / "shallow", tmp / "deep"
        shallow_dir.mkdir()
        deep_dir.mkdir()
        sides: list[_Side] = []
        cleanup.callback(_stop, sides)

        coordinator, ids, _ = _filled(shallow_dir, plan.measured, plan)
        shallow = _Side(coordinator, ids, result.empty_rates)
        sides.append(shallow)
        coordinator, ids, result.fill_rate = _filled(deep_dir, plan.depth, plan)
        deep = _Side(coordinator, ids, result.deep_rates)
        sides.append(deep)

        result.rss_mib.append(rss_mib(deep.coordinator.pid))
        for _ in range(plan.rounds):
            result.peak_rss_mib.append(peak_rss_mib(deep.coordinator.pid))
            deep.coordinator, seconds = restart(deep.coordinator)
            result.restart_s.append(seconds)
            result.rss_mib.append(rss_mib(deep.coordinator.pid))
        shallow.coordinator, _ = restart(shallow.coordinator)

        for side, name in ((shallow, "shallow"), (deep, "deep")):
            side.nodes = [
                start_node(side.address, f"{name}-{n}", prefetch=FIXED_PREFETCH, queues=[QUEUE])
                for n in range(2)
            ]
            with Client(side.address) as client:
                wait_active(client, 2)
        with ThreadPoolExecutor(2) as pool:
            for first, last in plan.windows:
                for side in (shallow, deep):
                    _window(side, pool, first, last)
        result.rss_mib.append(rss_mib(deep.coordinator.pid))
        result.peak_rss_mib.append(peak_rss_mib(deep.coordinator.pid))
    return result
