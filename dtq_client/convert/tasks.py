"""Conversion of tasks, specs, groups and bulk results (``task.proto``, ``task_service.proto``)."""

from __future__ import annotations

import json
from typing import Any

from dtq.v1 import task_pb2, task_service_pb2
from dtq_client import payloads
from dtq_client.convert.scalars import (
    duration_from_proto,
    duration_to_proto,
    optional_duration,
    time_from_proto,
    time_to_proto,
)
from dtq_client.errors import ProtocolError
from dtq_client.models import (
    CancelCounts,
    DependencyFailure,
    Group,
    GroupState,
    Progress,
    RetryResult,
    SubmitAck,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
)

_TASK_STATES: dict[TaskState, task_pb2.TaskState] = {
    TaskState.WAITING: task_pb2.TASK_STATE_WAITING,
    TaskState.QUEUED: task_pb2.TASK_STATE_QUEUED,
    TaskState.LEASED: task_pb2.TASK_STATE_LEASED,
    TaskState.RUNNING: task_pb2.TASK_STATE_RUNNING,
    TaskState.SUCCEEDED: task_pb2.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: task_pb2.TASK_STATE_FAILED,
    TaskState.CANCELLED: task_pb2.TASK_STATE_CANCELLED,
}
_TASK_STATES_BACK: dict[int, TaskState] = {number: state for state, number in _TASK_STATES.items()}

_DEPENDENCY_FAILURES: dict[DependencyFailure, task_pb2.DependencyFailure] = {
    DependencyFailure.FAIL: task_pb2.DEPENDENCY_FAILURE_FAIL,
    DependencyFailure.CANCEL: task_pb2.DEPENDENCY_FAILURE_CANCEL,
}
_DEPENDENCY_FAILURES_BACK: dict[int, DependencyFailure] = {
    number: policy for policy, number in _DEPENDENCY_FAILURES.items()
}

_GROUP_STATES: dict[GroupState, task_service_pb2.GroupState] = {
    GroupState.RUNNING: task_service_pb2.GROUP_STATE_RUNNING,
    GroupState.SUCCEEDED: task_service_pb2.GROUP_STATE_SUCCEEDED,
    GroupState.FAILED: task_service_pb2.GROUP_STATE_FAILED,
    GroupState.CANCELLED: task_service_pb2.GROUP_STATE_CANCELLED,
}
_GROUP_STATES_BACK: dict[int, GroupState] = {number: s for s, number in _GROUP_STATES.items()}


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


def dependency_failure_to_proto(policy: DependencyFailure | None) -> task_pb2.DependencyFailure:
    """The wire enum for ``policy``; None is UNSPECIFIED (the coordinator's default, FAIL)."""
    if policy is None:
        return task_pb2.DEPENDENCY_FAILURE_UNSPECIFIED
    return _DEPENDENCY_FAILURES[policy]


def dependency_failure_from_proto(number: int) -> DependencyFailure | None:
    """The model enum for a wire value (UNSPECIFIED is None); unknown ones are a ProtocolError."""
    if number == task_pb2.DEPENDENCY_FAILURE_UNSPECIFIED:
        return None
    try:
        return _DEPENDENCY_FAILURES_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown dependency failure policy {number}") from exc


def group_state_from_proto(number: int) -> GroupState:
    """The model enum for a wire value; unknown values are a :class:`ProtocolError`."""
    try:
        return _GROUP_STATES_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown group state {number}") from exc


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
    return _task(
        {
            "id": message.id,
            "type": message.type,
            "queue": message.queue,
            "state": task_state_from_proto(message.state),
            "attempt": message.attempt,
            "max_attempts": message.max_attempts,
            "failures": message.failures,
            "idempotency_key": message.idempotency_key or None,
            "payload": message.payload.data,
            "content_type": message.payload.content_type or payloads.JSON,
            "result": message.result.data if has_result else None,
            "result_content_type": (
                (message.result.content_type or payloads.JSON) if has_result else ""
            ),
            "last_error": (
                task_error_from_proto(message.last_error)
                if message.HasField("last_error")
                else None
            ),
            "node_id": message.node_id or None,
            "lease_expiries": message.lease_expiries,
            "cancel_requested": message.cancel_requested,
            "progress": (
                progress_from_proto(message.progress) if message.HasField("progress") else None
            ),
            "created_at": time_from_proto(message, "create_time"),
            "updated_at": time_from_proto(message, "update_time"),
            "started_at": time_from_proto(message, "start_time"),
            "finished_at": time_from_proto(message, "finish_time"),
            "next_attempt_at": time_from_proto(message, "next_attempt_time"),
            "priority": message.priority,
            "scheduled_at": time_from_proto(message, "scheduled_time"),
            "execution_timeout_s": duration_from_proto(message, "execution_timeout"),
            "expires_at": time_from_proto(message, "expire_time"),
            "rate_key": message.rate_key or None,
            "depends_on": tuple(message.depends_on),
            "group_id": message.group_id or None,
            "submitted_by": message.submitted_by or None,
            "headers": dict(message.headers) if message.headers else {},
        },
    )


