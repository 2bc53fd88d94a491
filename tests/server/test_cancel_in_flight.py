"""A cancel that meets another change to the same task while that change commits.

A cancel (single or bulk) takes a queued task off the board before its commit,
so no dispatch round can lease it meanwhile. A second cancel arriving in that
window found the task off the board and still QUEUED in the store, and answered
FAILED_PRECONDITION "task ... is already queued". It must answer what the first
change stores: CANCELLED, the same as a repeated cancel after the fact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, wait_until

QUEUE = "cancel-race"


def submit(tasks: TaskServiceStub) -> str:
    spec = task_pb2.TaskSpec(type="echo", queue=QUEUE, payload=task_pb2.Payload(data=b"{}"))
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task.id


def cancel_one(tasks: TaskServiceStub, task_id: str) -> Callable[[], object]:
    return lambda: tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)


def cancel_queue(tasks: TaskServiceStub, task_id: str) -> Callable[[], object]:
    return lambda: tasks.CancelTasks(task_service_pb2.CancelTasksRequest(queue=QUEUE), timeout=10)


@pytest.mark.parametrize("first", [cancel_one, cancel_queue], ids=["cancel", "bulk-cancel"])
def test_a_cancel_during_another_changes_commit_answers_cancelled(
    coordinator: InProcessCoordinator,
    tasks: TaskServiceStub,
    first: Callable[[TaskServiceStub, str], Callable[[], object]],
) -> None:
    task_id = submit(tasks)
    backlog = coordinator.writer_backlog
    release = threading.Event()
    held = coordinator.hold_writer(release)
    with ThreadPoolExecutor(2) as pool:
        second: Future[task_service_pb2.CancelTaskResponse]
        try:
            committing = pool.submit(first(tasks, task_id))
            wait_until(lambda: backlog() == 1, 10, what="the first change queued")
            second = pool.submit(
                tasks.CancelTask, task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10
            )
            # The second cancel waits for the first change's commit instead of answering
            # from the store as it was: it queues an op of its own behind it.
            wait_until(lambda: second.done() or backlog() == 2, 10, what="the second cancel")
        finally:
            release.set()
        committing.result(10)
        assert second.result(10).task.state == task_pb2.TASK_STATE_CANCELLED
    wait_until(held.done, 10, what="the writer released")
