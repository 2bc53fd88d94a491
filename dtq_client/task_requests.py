"""Task calls' requests and answers, shared by the blocking and the asyncio client.

:class:`~dtq_client.Client` and :class:`~dtq_client.AsyncClient` differ in how
they call the coordinator, not in what they send or how they read what comes
back: both build their requests (generated idempotency keys, submit batches,
filters) and read the answers (batch results, groups, the end of a wait) here.
Each task call that is one unary RPC (submitting one task or a group, reading,
cancelling, a page of tasks, a group's status, the bulk ``cancel_tasks``,
``retry`` and ``purge``) is a whole plan (:mod:`dtq_client.plans`), which either
client runs as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from dtq.batching import batches
from dtq.v1 import task_pb2, task_service_pb2
from dtq_client import convert, retry
from dtq_client.config import ClientConfig
from dtq_client.errors import (
    DeadlineExceeded,
    ProtocolError,
    RpcError,
    SubmitManyError,
    WaitTimeout,
)
from dtq_client.models import (
    CancelCounts,
    Group,
    RetryResult,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskPage,
    TaskSpec,
    TaskState,
)
from dtq_client.plans import Plan

SPEC_FRAMING_BYTES = 6
"""Bytes a spec adds to a SubmitTasks request beyond its own size (tag and length)."""

DEADLINE_SLACK_S = 0.05
"""A watch slice ending this close to the wait's deadline counts as the wait timing out."""

MAX_PAGE_SIZE = 1_000
"""The largest page a ListTasks call asks for."""

Stamp = Callable[[Iterable[task_pb2.TaskSpec]], None]
"""What a submit's plan calls on the specs it sends: the client's ``_stamp``, which
carries the caller's trace context when the client propagates it."""


def keyed_messages(specs: list[TaskSpec], new_key: Callable[[], str]) -> list[task_pb2.TaskSpec]:
    """``specs`` as protobuf, each with its idempotency key or ``new_key()``."""
    messages = [convert.spec_to_proto(spec) for spec in specs]
    for message in messages:
        if not message.idempotency_key:
            message.idempotency_key = new_key()
    return messages


def keyed(spec: TaskSpec, key: str) -> TaskSpec:
    """``spec`` carrying ``key`` (its own, or the one generated for it)."""
    return spec if spec.idempotency_key == key else replace(spec, idempotency_key=key)


def wants_acks(answer: str) -> bool:
    """True for ``submit_many(..., answer="ack")``; ValueError for an unknown answer."""
    if answer not in ("task", "ack"):
        raise ValueError(f"answer must be 'task' or 'ack', not {answer!r}")
    return answer == "ack"


def submit_batches(
    messages: list[task_pb2.TaskSpec], config: ClientConfig, *, acks: bool
) -> list[task_service_pb2.SubmitTasksRequest]:
    """The SubmitTasks requests of ``submit_many``: ``config``'s batch limits, in order."""
    wanted = task_service_pb2.SUBMIT_ANSWER_ACK if acks else task_service_pb2.SUBMIT_ANSWER_TASK
    return [
        task_service_pb2.SubmitTasksRequest(tasks=batch, answer=wanted)
        for batch in batches(
            messages,
            lambda message: message.ByteSize() + SPEC_FRAMING_BYTES,
            max_count=config.submit_batch_size,
            max_bytes=config.submit_batch_bytes,
        )
    ]


def batch_answers(
    request: task_service_pb2.SubmitTasksRequest,
    response: task_service_pb2.SubmitTasksResponse,
    *,
    acks: bool,
) -> list[Any]:
    """One batch's answers as models: SubmitAck with ``acks``, SubmitResult otherwise."""
    entries: Sequence[Any] = response.acks if acks else response.results
    if len(entries) != len(request.tasks):
        answer = "ack" if acks else "task"
        raise ProtocolError(
            f"SubmitTasks answered {len(entries)} {answer}s for {len(request.tasks)} tasks"
        )
    to_model: Callable[[Any], Any] = (
        convert.submit_ack_from_proto if acks else convert.submit_result_from_proto
    )
    return [to_model(entry) for entry in entries]


def partial_failure(
    error: RpcError,
    specs: list[TaskSpec],
    messages: list[task_pb2.TaskSpec],
    stored: list[Any],
    *,
    acks: bool,
) -> SubmitManyError:
    """The error of a ``submit_many`` whose batch failed after ``stored`` answers.

    The pending specs keep the idempotency keys they were sent with, so that
    submitting them again can never create a task twice.
    """
    done = len(stored)
    pending = [
        keyed(spec, message.idempotency_key)
        for spec, message in zip(specs[done:], messages[done:], strict=True)
    ]
    if acks:
        return SubmitManyError(error, acks=stored, pending=pending, offset=done)
    return SubmitManyError(error, results=stored, pending=pending, offset=done)


def submit_task(spec: TaskSpec, stamp: Stamp) -> Plan[Task]:
    """SubmitTask: one task, as stored. Its idempotency key must be set: a retry after a
    lost answer then returns the task the first attempt stored."""
    request = task_service_pb2.SubmitTaskRequest(task=convert.spec_to_proto(spec))
    stamp((request.task,))
    return Plan("tasks", "SubmitTask", request, retry.SUBMIT_CODES, _task)


def submit_group(
    specs: Iterable[TaskSpec], stamp: Stamp, new_key: Callable[[], str]
) -> Plan[SubmittedGroup]:
    """SubmitTasks of ``specs`` as one group, in one request: all stored, or none."""
    messages = keyed_messages(list(specs), new_key)
    stamp(messages)
    request = task_service_pb2.SubmitTasksRequest(tasks=messages, group=True)
    answer = partial(_submitted_group, request)
    return Plan("tasks", "SubmitTasks", request, retry.SUBMIT_CODES, answer)