def _task(fields: dict[str, Any]) -> Task:
    """A :class:`Task` of ``fields`` (every one of its fields, none left to a default).

    The dataclass's own ``__init__`` takes 30 keyword arguments and, being
    frozen, sets each through ``object.__setattr__``: 7.5 µs a task, a third of
    converting one, on paths that convert thousands (``submit_many``'s answers,
    the submitter's stream, listings). Filling the new instance's ``__dict__``
    at once gives the same object (``__eq__``, ``__hash__``, ``repr`` and
    ``replace`` only read attributes) in under 1 µs. ``tests/client/test_convert``
    checks that every field is set.
    """
    task = object.__new__(Task)
    task.__dict__.update(fields)
    return task


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
        create_time=time_to_proto(task.created_at),
        update_time=time_to_proto(task.updated_at),
        start_time=time_to_proto(task.started_at),
        finish_time=time_to_proto(task.finished_at),
        next_attempt_time=time_to_proto(task.next_attempt_at),
        progress=None if task.progress is None else progress_to_proto(task.progress),
        failures=task.failures,
        priority=task.priority,
        scheduled_time=time_to_proto(task.scheduled_at),
        execution_timeout=optional_duration(task.execution_timeout_s),
        expire_time=time_to_proto(task.expires_at),
        rate_key=task.rate_key or "",
        depends_on=task.depends_on,
        group_id=task.group_id or "",
        submitted_by=task.submitted_by or "",
        headers=task.headers,
    )


def spec_to_proto(spec: TaskSpec) -> task_pb2.TaskSpec:
    """``dtq.v1.TaskSpec`` of a spec, encoding its payload (see :mod:`dtq_client.payloads`)."""
    message = task_pb2.TaskSpec()
    fill_spec(message, spec)
    return message


def fill_spec(message: task_pb2.TaskSpec, spec: TaskSpec) -> None:
    """Write ``spec`` into an empty ``message``, such as the ``task`` of a frame's submit.

    Field by field and only what is set (most specs set no option): this runs
    once per submit, and building sub-messages to copy them in cost as much again.
    """
    data, content_type = payloads.encode(spec.payload, spec.content_type)
    message.type = spec.type
    payload = message.payload
    payload.data, payload.content_type = data, content_type
    if spec.queue:
        message.queue = spec.queue
    if spec.max_attempts:
        message.max_attempts = spec.max_attempts
    if spec.idempotency_key:
        message.idempotency_key = spec.idempotency_key
    if spec.priority:
        message.priority = spec.priority
    if spec.rate_key:
        message.rate_key = spec.rate_key
    if spec.depends_on:
        message.depends_on.extend(spec.depends_on)
    if spec.headers:
        message.headers.update(spec.headers)
    if spec.on_dependency_failure is not None:
        message.on_dependency_failure = dependency_failure_to_proto(spec.on_dependency_failure)
    run_at = time_to_proto(spec.run_at, "run_at")
    if run_at is not None:
        message.run_at.CopyFrom(run_at)
    for name, seconds in (
        ("retry_backoff", spec.retry_backoff_s),
        ("delay", spec.delay_s),
        ("execution_timeout", spec.execution_timeout_s),
        ("schedule_to_start_timeout", spec.schedule_to_start_timeout_s),
        ("result_ttl", spec.result_ttl_s),
    ):
        if seconds is not None:
            getattr(message, name).CopyFrom(duration_to_proto(seconds, f"{name}_s"))


