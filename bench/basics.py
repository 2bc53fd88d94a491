"""P1-P3: throughput, round trip and enqueue rate, each on a fresh cluster.

- P1 throughput: N no-op tasks (``echo`` of an int), one client submitting in
  batches, two worker nodes; tasks/s from the first submit to the last success.
- P2 latency: one task at a time on an idle system, submit -> result at the
  client (``Client.submit_and_wait``: one call, acknowledged at the commit,
  then following the task to its end), p50 and p99.
- P3 enqueue: batched submits (``submit_many``, answered with acks; with the
  whole tasks for information), one-call-per-task submits, and one-at-a-time
  submits pipelined over one stream (``Client.submitter``), acknowledged
  (committed) tasks/s, with no node running.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

from bench.cluster import cluster, wait_for
from dtq_client import Client, TaskSpec
from dtq_worker.config import Prefetch

PREFETCH: Prefetch = "auto"
"""P1's nodes run with dtq-worker's default, ``--prefetch auto``.

No-op tasks take microseconds: a node needs a deep window of leased work to
stay busy while its results travel back and new leases travel out. Auto sizes
it from the node's own run times and round trip; on P1 it settles at its cap,
256 per thread (a fixed 16 gave ~3,000 tasks/s on the 2-core machine, 64
~4,000-6,500, auto capped at 64 per thread ~6,500, at 256 ~7,500)."""
MANY_QUEUES = 1_000
"""P1's information rows over many queues and many rate keys (one per tenant, say): a
dispatch round once looked at every queue and rate key for every task it leased (2,000
and 1,300 tasks/s against 8,800)."""
MANY_RATE_KEYS = 10_000
FIXED_PREFETCH = 64
"""A fixed window, for P4's dispatch (shallow and deep must see the same one) and
for P1's information row."""


def throughput(
    tasks: int,
    prefetch: Prefetch = PREFETCH,
    queues: int = 1,
    rate_keys: int = 0,
    coordinator_cpus: frozenset[int] | None = None,
) -> float:
    """P1: end-to-end tasks/s (2 nodes x 4 threads, --prefetch auto unless told).

    The client submits task after task with one call each, as the peers do,
    through :meth:`Client.submitter` (pipelined, each acknowledged once
    committed); the clock stops when the last task has succeeded. With
    ``queues`` > 1 the tasks go to that many queues in turn, all of which both
    nodes serve; with ``rate_keys`` they carry that many rate keys in turn (no
    limit set on any). ``coordinator_cpus``: see :func:`bench.cluster.cluster`.
    """
    names = [f"q{i}" for i in range(queues)] if queues > 1 else [None]  # None: "default"
    with (
        cluster(
            nodes=2,
            prefetch=prefetch,
            queues=[n or "default" for n in names],
            coordinator_cpus=coordinator_cpus,
        ) as address,
        Client(address) as client,
    ):
        started = time.perf_counter()
        with client.submitter() as submitter:
            futures = [
                submitter.submit(
                    "echo",
                    i,
                    queue=names[i % queues],
                    rate_key=f"tenant-{i % rate_keys}" if rate_keys else None,
                )
                for i in range(tasks)
            ]
        # Follow the last task (one stream, no polling that would tax the coordinator
        # under measurement), then count.
        client.wait(futures[-1].result().task_id, timeout_s=600)
        wait_for(
            lambda: sum(q.succeeded for q in client.queues()) == tasks,
            600,
            "all tasks to succeed",
        )
        return tasks / (time.perf_counter() - started)


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``samples`` (``fraction`` 0.99 for p99)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latency(samples: int, coordinator_cpus: frozenset[int] | None = None) -> tuple[float, float]:
    """P2: submit -> result round trip, (p50, p99) in milliseconds."""
    with cluster(nodes=2, coordinator_cpus=coordinator_cpus) as address, Client(address) as client:
        times = []
        for i in range(samples):
            started = time.perf_counter()
            done = client.submit_and_wait(TaskSpec("echo", i), timeout_s=30)
            times.append((time.perf_counter() - started) * 1000)
            if done.result_value() != i:
                raise RuntimeError(f"task {done.id} answered {done.result_value()!r}, not {i}")
        return statistics.median(times), percentile(times, 0.99)


def enqueue_single(client: Client, tasks: int) -> float:
    """Acknowledged submits/s, one ``Client.submit`` call per task, one after the other."""
    started = time.perf_counter()
    for i in range(tasks):
        client.submit("echo", i)
    return tasks / (time.perf_counter() - started)


def enqueue(tasks: int) -> tuple[float, float, float]:
    """P3: acknowledged submits/s, batched and one call per task (no nodes running).

    Batched twice: answered with acks (``answer="ack"``: id, created, state), which
    is P3's figure, and with every stored task sent back (the default answer). The
    one-call-per-task figure submits a tenth as many tasks: it is the slow one.
    """
    with cluster(nodes=0) as address, Client(address) as client:
        acked = _batched_rate(client, tasks, "ack")
        whole = _batched_rate(client, tasks, "task")
        return acked, whole, enqueue_single(client, max(1, tasks // 10))


def _batched_rate(client: Client, tasks: int, answer: Literal["task", "ack"]) -> float:
    """Acknowledged tasks/s of one ``submit_many`` of ``tasks`` new specs (the client batches)."""
    specs = [TaskSpec("echo", i) for i in range(tasks)]
    started = time.perf_counter()
    client.submit_many(specs, answer=answer)
    return tasks / (time.perf_counter() - started)


def single_enqueue(tasks: int) -> float:
    """P3's one-call-per-task figure alone (``make bench-peers`` compares it with the peers)."""
    with cluster(nodes=0) as address, Client(address) as client:
        return enqueue_single(client, tasks)


def pipelined_enqueue(tasks: int, coordinator_cpus: frozenset[int] | None = None) -> float:
    """P3 pipelined: acknowledged submits/s from one thread, one ``Submitter``, one task per
    ``submit`` call, on a fresh coordinator (no nodes).

    The clock stops when the submitter is closed, i.e. when every future is resolved: each
    task is committed and acknowledged, exactly the promise of a unary ``submit``.
    """
    with cluster(nodes=0, coordinator_cpus=coordinator_cpus) as address, Client(address) as client:
        started = time.perf_counter()
        with client.submitter() as submitter:
            futures = [submitter.submit("echo", i) for i in range(tasks)]
        elapsed = time.perf_counter() - started
        created = sum(future.result().created for future in futures)  # raises a failed one
        if created != tasks:
            raise RuntimeError(f"{tasks - created} of {tasks} pipelined submits were not new")
        return tasks / elapsed