def _submitted_group(
    request: task_service_pb2.SubmitTasksRequest, response: task_service_pb2.SubmitTasksResponse
) -> SubmittedGroup:
    """The answer of a grouped SubmitTasks call as a model."""
    if len(response.results) != len(request.tasks):
        raise ProtocolError(
            f"SubmitTasks answered {len(response.results)} results for {len(request.tasks)} tasks"
        )
    results = tuple(convert.submit_result_from_proto(r) for r in response.results)
    return SubmittedGroup(group_id=_stored_group_id(response.group_id, results), results=results)


def _stored_group_id(answered: str, results: Iterable[SubmitResult]) -> str:
    """The group the stored tasks are in: normally the one SubmitTasks answered.

    When a retried submit found every task already stored (the first attempt
    committed but its answer was lost), the coordinator answers a fresh group
    id that no task has; the tasks' own group id is then the right one.
    """
    groups = {result.task.group_id for result in results}
    if answered in groups or len(groups) != 1:
        return answered
    [stored] = groups
    return stored or answered


def state_filter(state: TaskState | str | None) -> task_pb2.TaskState:
    """The wire value of a state filter given as a model enum or its name; None is any state."""
    return convert.task_state_to_proto(None if state is None else TaskState(state))


def get_group(group_id: str) -> Plan[Group]:
    """GetGroup: the aggregate status of a group."""
    request = task_service_pb2.GetGroupRequest(group_id=group_id)
    return Plan("tasks", "GetGroup", request, retry.READ_CODES, convert.group_from_proto)


def get_task(task_id: str) -> Plan[Task]:
    """GetTask: the task with ``task_id``."""
    request = task_service_pb2.GetTaskRequest(task_id=task_id)
    return Plan("tasks", "GetTask", request, retry.READ_CODES, _task)


def cancel_task(task_id: str) -> Plan[Task]:
    """CancelTask: the task, cancelled or asked to stop."""
    request = task_service_pb2.CancelTaskRequest(task_id=task_id)
    return Plan("tasks", "CancelTask", request, retry.READ_CODES, _task)


def _task(
    response: task_service_pb2.SubmitTaskResponse
    | task_service_pb2.GetTaskResponse
    | task_service_pb2.CancelTaskResponse,
) -> Task:
    return convert.task_from_proto(response.task)


def list_tasks(
    queue: str | None,
    state: TaskState | str | None,
    type: str | None,
    page_size: int,
    headers: Mapping[str, str] | None,
    page_token: str,
) -> Plan[TaskPage]:
    """ListTasks: one page of the tasks matching these filters (the coordinator checks the
    page size and the token)."""
    request = task_service_pb2.ListTasksRequest(
        queue=queue or "",
        state=state_filter(state),
        type=type or "",
        page_size=page_size,
        headers=headers or {},
        page_token=page_token,
    )
    return Plan("tasks", "ListTasks", request, retry.READ_CODES, _task_page)


def _task_page(response: task_service_pb2.ListTasksResponse) -> TaskPage:
    tasks = tuple(convert.task_from_proto(message) for message in response.tasks)
    return TaskPage(tasks=tasks, next_page_token=response.next_page_token)


def page_size(limit: int) -> int:
    """The ListTasks page size for at most ``limit`` tasks; ValueError below 1."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_PAGE_SIZE)


def cancel_tasks(
    queue: str | None, type: str | None, state: TaskState | str | None
) -> Plan[CancelCounts]:
    """CancelTasks: every unfinished task matching the filters (the coordinator wants a
    queue or a type)."""
    request = task_service_pb2.CancelTasksRequest(
        queue=queue or "", type=type or "", state=state_filter(state)
    )
    return Plan("tasks", "CancelTasks", request, retry.READ_CODES, convert.cancel_counts_from_proto)


def retry_tasks(
    task_ids: Iterable[str] | None,
    queue: str | None,
    type: str | None,
    state: TaskState | str | None,
) -> Plan[RetryResult]:
    """RetryTasks: the tasks ``task_ids`` or those matching a filter, not both.

    TypeError for one string as ``task_ids``, ValueError for ids and a filter.
    """
    if isinstance(task_ids, str):
        raise TypeError("task_ids must be a collection of ids, not one string")
    ids = [] if task_ids is None else list(task_ids)
    if ids and (queue or type or state):
        raise ValueError("give task ids or a filter (queue, type, state), not both")
    request = task_service_pb2.RetryTasksRequest(
        task_ids=ids, queue=queue or "", type=type or "", state=state_filter(state)
    )
    return Plan("tasks", "RetryTasks", request, retry.READ_CODES, convert.retry_result_from_proto)


def purge_tasks(state: TaskState | str, queue: str | None, type: str | None) -> Plan[int]:
    """PurgeTasks: the finished tasks in ``state`` of ``queue`` and/or ``type``; how many."""
    request = task_service_pb2.PurgeTasksRequest(
        queue=queue or "", type=type or "", state=state_filter(state)
    )
    return Plan("tasks", "PurgeTasks", request, retry.READ_CODES, _deleted)


def _deleted(response: task_service_pb2.PurgeTasksResponse) -> int:
    return response.deleted


def raise_if_expired(exc: DeadlineExceeded, deadline: float | None, timeout: WaitTimeout) -> None:
    """Raise ``timeout`` if a watch's DEADLINE_EXCEEDED means the whole wait ran out.

    Otherwise only the stream's own slice (``watch_renew_s``) ended, and the
    caller reopens it.
    """
    if deadline is not None and deadline - time.monotonic() < DEADLINE_SLACK_S:
        raise timeout from exc
