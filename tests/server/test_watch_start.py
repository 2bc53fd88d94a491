"""Where a watch starts: from a submit's own answer, or from the store.

SubmitAndWatchTask answers a new task from the commit that stored it, so its
watch starts from that answer instead of reading the task back - unless the
coordinator's memory shows that the task changed since (then it reads).
Against a real in-process coordinator and a hand-driven node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.models import TaskRecord, TaskState
from dtq_server.store.sql_store import SqlStore
from tests.harness import InProcessCoordinator, RawNode, succeeded

SPEC = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"1"))


@pytest.fixture
def reads(coordinator: InProcessCoordinator) -> Iterator[list[str]]:
    """The task ids the coordinator reads one by one from its store, in order."""
    store = coordinator.server.store
    assert isinstance(store, SqlStore)
    seen: list[str] = []
    original = store.get

    async def counted(task_id: str) -> TaskRecord | None:
        seen.append(task_id)
        return await original(task_id)

    store.get = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        store.get = original  # type: ignore[method-assign]


def first_of_watch(
    coordinator: InProcessCoordinator, task_id: str, known: Any, reads: list[str]
) -> tuple[TaskRecord, int]:
    """The first task a watch yields, and how many store reads it took."""
    before = len(reads)

    async def first() -> TaskRecord:
        changes = coordinator.server.coordinator.watch(task_id, known)
        try:
            return await anext(changes)
        finally:
            await changes.aclose()

    record: TaskRecord = coordinator.call(first())
    return record, len(reads) - before


def test_submit_and_watch_follows_a_new_task_without_reading_it_back(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, reads: list[str]
) -> None:
    node = RawNode(coordinator.address, slots=1)
    request = task_service_pb2.SubmitAndWatchTaskRequest(task=SPEC)
    call = tasks.SubmitAndWatchTask(request, timeout=10)
    first = next(call)
    assert first.created and first.task.state == task_pb2.TASK_STATE_LEASED
    [assignment] = node.next("assignments").assignments.assignments
    assert assignment.lease.task_id == first.task.id
    node.report(succeeded(first.task.id, 1, b"1"))
    rest = list(call)
    assert [m.task.state for m in rest] == [task_pb2.TASK_STATE_SUCCEEDED]
    assert rest[0].task.result.data == b"1"
    # The commit's answer started the watch and the outcome's commit carried the task.
    assert reads == []
    node.close()


def test_a_known_task_that_changed_since_is_read_from_the_store(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, reads: list[str]
) -> None:
    answer = tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=SPEC), timeout=10).task
    queued, read = first_of_watch(coordinator, answer.id, None, reads)
    assert (queued.state, read) == (TaskState.QUEUED, 1)
    # Unchanged: the known answer is the start, no read.
    assert first_of_watch(coordinator, answer.id, queued, reads) == (queued, 0)
    # Cancelled meanwhile (off the board): the stale answer is not used.
    tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=answer.id), timeout=10)
    cancelled, read = first_of_watch(coordinator, answer.id, queued, reads)
    assert (cancelled.state, read) == (TaskState.CANCELLED, 1)


def test_a_known_task_leased_since_is_read_from_the_store(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, reads: list[str]
) -> None:
    answer = tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=SPEC), timeout=10).task
    queued, _ = first_of_watch(coordinator, answer.id, None, reads)
    node = RawNode(coordinator.address, slots=1)  # a dispatch round leases it
    [assignment] = node.next("assignments").assignments.assignments
    assert assignment.lease.task_id == answer.id
    leased, read = first_of_watch(coordinator, answer.id, queued, reads)
    assert (leased.state, leased.attempt, read) == (TaskState.LEASED, 1, 1)
    # A known answer that differs only in a field memory keeps is not used either.
    stale = dataclasses.replace(leased, cancel_requested=True)
    assert first_of_watch(coordinator, answer.id, stale, reads) == (leased, 1)
    node.close()
