"""The protobuf edge: ``dtq.v1`` messages to and from :mod:`dtq_worker.models`.

Nothing else in the worker imports ``dtq.v1`` message types, so the ledger,
supervisor and runner stay plain Python and testable without gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from google.protobuf import duration_pb2, timestamp_pb2

from dtq.batching import batches
from dtq.v1 import task_pb2, worker_service_pb2
from dtq_worker.models import (
    Assignment,
    AssignmentsReceived,
    CancelRequested,
    DrainRequested,
    Failed,
    HeartbeatAcked,
    HeartbeatInfo,
    Inbound,
    Lease,
    Payload,
    Progress,
    Registered,
    Registration,
    Released,
    Started,
    Succeeded,
    Update,
    UpdateAck,
    UpdatesAcked,
)

FRAME_BUDGET_BYTES = 2 * 1024 * 1024
"""Target size of one TaskUpdates frame: well under the coordinator's 4 MiB receive limit."""

# --- node -> coordinator ------------------------------------------------------------------


def _lease_pb(lease: Lease) -> task_pb2.Lease:
    return task_pb2.Lease(task_id=lease.task_id, attempt=lease.attempt)


def register_request(registration: Registration) -> worker_service_pb2.ConnectRequest:
    """The first message of every stream."""
    return worker_service_pb2.ConnectRequest(
        register=worker_service_pb2.RegisterNode(
            node_id=registration.node_id,
            hostname=registration.hostname,
            pid=registration.pid,
            version=registration.version,
            task_types=registration.task_types,
            queues=registration.queues,
            slots=registration.slots,
            resume_session_id=registration.resume_session_id,
            leases=[_lease_pb(lease) for lease in registration.leases],
            prefetch=registration.prefetch,
        )
    )


def heartbeat_request(
    sequence: int, info: HeartbeatInfo, wall_time_s: float
) -> worker_service_pb2.ConnectRequest:
    """A heartbeat carrying every held lease."""
    node_time = timestamp_pb2.Timestamp()
    node_time.FromNanoseconds(int(wall_time_s * 1e9))
    return worker_service_pb2.ConnectRequest(
        heartbeat=worker_service_pb2.Heartbeat(
            sequence=sequence,
            leases=[_lease_pb(lease) for lease in info.leases],
            supervisor_restarts=info.supervisor_restarts,
            node_time=node_time,
            prefetch=info.prefetch,
        )
    )


def leave_request(reason: str) -> worker_service_pb2.ConnectRequest:
    """The last message of a stream: end the session now."""
    return worker_service_pb2.ConnectRequest(leave=worker_service_pb2.Leave(reason=reason))


def _fill(message: worker_service_pb2.TaskUpdate, update: Update) -> None:
    """Write ``update`` into ``message`` in place (several times faster than nesting
    constructors, and this runs twice per task)."""
    message.lease.task_id = update.lease.task_id
    message.lease.attempt = update.lease.attempt
    match update.change:
        case Started():
            message.started.SetInParent()
        case Progress(percent, text):
            message.progress.percent = percent
            message.progress.message = text
        case Succeeded(result):
            message.succeeded.result.data = result.data
            message.succeeded.result.content_type = result.content_type
        case Failed(error, cancelled, retry_after_s):
            failed = message.failed
            failed.error.type = error.type
            failed.error.message = error.message
            failed.error.traceback = error.traceback
            failed.error.retryable = error.retryable
            failed.cancelled = cancelled
            if retry_after_s is not None:
                failed.retry_after.FromNanoseconds(round(retry_after_s * 1e9))
        case Released(reason):
            message.released.reason = reason


def _cost(update: Update) -> int:
    """An upper bound of the update's encoded size (text counted at 4 bytes a character)."""
    size = 4 * len(update.lease.task_id) + 24
    match update.change:
        case Progress(_, text):
            size += 4 * len(text) + 16
        case Succeeded(result):
            size += len(result.data) + 4 * len(result.content_type) + 16
        case Failed(error, _):
            size += 4 * (len(error.type) + len(error.message) + len(error.traceback)) + 32
        case Released(reason):
            size += 4 * len(reason) + 8
    return size


def update_frames(
    updates: Sequence[Update], budget_bytes: int = FRAME_BUDGET_BYTES
) -> Iterator[worker_service_pb2.ConnectRequest]:
    """``updates`` as few TaskUpdates frames as fit in ``budget_bytes`` each, in order.

    An update larger than the budget on its own still goes out, alone in its frame.
    """
    for run in batches(updates, _cost, max_bytes=budget_bytes):
        frame = worker_service_pb2.ConnectRequest()
        for update in run:
            _fill(frame.updates.updates.add(), update)
        yield frame


# --- coordinator -> node ------------------------------------------------------------------


def _lease(message: task_pb2.Lease) -> Lease:
    return Lease(task_id=message.task_id, attempt=message.attempt)


def _leases(messages: Iterable[task_pb2.Lease]) -> tuple[Lease, ...]:
    return tuple(_lease(m) for m in messages)


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _assignment(message: worker_service_pb2.TaskAssignment) -> Assignment:
    return Assignment(
        lease=_lease(message.lease),
        type=message.type,
        queue=message.queue,
        payload=Payload(data=message.payload.data, content_type=message.payload.content_type),
        max_attempts=message.max_attempts,
        execution_timeout_s=(
            _seconds(message.execution_timeout) if message.HasField("execution_timeout") else None
        ),
        # Most tasks have none: skip the copy (0.9 against 0.15 µs).
        headers=dict(message.headers) if message.headers else {},
    )


def inbound(response: worker_service_pb2.ConnectResponse) -> Inbound | None:
    """The plain form of a coordinator message; None for a kind this node does not know."""
    kind = response.WhichOneof("message")
    if kind == "assignments":
        return AssignmentsReceived(tuple(_assignment(a) for a in response.assignments.assignments))
    if kind == "update_acks":
        return UpdatesAcked(
            tuple(
                UpdateAck(
                    lease=_lease(ack.lease),
                    accepted=ack.accepted,
                    reason=ack.reason,
                    message=ack.message,
                )
                for ack in response.update_acks.acks
            )
        )
    if kind == "heartbeat_ack":
        ack = response.heartbeat_ack
        return HeartbeatAcked(sequence=ack.sequence, stale_leases=_leases(ack.stale_leases))
    if kind == "cancel":
        return CancelRequested(_leases(response.cancel.leases))
    if kind == "drain":
        return DrainRequested()
    if kind == "registered":
        registered = response.registered
        return Registered(
            session_id=registered.session_id,
            heartbeat_interval_s=_seconds(registered.heartbeat_interval),
            heartbeat_timeout_s=_seconds(registered.heartbeat_timeout),
            resumed=registered.resumed,
            stale_leases=_leases(registered.stale_leases),
            max_result_bytes=registered.max_result_bytes,
        )
    return None
