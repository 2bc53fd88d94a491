"""Protobuf <-> model conversion: with the client's calls, the only code that sees ``_pb2`` types.

Conversions go both ways so that the CLI can print any model in the proto3
JSON mapping (:func:`to_json`). On the way in, an empty content type becomes
``application/json`` (its meaning on the wire), so ``from_proto(to_proto(x)) == x``
holds for every model while ``to_proto(from_proto(m))`` may spell that default out.
A naive ``datetime`` going out (such as a spec's ``run_at``) is local time, as
``datetime.timestamp()`` reads it; every ``datetime`` coming in is aware UTC.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq_client import payloads
from dtq_client.errors import ProtocolError
from dtq_client.models import (
    CancelCounts,
    Lease,
    Node,
    NodeState,
    Progress,
    QueueStats,
    SubmitResult,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
)

_TASK_STATES: dict[TaskState, task_pb2.TaskState] = {
    TaskState.QUEUED: task_pb2.TASK_STATE_QUEUED,
    TaskState.LEASED: task_pb2.TASK_STATE_LEASED,
    TaskState.RUNNING: task_pb2.TASK_STATE_RUNNING,
    TaskState.SUCCEEDED: task_pb2.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: task_pb2.TASK_STATE_FAILED,
    TaskState.CANCELLED: task_pb2.TASK_STATE_CANCELLED,
}
_TASK_STATES_BACK: dict[int, TaskState] = {number: state for state, number in _TASK_STATES.items()}

_NODE_STATES: dict[NodeState, admin_service_pb2.NodeState] = {
    NodeState.ACTIVE: admin_service_pb2.NODE_STATE_ACTIVE,
    NodeState.DRAINING: admin_service_pb2.NODE_STATE_DRAINING,
    NodeState.DISCONNECTED: admin_service_pb2.NODE_STATE_DISCONNECTED,
    NodeState.DEAD: admin_service_pb2.NODE_STATE_DEAD,
    NodeState.LEFT: admin_service_pb2.NODE_STATE_LEFT,
}
_NODE_STATES_BACK: dict[int, NodeState] = {number: state for state, number in _NODE_STATES.items()}

Model = Task | TaskSpec | SubmitResult | Node | Lease | QueueStats | CancelCounts
"""Everything :func:`to_message` and :func:`to_json` accept."""


# --- enums ---------------------------------------------------------------------------------


def task_state_to_proto(state: TaskState | None) -> task_pb2.TaskState:
    """The wire enum for ``state``; None is ``TASK_STATE_UNSPECIFIED`` ("any" in filters)."""
    return task_pb2.TASK_STATE_UNSPECIFIED if state is None else _TASK_STATES[state]


def task_state_from_proto(number: int) -> TaskState:
    """The model enum for a wire value; unknown values are a :class:`ProtocolError`."""
    try:
        return _TASK_STATES_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown task state {number}") from exc


def node_state_from_proto(number: int) -> NodeState:
    """The model enum for a wire value; unknown values are a :class:`ProtocolError`."""
    try:
        return _NODE_STATES_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown node state {number}") from exc


# --- scalars -------------------------------------------------------------------------------


def _time_from_proto(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _time_to_proto(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    # FromDatetime would read a naive value as UTC; astimezone reads it as local time.
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def duration_to_proto(seconds: float) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` of ``seconds``, to the nanosecond."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _optional_duration(seconds: float | None) -> duration_pb2.Duration | None:
    return None if seconds is None else duration_to_proto(seconds)


def _duration_from_proto(message: Message, name: str) -> float | None:
    if not message.HasField(name):
        return None
    duration: duration_pb2.Duration = getattr(message, name)
    return duration.ToNanoseconds() / 1e9


# --- tasks ---------------------------------------------------------------------------------


def task_error_from_proto(message: task_pb2.TaskError) -> TaskError:
    """Model of a ``dtq.v1.TaskError``."""
    return TaskError(
        type=message.type,
        message=message.message,
        traceback=message.traceback,
        retryable=message.retryable,
    )


def task_error_to_proto(error: TaskError) -> task_pb2.TaskError:
    """``dtq.v1.TaskError`` of a model."""
    return task_pb2.TaskError(
        type=error.type,
        message=error.message,
        traceback=error.traceback,
        retryable=error.retryable,
    )


def progress_from_proto(message: task_pb2.TaskProgress) -> Progress:
    """Model of a ``dtq.v1.TaskProgress``; a negative percent means unknown."""
    percent = message.percent if message.percent >= 0 else None
    return Progress(percent=percent, message=message.message)


def progress_to_proto(progress: Progress) -> task_pb2.TaskProgress:
    """``dtq.v1.TaskProgress`` of a model; an unknown percent is sent as -1."""
    percent = -1.0 if progress.percent is None else progress.percent
    return task_pb2.TaskProgress(percent=percent, message=progress.message)


def task_from_proto(message: task_pb2.Task) -> Task:
    """Model of a ``dtq.v1.Task``."""
    has_result = message.HasField("result")
    return Task(
        id=message.id,
        type=message.type,
        queue=message.queue,
        state=task_state_from_proto(message.state),
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        failures=message.failures,
        idempotency_key=message.idempotency_key or None,
        payload=message.payload.data,
        content_type=message.payload.content_type or payloads.JSON,
        result=message.result.data if has_result else None,
        result_content_type=(message.result.content_type or payloads.JSON) if has_result else "",
        last_error=(
            task_error_from_proto(message.last_error) if message.HasField("last_error") else None
        ),
        node_id=message.node_id or None,
        lease_expiries=message.lease_expiries,
        cancel_requested=message.cancel_requested,
        progress=progress_from_proto(message.progress) if message.HasField("progress") else None,
        created_at=_time_from_proto(message, "create_time"),
        updated_at=_time_from_proto(message, "update_time"),
        started_at=_time_from_proto(message, "start_time"),
        finished_at=_time_from_proto(message, "finish_time"),
        next_attempt_at=_time_from_proto(message, "next_attempt_time"),
        priority=message.priority,
        scheduled_at=_time_from_proto(message, "scheduled_time"),
        execution_timeout_s=_duration_from_proto(message, "execution_timeout"),
        expires_at=_time_from_proto(message, "expire_time"),
        rate_key=message.rate_key or None,
    )


def task_to_proto(task: Task) -> task_pb2.Task:
    """``dtq.v1.Task`` of a model."""
    result = (
        None
        if task.result is None
        else task_pb2.Payload(data=task.result, content_type=task.result_content_type)
    )
    return task_pb2.Task(
        id=task.id,
        type=task.type,
        queue=task.queue,
        payload=task_pb2.Payload(data=task.payload, content_type=task.content_type),
        state=task_state_to_proto(task.state),
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        idempotency_key=task.idempotency_key or "",
        result=result,
        last_error=None if task.last_error is None else task_error_to_proto(task.last_error),
        node_id=task.node_id or "",
        lease_expiries=task.lease_expiries,
        cancel_requested=task.cancel_requested,
        create_time=_time_to_proto(task.created_at),
        update_time=_time_to_proto(task.updated_at),
        start_time=_time_to_proto(task.started_at),
        finish_time=_time_to_proto(task.finished_at),
        next_attempt_time=_time_to_proto(task.next_attempt_at),
        progress=None if task.progress is None else progress_to_proto(task.progress),
        failures=task.failures,
        priority=task.priority,
        scheduled_time=_time_to_proto(task.scheduled_at),
        execution_timeout=_optional_duration(task.execution_timeout_s),
        expire_time=_time_to_proto(task.expires_at),
        rate_key=task.rate_key or "",
    )


def spec_to_proto(spec: TaskSpec) -> task_pb2.TaskSpec:
    """``dtq.v1.TaskSpec`` of a spec, encoding its payload (see :mod:`dtq_client.payloads`)."""
    data, content_type = payloads.encode(spec.payload, spec.content_type)
    return task_pb2.TaskSpec(
        type=spec.type,
        queue=spec.queue or "",
        payload=task_pb2.Payload(data=data, content_type=content_type),
        max_attempts=spec.max_attempts or 0,
        idempotency_key=spec.idempotency_key or "",
        retry_backoff=_optional_duration(spec.retry_backoff_s),
        priority=spec.priority,
        run_at=_time_to_proto(spec.run_at),
        delay=_optional_duration(spec.delay_s),
        execution_timeout=_optional_duration(spec.execution_timeout_s),
        schedule_to_start_timeout=_optional_duration(spec.schedule_to_start_timeout_s),
        result_ttl=_optional_duration(spec.result_ttl_s),
        rate_key=spec.rate_key or "",
    )


def submit_result_from_proto(message: task_service_pb2.SubmitTaskResponse) -> SubmitResult:
    """Model of a ``dtq.v1.SubmitTaskResponse``."""
    return SubmitResult(task=task_from_proto(message.task), created=message.created)


def submit_result_to_proto(result: SubmitResult) -> task_service_pb2.SubmitTaskResponse:
    """``dtq.v1.SubmitTaskResponse`` of a model."""
    return task_service_pb2.SubmitTaskResponse(
        task=task_to_proto(result.task), created=result.created
    )


# --- nodes and queues ----------------------------------------------------------------------


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
        leases=tuple(lease_from_proto(lease) for lease in message.leases),
        supervisor_restarts=message.supervisor_restarts,
        connected_at=_time_from_proto(message, "connect_time"),
        last_seen_at=_time_from_proto(message, "last_seen_time"),
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
        leases=[lease_to_proto(lease) for lease in node.leases],
        supervisor_restarts=node.supervisor_restarts,
        connect_time=_time_to_proto(node.connected_at),
        last_seen_time=_time_to_proto(node.last_seen_at),
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
    )


# --- bulk operations -----------------------------------------------------------------------


def cancel_counts_from_proto(message: task_service_pb2.CancelTasksResponse) -> CancelCounts:
    """Model of a ``dtq.v1.CancelTasksResponse``."""
    return CancelCounts(cancelled=message.cancelled, cancel_requested=message.cancel_requested)


def cancel_counts_to_proto(counts: CancelCounts) -> task_service_pb2.CancelTasksResponse:
    """``dtq.v1.CancelTasksResponse`` of a model."""
    return task_service_pb2.CancelTasksResponse(
        cancelled=counts.cancelled, cancel_requested=counts.cancel_requested
    )


def retried_to_json(retried: int) -> dict[str, Any]:
    """The proto3 JSON mapping of a ``dtq.v1.RetryTasksResponse``."""
    return _message_json(task_service_pb2.RetryTasksResponse(retried=retried))


def deleted_to_json(deleted: int) -> dict[str, Any]:
    """The proto3 JSON mapping of a ``dtq.v1.PurgeTasksResponse``."""
    return _message_json(task_service_pb2.PurgeTasksResponse(deleted=deleted))


# --- JSON view -----------------------------------------------------------------------------


def to_message(model: Model) -> Message:
    """The protobuf message of any model."""
    match model:
        case Task():
            return task_to_proto(model)
        case TaskSpec():
            return spec_to_proto(model)
        case SubmitResult():
            return submit_result_to_proto(model)
        case Node():
            return node_to_proto(model)
        case Lease():
            return lease_to_proto(model)
        case QueueStats():
            return queue_stats_to_proto(model)
        case CancelCounts():
            return cancel_counts_to_proto(model)


def to_json(model: Model) -> dict[str, Any]:
    """The proto3 JSON mapping of ``model``, with decoded JSON payloads.

    Fields at their default value are included, so that scripts can rely on
    every key being present. Every ``Payload`` whose content type is JSON (or
    empty) also gets a ``"json"`` key holding the decoded value next to
    ``data`` (base64) and ``contentType``.
    """
    return _message_json(to_message(model))


def _message_json(message: Message) -> dict[str, Any]:
    data = MessageToDict(message, always_print_fields_with_no_presence=True)
    _add_decoded_payloads(message, data)
    return data


def _add_decoded_payloads(message: Message, data: dict[str, Any]) -> None:
    if isinstance(message, task_pb2.Payload):
        if payloads.is_json(message.content_type):
            # Not valid JSON despite its type: show only the raw data.
            with contextlib.suppress(ValueError):
                data["json"] = json.loads(message.data)
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.json_name not in data:
            continue
        if field.message_type.GetOptions().map_entry:
            continue  # no map in dtq.v1 holds a payload
        if field.is_repeated:
            for item, item_data in zip(value, data[field.json_name], strict=True):
                _add_decoded_payloads(item, item_data)
        else:
            _add_decoded_payloads(value, data[field.json_name])
