"""Cluster calls' requests and answers, as plans both clients run.

One function per call of :class:`~dtq_client.cluster.ClusterCalls` and
:class:`~dtq_client.cluster.AsyncClusterCalls` (nodes, queues, rate limits,
health): it checks the arguments, builds the request and says how the answer
is read; see :mod:`dtq_client.plans`.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from dtq.v1 import admin_service_pb2
from dtq_client import convert, retry
from dtq_client.errors import ProtocolError
from dtq_client.models import Node, Page, QueueStats, RateLimit
from dtq_client.plans import Plan, no_answer

# Every admin call below sets absolute values, so retrying one is harmless.
_ADMIN_CODES = retry.READ_CODES
UINT32_MAX = 2**32 - 1
"""The most a queue's max_running or max_depth field carries."""

# --- nodes ---------------------------------------------------------------------------------


def nodes_page(include_gone: bool, page_token: str, page_size: int = 0) -> Plan[Page[Node]]:
    """ListNodes: a page of the worker nodes ordered by id, and the next page's token
    (``page_size`` 0: the coordinator's largest)."""
    request = admin_service_pb2.ListNodesRequest(
        include_gone=include_gone, page_token=page_token, page_size=page_size
    )
    return Plan("admin", "ListNodes", request, retry.READ_CODES, _nodes_page)


def _nodes_page(response: admin_service_pb2.ListNodesResponse) -> Page[Node]:
    nodes = tuple(convert.node_from_proto(node) for node in response.nodes)
    return Page(nodes, response.next_page_token)


def drain(node_id: str) -> Plan[Node]:
    """DrainNode: the node, now draining."""
    request = admin_service_pb2.DrainNodeRequest(node_id=node_id)
    return Plan("admin", "DrainNode", request, retry.READ_CODES, _node)


def _node(response: admin_service_pb2.DrainNodeResponse) -> Node:
    return convert.node_from_proto(response.node)


# --- queues --------------------------------------------------------------------------------


def queues_page(page_token: str, page_size: int = 0) -> Plan[Page[QueueStats]]:
    """ListQueues: a page of the queues that have tasks or settings, ordered by name, and
    the next page's token (``page_size`` 0: the coordinator's largest)."""
    request = admin_service_pb2.ListQueuesRequest(page_token=page_token, page_size=page_size)
    return Plan("admin", "ListQueues", request, retry.READ_CODES, _queues_page)


def _queues_page(
    response: admin_service_pb2.ListQueuesResponse,
) -> Page[QueueStats]:
    queues = tuple(convert.queue_stats_from_proto(stats) for stats in response.queues)
    return Page(queues, response.next_page_token)


def set_queue_paused(name: str, paused: bool) -> Plan[QueueStats]:
    """UpdateQueue pausing or resuming a queue."""
    return _update_queue(admin_service_pb2.UpdateQueueRequest(name=name, paused=paused))


def set_queue_limit(name: str, max_running: int) -> Plan[QueueStats]:
    """UpdateQueue setting a queue's cap on tasks leased or running (0: none)."""
    max_running = _uint32(max_running, "max_running")
    return _update_queue(admin_service_pb2.UpdateQueueRequest(name=name, max_running=max_running))


def set_queue_rate_limit(name: str, per_second: float) -> Plan[QueueStats]:
    """UpdateQueue setting a queue's dispatch rate limit (0: none)."""
    return _update_queue(admin_service_pb2.UpdateQueueRequest(name=name, rate_limit=per_second))


def set_queue_max_depth(name: str, max_depth: int) -> Plan[QueueStats]:
    """UpdateQueue setting the most unfinished tasks a queue holds (0: no limit)."""
    max_depth = _uint32(max_depth, "max_depth")
    return _update_queue(admin_service_pb2.UpdateQueueRequest(name=name, max_depth=max_depth))


def _uint32(value: int, name: str) -> int:
    """``value`` if the request's uint32 field can carry it (the coordinator checks its own
    limits); else ValueError naming ``name`` (protobuf's says only "Value out of range")."""
    if not 0 <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be 0 to {UINT32_MAX:,}, got {value}")
    return value


def _update_queue(request: admin_service_pb2.UpdateQueueRequest) -> Plan[QueueStats]:
    return Plan("admin", "UpdateQueue", request, _ADMIN_CODES, _updated_queue)


def _updated_queue(response: admin_service_pb2.UpdateQueueResponse) -> QueueStats:
    return convert.queue_stats_from_proto(response.queue)


# --- rate limits ---------------------------------------------------------------------------


def set_rate_limit(key: str, per_second: float, burst: int | None) -> Plan[RateLimit]:
    """SetRateLimit with a positive rate (ValueError for 0, which means delete)."""
    if per_second == 0:
        raise ValueError("per_second 0 would remove the limit: call delete_rate_limit(key)")
    request = admin_service_pb2.SetRateLimitRequest(
        key=key, per_second=per_second, burst=burst or 0
    )

    def answer(response: admin_service_pb2.SetRateLimitResponse) -> RateLimit:
        if not response.HasField("rate_limit"):
            raise ProtocolError(f"SetRateLimit answered no limit for key {key!r}")
        return convert.rate_limit_from_proto(response.rate_limit)

    return Plan("admin", "SetRateLimit", request, _ADMIN_CODES, answer)


def delete_rate_limit(key: str) -> Plan[None]:
    """SetRateLimit with rate 0, which removes the key's limit."""
    request = admin_service_pb2.SetRateLimitRequest(key=key, per_second=0.0, burst=0)
    return Plan("admin", "SetRateLimit", request, _ADMIN_CODES, no_answer)


def rate_limits_page(page_token: str) -> Plan[Page[RateLimit]]:
    """ListRateLimits: a page of the rate-key limits, ordered by key, and the next page's
    token."""
    request = admin_service_pb2.ListRateLimitsRequest(page_token=page_token)
    return Plan("admin", "ListRateLimits", request, retry.READ_CODES, _rate_limits_page)


def _rate_limits_page(
    response: admin_service_pb2.ListRateLimitsResponse,
) -> Page[RateLimit]:
    limits = tuple(convert.rate_limit_from_proto(limit) for limit in response.rate_limits)
    return Page(limits, response.next_page_token)


# --- health --------------------------------------------------------------------------------


def health(service: str) -> Plan[str]:
    """grpc.health.v1 Check: the serving status's name (``SERVING``, ...)."""
    request = health_pb2.HealthCheckRequest(service=service)
    return Plan("health", "Check", request, retry.READ_CODES, _status)


def _status(response: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
