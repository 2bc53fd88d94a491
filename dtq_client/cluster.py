"""The client's calls about the cluster: nodes, queues, rate limits and health."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from dtq.v1 import admin_service_pb2
from dtq_client import convert, retry
from dtq_client.calls import Calls
from dtq_client.errors import ProtocolError
from dtq_client.models import Node, QueueStats, RateLimit

# Every admin call below sets absolute values, so retrying one is harmless.
_ADMIN_CODES = retry.READ_CODES


class ClusterCalls(Calls):
    """Nodes, queues, rate limits and health: the :class:`~dtq_client.Client` methods."""

    # --- nodes ---------------------------------------------------------------------------

    def nodes(self, include_gone: bool = False) -> list[Node]:
        """Worker nodes ordered by id; ``include_gone`` adds recently dead or departed ones."""
        request = admin_service_pb2.ListNodesRequest(include_gone=include_gone)
        response: admin_service_pb2.ListNodesResponse = self._unary(
            self._admin.ListNodes, request, retry.READ_CODES
        )
        return [convert.node_from_proto(node) for node in response.nodes]

    def drain(self, node_id: str) -> Node:
        """Stop dispatching to a node and ask it to finish its tasks and exit.

        :class:`NodeNotFound` if no live node has that id.
        """
        request = admin_service_pb2.DrainNodeRequest(node_id=node_id)
        response: admin_service_pb2.DrainNodeResponse = self._unary(
            self._admin.DrainNode, request, retry.READ_CODES
        )
        return convert.node_from_proto(response.node)

    # --- queues --------------------------------------------------------------------------

    def queues(self) -> list[QueueStats]:
        """Task counts and settings of every queue that has tasks or settings, ordered by name."""
        request = admin_service_pb2.ListQueuesRequest()
        response: admin_service_pb2.ListQueuesResponse = self._unary(
            self._admin.ListQueues, request, retry.READ_CODES
        )
        return [convert.queue_stats_from_proto(stats) for stats in response.queues]

    def pause_queue(self, name: str) -> QueueStats:
        """Pause a queue: it keeps accepting submits but dispatches nothing. Durable.

        Tasks already running carry on. Returns the queue with its new settings.
        """
        return self._update_queue(admin_service_pb2.UpdateQueueRequest(name=name, paused=True))

    def resume_queue(self, name: str) -> QueueStats:
        """Resume a paused queue; returns the queue with its new settings."""
        return self._update_queue(admin_service_pb2.UpdateQueueRequest(name=name, paused=False))

    def set_queue_limit(self, name: str, max_running: int) -> QueueStats:
        """Cap the tasks of a queue leased or running at once, across all nodes; 0 removes the cap.

        Durable. Lowering it below what is running stops nothing: it holds
        back new dispatches until the queue is under it. Returns the queue.
        """
        request = admin_service_pb2.UpdateQueueRequest(name=name, max_running=max_running)
        return self._update_queue(request)

    def set_queue_rate_limit(self, name: str, per_second: float) -> QueueStats:
        """Dispatch at most ``per_second`` tasks of a queue per second, across all nodes.

        A token bucket holding one second's worth of tokens (at least one);
        0 removes the limit. Durable. Returns the queue with its new settings.
        """
        request = admin_service_pb2.UpdateQueueRequest(name=name, rate_limit=per_second)
        return self._update_queue(request)

    def set_queue_max_depth(self, name: str, max_depth: int) -> QueueStats:
        """Refuse submits that would take a queue past ``max_depth`` unfinished tasks.

        Counted are tasks queued (also those waiting for a retry or their
        ``run_at``), leased or running; 0 removes the limit. A refused submit
        stores nothing and raises :class:`~dtq_client.QueueFull`. Durable.
        Lowering it below the current depth removes nothing. Returns the queue.
        """
        request = admin_service_pb2.UpdateQueueRequest(name=name, max_depth=max_depth)
        return self._update_queue(request)

    def _update_queue(self, request: admin_service_pb2.UpdateQueueRequest) -> QueueStats:
        response: admin_service_pb2.UpdateQueueResponse = self._unary(
            self._admin.UpdateQueue, request, _ADMIN_CODES
        )
        return convert.queue_stats_from_proto(response.queue)

    # --- rate limits ---------------------------------------------------------------------

    def set_rate_limit(self, key: str, per_second: float, *, burst: int | None = None) -> RateLimit:
        """Limit the tasks carrying rate key ``key`` to ``per_second``, across queues and nodes.

        A token bucket of ``burst`` tokens (default: one second's worth, at
        least 1): after a quiet period up to ``burst`` tasks start at once.
        Replaces the key's previous limit; durable. Use :meth:`delete_rate_limit`
        to remove one (``per_second`` must be positive here).
        """
        if per_second == 0:
            raise ValueError("per_second 0 would remove the limit: call delete_rate_limit(key)")
        response = self._set_rate_limit(key, per_second, burst or 0)
        if not response.HasField("rate_limit"):
            raise ProtocolError(f"SetRateLimit answered no limit for key {key!r}")
        return convert.rate_limit_from_proto(response.rate_limit)

    def delete_rate_limit(self, key: str) -> None:
        """Remove the rate limit of ``key`` (its tasks are no longer throttled); no-op if none."""
        self._set_rate_limit(key, 0.0, 0)

    def _set_rate_limit(
        self, key: str, per_second: float, burst: int
    ) -> admin_service_pb2.SetRateLimitResponse:
        request = admin_service_pb2.SetRateLimitRequest(key=key, per_second=per_second, burst=burst)
        response: admin_service_pb2.SetRateLimitResponse = self._unary(
            self._admin.SetRateLimit, request, _ADMIN_CODES
        )
        return response

    def rate_limits(self) -> list[RateLimit]:
        """Every configured rate-key limit, ordered by key."""
        request = admin_service_pb2.ListRateLimitsRequest()
        response: admin_service_pb2.ListRateLimitsResponse = self._unary(
            self._admin.ListRateLimits, request, retry.READ_CODES
        )
        return [convert.rate_limit_from_proto(limit) for limit in response.rate_limits]

    # --- health --------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The standard gRPC health status: ``SERVING``, ``NOT_SERVING``, ...

        ``service`` "" asks about the coordinator as a whole.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._unary(self._health.Check, request, retry.READ_CODES)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
