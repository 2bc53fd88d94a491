"""Prometheus metrics of a worker node (``--metrics-listen``), for dashboards and alerts.

The coordinator's ``/metrics`` shows queues and nodes as the coordinator sees
them; a node's shows what only the node knows: how long its handlers take,
how they end, and how its worker threads fare. Served by
``prometheus_client``'s HTTP server on its own thread, from a registry of its
own (no global state).

Counted as the node's ledger records each attempt's one outcome (on the
node's loop; only when metrics are on, a few µs per task):

- ``dtq_worker_tasks_total{queue, type, outcome}``: attempts that ended here,
  by outcome: ``succeeded``, ``failed`` (timeouts included), ``cancelled``,
  ``released`` (handed back: shutdown, a dead worker, a type this node lacks);
- ``dtq_worker_task_duration_seconds{queue, type}``: from the handler's start
  to its outcome, for attempts whose handler started.

Read at each scrape: ``dtq_worker_tasks_running`` (handlers running now),
``dtq_worker_threads`` (configured) and ``dtq_worker_threads_alive``,
``dtq_worker_thread_restarts_total`` (crashed threads replaced),
``dtq_worker_threads_abandoned_total`` (threads left to a handler past its
timeout), ``dtq_worker_prefetch``, and the process's own ``process_*``
metrics. Every family carries the ``node_id`` label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dtq_worker.models import Failed, Outcome, Released, Succeeded
from dtq_worker.runner import Job

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
"""Seconds: prometheus_client's defaults, extended to the hour tasks may run."""


def outcome_label(outcome: Outcome) -> str:
    """How an attempt ended, as the ``outcome`` label says it."""
    match outcome:
        case Succeeded():
            return "succeeded"
        case Failed(cancelled=True):
            return "cancelled"
        case Failed():
            return "failed"
        case Released():
            return "released"
    raise AssertionError(f"unknown outcome {outcome!r}")


@dataclass(frozen=True)
class NodeGauges:
    """What a scrape reads from the node (each a cheap, thread-safe read)."""

    threads: int
    running: Callable[[], int]
    threads_alive: Callable[[], int]
    restarts: Callable[[], int]
    abandoned: Callable[[], int]
    prefetch: Callable[[], int]


class NodeMetrics:
    """A node's metric registry: the counted families and the ones read at each scrape."""

    def __init__(self, node_id: str, gauges: NodeGauges) -> None:
        self.registry = CollectorRegistry()
        labels = ["node_id", "queue", "type"]
        self._tasks = Counter(
            "dtq_worker_tasks",
            "Attempts that ended on this node, by outcome.",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "dtq_worker_task_duration_seconds",
            "Seconds from a handler's start to its attempt's outcome.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.node_id = node_id
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self.registry.register(_ScrapedFamilies(node_id, gauges))
        ProcessCollector(registry=self.registry)

    def finished(self, job: Job, outcome: Outcome, ran_s: float | None) -> None:
        """An attempt ended; ``ran_s`` is how long its handler ran (None: it never started)."""
        assignment = job.assignment
        key = (assignment.queue, assignment.type, outcome_label(outcome))
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a key: once per combination
            children = self._children[key] = (
                self._tasks.labels(self.node_id, *key),
                self._duration.labels(self.node_id, *key[:2]),
            )
        children[0].inc()
        if ran_s is not None:
            children[1].observe(ran_s)


class _ScrapedFamilies(Collector):
    """The families read from the node at each scrape."""

    def __init__(self, node_id: str, gauges: NodeGauges) -> None:
        self._node_id = node_id
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        g, node = self._gauges, [self._node_id]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["node_id"])
            family.add_metric(node, value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["node_id"])
            family.add_metric(node, value)
            return family

        yield gauge("dtq_worker_up", "1 while the node runs.", 1)
        yield gauge("dtq_worker_tasks_running", "Handlers running now.", g.running())
        yield gauge("dtq_worker_threads", "Worker threads configured (--threads).", g.threads)
        yield gauge("dtq_worker_threads_alive", "Worker threads alive now.", g.threads_alive())
        yield gauge("dtq_worker_prefetch", "Tasks held beyond the threads.", g.prefetch())
        yield counter(
            "dtq_worker_thread_restarts", "Crashed worker threads replaced.", g.restarts()
        )
        yield counter(
            "dtq_worker_threads_abandoned",
            "Threads left to a handler that ran past its timeout.",
            g.abandoned(),
        )


def serve_metrics(listen: str, metrics: NodeMetrics) -> WSGIServer:
    """Serve ``/metrics`` over HTTP on ``listen`` (``HOST:PORT``); the server, to shut down."""
    host, _, port = listen.rpartition(":")
    server, _ = _start_http_server(int(port), addr=host.strip("[]"), registry=metrics.registry)
    return server
