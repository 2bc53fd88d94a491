"""Task lifecycle features against a real coordinator: priorities, schedules, timeouts,
queue pause and concurrency limits, bulk cancel/retry/purge, retention."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.store.schema import SCHEMA, SCHEMA_VERSION
from tests.harness import InProcessCoordinator, RawNode, failed, succeeded, wait_until

QUEUED, FAILED, CANCELLED, SUCCEEDED = (
    task_pb2.TASK_STATE_QUEUED,
    task_pb2.TASK_STATE_FAILED,
    task_pb2.TASK_STATE_CANCELLED,
    task_pb2.TASK_STATE_SUCCEEDED,
)


def seconds(s: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def submit(tasks: TaskServiceStub, type_: str = "echo", **fields: Any) -> task_pb2.Task:
    spec = task_pb2.TaskSpec(type=type_, payload=task_pb2.Payload(data=b"{}"), **fields)
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task


def get(tasks: TaskServiceStub, task_id: str) -> task_pb2.Task:
    return tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task


def leases(node: RawNode, timeout_s: float = 10) -> list[task_pb2.Lease]:
    return [a.lease for a in node.next("assignments", timeout_s).assignments.assignments]


def test_higher_priority_first_then_fifo(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    low = submit(tasks, priority=-5).id
    first_mid = submit(tasks).id
    high = submit(tasks, priority=10).id
    second_mid = submit(tasks).id
    node = RawNode(coordinator.address, slots=1)
    order = []
    for _ in range(4):
        (lease,) = leases(node)
        order.append(lease.task_id)
        node.report(succeeded(lease.task_id, lease.attempt, b"1"))
    assert order == [high, first_mid, second_mid, low]
    assert get(tasks, high).priority == 10
    node.close()


def test_delayed_task_is_not_dispatched_before_its_time(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    submitted = time.time()
    task = submit(tasks, delay=seconds(1.0))
    assert task.scheduled_time.ToNanoseconds() / 1e9 == pytest.approx(submitted + 1.0, abs=0.5)
    past = Timestamp()
    past.FromSeconds(int(submitted) - 60)
    overdue = submit(tasks, run_at=past).id
    node = RawNode(coordinator.address, slots=2, auto_heartbeat=True)
    (first,) = leases(node)
    assert first.task_id == overdue, "a run_at in the past is due at once"
    (second,) = leases(node, timeout_s=5)
    assert second.task_id == task.id
    assert time.time() - submitted >= 1.0
    node.close()


def test_schedule_fields_are_validated(tasks: TaskServiceStub) -> None:
    far = Timestamp()
    far.FromSeconds(253402300799)  # 9999-12-31
    cases: list[tuple[dict[str, Any], str]] = [
        ({"priority": 1001}, "task.priority"),
        ({"run_at": far}, "task.run_at"),
        ({"delay": seconds(1), "run_at": far}, "task.run_at"),
        ({"execution_timeout": seconds(0)}, "task.execution_timeout"),
        ({"result_ttl": seconds(0.5)}, "task.result_ttl"),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            submit(tasks, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or ""), (fields, info.value.details())


def test_execution_timeout_reaches_the_node(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    task = submit(tasks, execution_timeout=seconds(2.5))
    assert task.execution_timeout.ToNanoseconds() == 2_500_000_000
    node = RawNode(coordinator.address)
    (assignment,) = node.next("assignments").assignments.assignments
    assert assignment.execution_timeout.ToNanoseconds() == 2_500_000_000
    node.close()


def test_schedule_to_start_timeout_dead_letters_an_unserved_task(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    task = submit(tasks, "nobody.runs.this", schedule_to_start_timeout=seconds(0.5))
    wait_until(lambda: get(tasks, task.id).state == FAILED, 5, what="schedule-to-start timeout")
    assert get(tasks, task.id).last_error.type == "SCHEDULE_TO_START_TIMEOUT"


def test_paused_queue_accepts_but_dispatches_nothing_and_survives_restart(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
        queue = admin.UpdateQueue(
            admin_service_pb2.UpdateQueueRequest(name="default", paused=True), timeout=10
        ).queue
        assert queue.paused
        task_id = submit(tasks).id
    coordinator.stop()
    coordinator = make_coordinator()  # same data directory
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
        listed = admin.ListQueues(admin_service_pb2.ListQueuesRequest(), timeout=10).queues
        assert [(q.name, q.paused, q.queued) for q in listed] == [("default", True, 1)]
        node = RawNode(coordinator.address, auto_heartbeat=True)
        with pytest.raises(AssertionError):
            node.next("assignments", timeout_s=1.0)
        admin.UpdateQueue(
            admin_service_pb2.UpdateQueueRequest(name="default", paused=False), timeout=10
        )
        (lease,) = leases(node)
        assert lease.task_id == task_id
        node.close()


def test_global_concurrency_limit_holds_across_nodes(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    admin.UpdateQueue(admin_service_pb2.UpdateQueueRequest(name="default", max_running=2))
    ids = [submit(tasks).id for _ in range(6)]
    nodes = [
        RawNode(coordinator.address, node_id=f"n{i}", slots=3, auto_heartbeat=True)
        for i in range(2)
    ]

    def held() -> int:
        listed = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
        return sum(n.busy_slots for n in listed)

    def queued() -> int:
        return sum(get(tasks, i).state == QUEUED for i in ids)

    wait_until(lambda: held() == 2 and queued() == 4, 5, what="two leases")
    # Give a dispatch round every chance to overshoot (heartbeats keep both nodes live).
    for node in nodes:
        node.next("heartbeat_ack")
        node.next("heartbeat_ack")
    assert (held(), queued()) == (2, 4), "never more than the limit"
    # Finishing one lets exactly one more start.
    node_with_work = next(n for n in nodes if held_by(admin, n) > 0)
    (lease, *_) = leases_of(admin, node_with_work)
    node_with_work.report(succeeded(lease.task_id, lease.attempt, b"1"))
    wait_until(lambda: held() == 2 and queued() == 3, 5, what="exactly one more leased")
    for node in nodes:
        node.close()


def held_by(admin: AdminServiceStub, node: RawNode) -> int:
    return len(leases_of(admin, node))


def leases_of(admin: AdminServiceStub, node: RawNode) -> list[task_pb2.Lease]:
    listed = admin.ListNodes(admin_service_pb2.ListNodesRequest(), timeout=10).nodes
    return [lease for n in listed if n.session_id == node.session_id for lease in n.leases]


def test_bulk_cancel_retry_and_purge(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    queued = [submit(tasks, queue="bulk").id for _ in range(3)]
    response = tasks.CancelTasks(task_service_pb2.CancelTasksRequest(queue="bulk"), timeout=10)
    assert (response.cancelled, response.cancel_requested) == (3, 0)
    assert {get(tasks, i).state for i in queued} == {CANCELLED}
    with pytest.raises(grpc.RpcError) as info:
        tasks.CancelTasks(task_service_pb2.CancelTasksRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A dead-lettered task comes back with a fresh budget and runs again.
    doomed = submit(tasks, queue="dlq", max_attempts=1).id
    node = RawNode(coordinator.address, queues=("dlq",))
    (lease,) = leases(node)
    node.report(failed(doomed, lease.attempt, retryable=False))
    wait_until(lambda: get(tasks, doomed).state == FAILED, 5)
    retried = tasks.RetryTasks(task_service_pb2.RetryTasksRequest(queue="dlq"), timeout=10)
    assert retried.retried == 1
    (lease,) = leases(node)
    assert (lease.task_id, lease.attempt) == (doomed, 2)
    node.report(succeeded(doomed, 2, b'"second time lucky"'))
    wait_until(lambda: get(tasks, doomed).state == SUCCEEDED, 5)
    assert get(tasks, doomed).failures == 0
    node.close()
    by_id = tasks.RetryTasks(
        task_service_pb2.RetryTasksRequest(task_ids=[queued[0], doomed]), timeout=10
    )
    assert (by_id.retried, list(by_id.skipped_task_ids)) == (1, [doomed])  # doomed succeeded
    assert get(tasks, queued[0]).state == QUEUED
    with pytest.raises(grpc.RpcError) as info:
        tasks.RetryTasks(
            task_service_pb2.RetryTasksRequest(task_ids=[doomed], queue="dlq"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as info:
        tasks.PurgeTasks(task_service_pb2.PurgeTasksRequest(queue="bulk"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    purged = tasks.PurgeTasks(
        task_service_pb2.PurgeTasksRequest(queue="bulk", state=CANCELLED), timeout=10
    )
    assert purged.deleted == 2
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="bulk"), timeout=10).tasks
    assert [t.id for t in listed] == [queued[0]]


def test_finished_tasks_are_swept_after_their_ttl(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator(sweep_interval_s=0.2)
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks = TaskServiceStub(channel)
        short = submit(tasks, result_ttl=seconds(1))
        kept = submit(tasks)
        for task_id in (short.id, kept.id):
            tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
        expire = get(tasks, short.id).expire_time.ToNanoseconds() / 1e9
        assert expire == pytest.approx(time.time() + 1, abs=1)

        def gone() -> bool:
            try:
                get(tasks, short.id)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        wait_until(gone, 5, what="the short-lived task swept")
        assert get(tasks, kept.id).state == CANCELLED


@pytest.mark.sqlite_only
def test_a_version_1_database_is_migrated_in_place(tmp_path: Path, make_coordinator) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "dtq.sqlite3") as conn:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO tasks (id, type, queue, payload, content_type, state, max_attempts, "
            "spec_hash, created_at, updated_at) VALUES "
            "('6e59c592-e6d3-44c9-9a47-5ad47c2dbb93', 'echo', 'default', x'7b7d', "
            "'application/json', 1, 3, x'00', 1.0, 1.0)"
        )
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        task = get(TaskServiceStub(channel), "6e59c592-e6d3-44c9-9a47-5ad47c2dbb93")
        assert (task.state, task.priority) == (QUEUED, 0)
    with sqlite3.connect(data / "dtq.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
