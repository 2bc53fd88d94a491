"""Prometheus metrics of a coordinator (``--metrics-listen``), for dashboards and alerts.

Served by ``prometheus_client``'s own HTTP server on a thread of its own, so a
scrape never waits for the event loop to serve the page, only for the numbers:
each scrape reads them on the loop (:meth:`Metrics.collect`), the same numbers
``dtq-client queues`` and ``dtq-client nodes`` print, so the two never
disagree. Nothing is counted on the hot path.

- ``dtq_queue_tasks{queue, state}``: tasks by state (queued, waiting, running,
  succeeded, failed, cancelled; finished ones until the retention sweep);
- ``dtq_queue_paused{queue}``, ``dtq_queue_max_running{queue}``,
  ``dtq_queue_max_depth{queue}`` (settings; 0 is no limit);
- ``dtq_nodes{state}``: node sessions by state; ``dtq_node_slots`` and
  ``dtq_node_leases`` across active nodes (capacity, and what is used of it);
- ``dtq_up``: 1 while the coordinator serves;
- what fencing refused since the coordinator started (counters kept by the node
  sessions as they refuse): ``dtq_updates_rejected_total{reason}`` (a result,
  progress or start whose lease the sender does not hold: ``stale_attempt``,
  ``not_leased``, ``task_not_found``, ``session_expired``),
  ``dtq_stale_heartbeat_leases_total`` (leases a heartbeat named that its node no
  longer holds), ``dtq_node_resumes_refused_total`` (a node came back after its
  session ended) and ``dtq_nodes_expired_total`` (nodes declared dead after the
  heartbeat timeout): a zombie node or a flaky link shows here first;
- the ``process_*`` metrics of the coordinator process (CPU, memory, files).

With TLS the page is served over HTTPS with the coordinator's certificate (and
requires a client certificate under mTLS); plaintext beyond loopback needs
``--insecure``, as for the gRPC port.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dtq_server.models import NodeState, QueueStats
from dtq_server.registry import Session

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from dtq_server.config import ServerConfig
    from dtq_server.coordinator import Coordinator

SCRAPE_TIMEOUT_S = 5.0
"""How long a scrape waits for the event loop before failing (the page then errors)."""
_STATES = ("queued", "waiting", "running", "succeeded", "failed", "cancelled")
_REJECTIONS = ("stale_attempt", "not_leased", "task_not_found", "session_expired")
"""Why an update was refused, as the node's ack says (lower case): every one is
always reported, 0 until it happens, so a rate over it needs no absent series."""


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports, read on the event loop."""

    queues: list[QueueStats]
    nodes: list[Session]
    refusals: dict[str, int]
    """The node sessions' counters (``NodeSessions.counters``) at the scrape."""


class Metrics(Collector):
    """Reads a :class:`Snapshot` on the coordinator's loop for every scrape."""

    def __init__(self, coordinator: Coordinator, loop: asyncio.AbstractEventLoop) -> None:
        self._coordinator = coordinator
        self._loop = loop

    async def _snapshot(self) -> Snapshot:
        queues = await self._coordinator.queue_admin.queues()
        refusals = dict(self._coordinator.sessions.counters)
        return Snapshot(queues, self._coordinator.nodes(include_gone=False), refusals)

    def collect(self) -> Iterator[Metric]:
        """The metric families (called by prometheus_client on its HTTP thread)."""
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        snapshot = future.result(SCRAPE_TIMEOUT_S)
        yield GaugeMetricFamily("dtq_up", "1 while the coordinator serves.", value=1)
        yield from _queue_families(snapshot.queues)
        yield from _node_families(snapshot.nodes)
        yield from _refusal_families(snapshot.refusals)


def _queue_families(queues: list[QueueStats]) -> Iterator[GaugeMetricFamily]:
    tasks = GaugeMetricFamily(
        "dtq_queue_tasks", "Tasks by queue and state.", labels=["queue", "state"]
    )
    paused = GaugeMetricFamily("dtq_queue_paused", "1 if the queue is paused.", labels=["queue"])
    limit = GaugeMetricFamily(
        "dtq_queue_max_running", "The queue's concurrency limit (0: none).", labels=["queue"]
    )
    depth = GaugeMetricFamily(
        "dtq_queue_max_depth",
        "Most unfinished tasks submits may bring the queue to (0: no limit).",
        labels=["queue"],
    )
    for queue in queues:
        for state in _STATES:
            tasks.add_metric([queue.name, state], getattr(queue, state))
        paused.add_metric([queue.name], int(queue.paused))
        limit.add_metric([queue.name], queue.max_running)
        depth.add_metric([queue.name], queue.max_depth)
    yield from (tasks, paused, limit, depth)


def _node_families(sessions: list[Session]) -> Iterator[GaugeMetricFamily]:
    by_state = Counter(session.state for session in sessions)
    nodes = GaugeMetricFamily("dtq_nodes", "Node sessions by state.", labels=["state"])
    for state in NodeState:
        nodes.add_metric([state.name.lower()], by_state[state])
    active = [s for s in sessions if s.state is NodeState.ACTIVE]
    yield nodes
    yield GaugeMetricFamily(
        "dtq_node_slots", "Task slots of active nodes.", value=sum(s.node.slots for s in active)
    )
    yield GaugeMetricFamily(
        "dtq_node_leases", "Leases held by active nodes.", value=sum(len(s.leases) for s in active)
    )


def _refusal_families(counts: dict[str, int]) -> Iterator[CounterMetricFamily]:
    rejected = CounterMetricFamily(
        "dtq_updates_rejected",
        "Node updates refused by fencing, by reason.",
        labels=["reason"],
    )
    for reason in _REJECTIONS:
        rejected.add_metric([reason], counts.get(f"rejected_{reason}", 0))
    yield rejected
    yield CounterMetricFamily(
        "dtq_stale_heartbeat_leases",
        "Leases named in heartbeats that their node no longer holds.",
        value=counts.get("stale_heartbeat_leases", 0),
    )
    yield CounterMetricFamily(
        "dtq_node_resumes_refused",
        "Nodes that came back to a session that had ended.",
        value=counts.get("resume_refused", 0),
    )
    yield CounterMetricFamily(
        "dtq_nodes_expired",
        "Nodes declared dead after the heartbeat timeout.",
        value=counts.get("sessions_expired", 0),
    )


def serve_metrics(
    config: ServerConfig, coordinator: Coordinator, loop: asyncio.AbstractEventLoop
) -> WSGIServer:
    """Start serving ``/metrics`` on ``config.metrics_listen``; the server (to shut down)."""
    assert config.metrics_listen is not None
    host, _, port = config.metrics_listen.rpartition(":")
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(Metrics(coordinator, loop))
    tls = config.tls
    server, _ = start_http_server(
        int(port),
        addr=host.strip("[]") or "0.0.0.0",
        registry=registry,
        certfile=None if tls is None else str(tls.cert),
        keyfile=None if tls is None else str(tls.key),
        client_cafile=None if tls is None or tls.client_ca is None else str(tls.client_ca),
        client_auth_required=tls is not None and tls.client_ca is not None,
    )
    return server


__all__ = ["Metrics", "Snapshot", "serve_metrics"]