def spec_from_proto(message: task_pb2.TaskSpec) -> TaskSpec:
    """Model of a ``dtq.v1.TaskSpec`` (a schedule's template), decoding a JSON payload.

    A JSON payload becomes its value with ``content_type`` None when the type
    is plain ``application/json`` (or empty); any other payload, or JSON that
    does not parse, stays bytes with its content type. Either way
    ``spec_to_proto`` gives back the same payload bytes and type.
    """
    content_type = message.payload.content_type or payloads.JSON
    data = message.payload.data
    value: object = data
    spec_type: str | None = content_type
    if payloads.is_json(content_type):
        try:
            value = json.loads(data)
        except ValueError:
            value = data  # sent as-is with its (JSON) content type
        else:
            spec_type = None if content_type == payloads.JSON else content_type
    return TaskSpec(
        type=message.type,
        payload=value,
        content_type=spec_type,
        queue=message.queue or None,
        max_attempts=message.max_attempts or None,
        idempotency_key=message.idempotency_key or None,
        retry_backoff_s=duration_from_proto(message, "retry_backoff"),
        priority=message.priority,
        run_at=time_from_proto(message, "run_at"),
        delay_s=duration_from_proto(message, "delay"),
        execution_timeout_s=duration_from_proto(message, "execution_timeout"),
        schedule_to_start_timeout_s=duration_from_proto(message, "schedule_to_start_timeout"),
        result_ttl_s=duration_from_proto(message, "result_ttl"),
        rate_key=message.rate_key or None,
        depends_on=tuple(message.depends_on),
        on_dependency_failure=dependency_failure_from_proto(message.on_dependency_failure),
        headers=dict(message.headers),
    )


def submit_result_from_proto(message: task_service_pb2.SubmitTaskResponse) -> SubmitResult:
    """Model of a ``dtq.v1.SubmitTaskResponse``."""
    return SubmitResult(task=task_from_proto(message.task), created=message.created)


def submit_result_to_proto(result: SubmitResult) -> task_service_pb2.SubmitTaskResponse:
    """``dtq.v1.SubmitTaskResponse`` of a model."""
    return task_service_pb2.SubmitTaskResponse(
        task=task_to_proto(result.task), created=result.created
    )


def submit_ack_from_proto(message: task_service_pb2.SubmittedTask) -> SubmitAck:
    """Model of a ``dtq.v1.SubmittedTask`` (a SubmitTaskStream answer)."""
    return SubmitAck(
        task_id=message.task_id,
        created=message.created,
        state=task_state_from_proto(message.state),
    )


def submit_ack_to_proto(ack: SubmitAck) -> task_service_pb2.SubmittedTask:
    """``dtq.v1.SubmittedTask`` of a model."""
    return task_service_pb2.SubmittedTask(
        task_id=ack.task_id, created=ack.created, state=task_state_to_proto(ack.state)
    )


# --- groups --------------------------------------------------------------------------------


def submitted_group_to_proto(group: SubmittedGroup) -> task_service_pb2.SubmitTasksResponse:
    """``dtq.v1.SubmitTasksResponse`` of a model."""
    return task_service_pb2.SubmitTasksResponse(
        results=[submit_result_to_proto(result) for result in group.results],
        group_id=group.group_id,
    )


def group_from_proto(message: task_service_pb2.GetGroupResponse) -> Group:
    """Model of a ``dtq.v1.GetGroupResponse``."""
    return Group(
        id=message.group_id,
        state=group_state_from_proto(message.state),
        total=message.total,
        pending=message.pending,
        running=message.running,
        succeeded=message.succeeded,
        failed=message.failed,
        cancelled=message.cancelled,
        task_ids=tuple(message.task_ids),
    )


def group_to_proto(group: Group) -> task_service_pb2.GetGroupResponse:
    """``dtq.v1.GetGroupResponse`` of a model."""
    return task_service_pb2.GetGroupResponse(
        group_id=group.id,
        state=_GROUP_STATES[group.state],
        total=group.total,
        pending=group.pending,
        running=group.running,
        succeeded=group.succeeded,
        failed=group.failed,
        cancelled=group.cancelled,
        task_ids=group.task_ids,
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


def retry_result_from_proto(message: task_service_pb2.RetryTasksResponse) -> RetryResult:
    """Model of a ``dtq.v1.RetryTasksResponse``."""
    return RetryResult(
        retried=message.retried,
        skipped_task_ids=tuple(message.skipped_task_ids),
        truncated=message.truncated,
    )


def retry_result_to_proto(result: RetryResult) -> task_service_pb2.RetryTasksResponse:
    """``dtq.v1.RetryTasksResponse`` of a model."""
    return task_service_pb2.RetryTasksResponse(
        retried=result.retried,
        skipped_task_ids=result.skipped_task_ids,
        truncated=result.truncated,
    )
