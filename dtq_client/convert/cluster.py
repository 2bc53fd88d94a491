"""Conversion of nodes, queues and rate limits (``admin_service.proto``)."""

from __future__ import annotations

from dtq.v1 import admin_service_pb2, task_pb2
from dtq_client.convert.scalars import time_from_proto, time_to_proto
from dtq_client.errors import ProtocolError
from dtq_client.models import Lease, Node, NodeState, QueueStats, RateLimit

_NODE_STATES: dict[NodeState, admin_service_pb2.NodeState] = {
    NodeState.ACTIVE: admin_service_pb2.NODE_STATE_ACTIVE,
    NodeState.DRAINING: admin_service_pb2.NODE_STATE_DRAINING,
    NodeState.DISCONNECTED: admin_service_pb2.NODE_STATE_DISCONNECTED,
    NodeState.DEAD: admin_service_pb2.NODE_STATE_DEAD,
    NodeState.LEFT: admin_service_pb2.NODE_STATE_LEFT,
}
_NODE_STATES_BACK: dict[int, NodeState] = {number: state for state, number in _NODE_STATES.items()}


def node_state_from_proto(number: int) -> NodeState:
    """The model enum for a wire value; unknown values are a :class:`ProtocolError`."""
    try:
        return _NODE_STATES_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown node state {number}") from exc


def lease_from_proto(message: task_pb2.Lease) -> Lease:
    """Model of a ``dtq.v1.Lease``."""
    return Lease(task_id=message.task_id, attempt=message.attempt)


def lease_to_proto(lease: Lease) -> task_pb2.Lease:
    """``dtq.v1.Lease`` of a model."""
    return task_pb2.Lease(task_id=lease.task_id, attempt=lease.attempt)


def node_from_proto(message: admin_service_pb2.Node) -> Node:
    """Model of a ``dtq.v1.Node``."""
    return Node(
        node_id=message.node_id,
        session_id=message.session_id,
        state=node_state_from_proto(message.state),
        hostname=message.hostname,
        pid=message.pid,
        version=message.version,
        task_types=tuple(message.task_types),
        queues=tuple(message.queues),
        slots=message.slots,
        busy_slots=message.busy_slots,
        prefetch=message.prefetch,
        leases=tuple(lease_from_proto(lease) for lease in message.leases),
        supervisor_restarts=message.supervisor_restarts,
        connected_at=time_from_proto(message, "connect_time"),
        last_seen_at=time_from_proto(message, "last_seen_time"),
    )


def node_to_proto(node: Node) -> admin_service_pb2.Node:
    """``dtq.v1.Node`` of a model."""
    return admin_service_pb2.Node(
        node_id=node.node_id,
        session_id=node.session_id,
        state=_NODE_STATES[node.state],
        hostname=node.hostname,
        pid=node.pid,
        version=node.version,
        task_types=node.task_types,
        queues=node.queues,
        slots=node.slots,
        busy_slots=node.busy_slots,
        prefetch=node.prefetch,
        leases=[lease_to_proto(lease) for lease in node.leases],
        supervisor_restarts=node.supervisor_restarts,
        connect_time=time_to_proto(node.connected_at),
        last_seen_time=time_to_proto(node.last_seen_at),
    )


def queue_stats_from_proto(message: admin_service_pb2.QueueStats) -> QueueStats:
    """Model of a ``dtq.v1.QueueStats``."""
    return QueueStats(
        name=message.name,
        queued=message.queued,
        running=message.running,
        succeeded=message.succeeded,
        failed=message.failed,
        cancelled=message.cancelled,
        paused=message.paused,
        max_running=message.max_running,
        rate_limit=message.rate_limit,
        waiting=message.waiting,
        max_depth=message.max_depth,
    )


def queue_stats_to_proto(stats: QueueStats) -> admin_service_pb2.QueueStats:
    """``dtq.v1.QueueStats`` of a model."""
    return admin_service_pb2.QueueStats(
        name=stats.name,
        queued=stats.queued,
        running=stats.running,
        succeeded=stats.succeeded,
        failed=stats.failed,
        cancelled=stats.cancelled,
        paused=stats.paused,
        max_running=stats.max_running,
        rate_limit=stats.rate_limit,
        waiting=stats.waiting,
        max_depth=stats.max_depth,
    )


def rate_limit_from_proto(message: admin_service_pb2.RateLimit) -> RateLimit:
    """Model of a ``dtq.v1.RateLimit``."""
    return RateLimit(key=message.key, per_second=message.per_second, burst=message.burst)


def rate_limit_to_proto(limit: RateLimit) -> admin_service_pb2.RateLimit:
    """``dtq.v1.RateLimit`` of a model."""
    return admin_service_pb2.RateLimit(
        key=limit.key, per_second=limit.per_second, burst=limit.burst
    )
