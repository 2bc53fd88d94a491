"""Task dependencies and groups against a real coordinator (and a restart)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1 import task_service_pb2 as ts
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, RawNode, failed, succeeded, wait_until

WAITING, QUEUED, SUCCEEDED, FAILED, CANCELLED = (
    task_pb2.TASK_STATE_WAITING,
    task_pb2.TASK_STATE_QUEUED,
    task_pb2.TASK_STATE_SUCCEEDED,
    task_pb2.TASK_STATE_FAILED,
    task_pb2.TASK_STATE_CANCELLED,
)


def submit(tasks: TaskServiceStub, **fields: Any) -> task_pb2.Task:
    spec = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"{}"), **fields)
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task


def state(tasks: TaskServiceStub, task_id: str) -> int:
    return tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task.state


def run_one(node: RawNode, ok: bool = True) -> str:
    (a,) = node.next("assignments").assignments.assignments
    if ok:
        node.report(succeeded(a.lease.task_id, a.lease.attempt, b"1"))
    else:
        node.report(failed(a.lease.task_id, a.lease.attempt, retryable=False))
    node.next("update_acks")
    return str(a.lease.task_id)


def test_a_task_runs_only_after_all_its_dependencies_succeed(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    a, b = submit(tasks).id, submit(tasks).id
    child = submit(tasks, depends_on=[a, b])
    assert child.state == WAITING
    assert list(child.depends_on) == [a, b]
    node = RawNode(coordinator.address, auto_heartbeat=True)
    assert run_one(node) == a
    assert state(tasks, child.id) == WAITING
    assert run_one(node) == b
    assert run_one(node) == child.id  # unblocked by the last success
    node.close()


def test_a_failed_dependency_cascades_by_policy(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    parent = submit(tasks, max_attempts=1).id
    fails = submit(tasks, depends_on=[parent]).id
    cancels = submit(
        tasks, depends_on=[parent], on_dependency_failure=task_pb2.DEPENDENCY_FAILURE_CANCEL
    ).id
    grandchild = submit(tasks, depends_on=[fails]).id
    node = RawNode(coordinator.address, auto_heartbeat=True)
    assert run_one(node, ok=False) == parent
    wait_until(lambda: state(tasks, grandchild) == FAILED, 5, what="cascade")
    assert state(tasks, fails) == FAILED
    assert state(tasks, cancels) == CANCELLED
    got = tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=grandchild), timeout=10).task
    assert got.last_error.type == "DEPENDENCY_FAILED"
    # A task submitted after its dependency failed fails at once.
    late = submit(tasks, depends_on=[parent])
    assert late.state == FAILED
    node.close()


def test_cancelling_a_waiting_task_and_bad_dependencies(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    parent = submit(tasks, queue="nobody").id
    child = submit(tasks, queue="nobody", depends_on=[parent]).id
    response = tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=child), timeout=10)
    assert response.task.state == CANCELLED
    other = submit(tasks, queue="nobody", depends_on=[parent]).id
    bulk = tasks.CancelTasks(task_service_pb2.CancelTasksRequest(queue="nobody"), timeout=10)
    assert bulk.cancelled == 2  # the parent (queued) and `other` (waiting)
    assert state(tasks, other) == CANCELLED
    for deps, field in [
        (["00000000-0000-4000-8000-000000000000"], "task.depends_on[0]"),
        (["not-an-id"], "task.depends_on[0]"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            submit(tasks, depends_on=deps)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")


def test_group_status_aggregates_its_members(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    specs = [task_pb2.TaskSpec(type="echo", queue="grouped") for _ in range(3)]
    response = tasks.SubmitTasks(ts.SubmitTasksRequest(tasks=specs, group=True), timeout=10)
    group_id = response.group_id
    assert group_id and all(r.task.group_id == group_id for r in response.results)
    group = tasks.GetGroup(ts.GetGroupRequest(group_id=group_id), timeout=10)
    assert (group.state, group.total, group.pending) == (ts.GROUP_STATE_RUNNING, 3, 3)
    node = RawNode(coordinator.address, queues=("grouped",), auto_heartbeat=True)
    run_one(node)
    run_one(node)
    run_one(node, ok=False)
    group = tasks.GetGroup(ts.GetGroupRequest(group_id=group_id), timeout=10)
    assert (group.state, group.succeeded, group.failed) == (ts.GROUP_STATE_FAILED, 2, 1)
    assert list(group.task_ids) == [r.task.id for r in response.results]
    with pytest.raises(grpc.RpcError) as info:
        tasks.GetGroup(ts.GetGroupRequest(group_id="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    node.close()


def test_waiting_tasks_survive_a_restart(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        parent = submit(tasks).id
        child = submit(tasks, depends_on=[parent]).id
    coordinator.stop()
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        assert state(tasks, child) == WAITING
        node = RawNode(coordinator.address, auto_heartbeat=True)
        assert run_one(node) == parent
        assert run_one(node) == child
        node.close()


def test_a_retried_group_submit_answers_the_stored_group(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    specs = [
        task_pb2.TaskSpec(type="echo", queue="retried", idempotency_key=f"g-{i}") for i in range(3)
    ]
    first = tasks.SubmitTasks(ts.SubmitTasksRequest(tasks=specs, group=True), timeout=10)
    again = tasks.SubmitTasks(ts.SubmitTasksRequest(tasks=specs, group=True), timeout=10)
    assert not any(r.created for r in again.results)
    assert again.group_id == first.group_id
    group = tasks.GetGroup(ts.GetGroupRequest(group_id=again.group_id), timeout=10)
    assert group.total == 3
