"""A queue's maximum depth (UpdateQueue max_depth) against a real in-process coordinator."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, RawNode, succeeded, wait_until

QUEUE = "bounded"


def spec(key: str = "", queue: str = QUEUE, **fields: object) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        type="echo",
        queue=queue,
        payload=task_pb2.Payload(data=b"{}"),
        idempotency_key=key,
        **fields,  # type: ignore[arg-type]
    )


def submit(tasks: TaskServiceStub, task: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse:
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=task), timeout=10)


def set_depth(
    admin: AdminServiceStub, depth: int, queue: str = QUEUE
) -> admin_service_pb2.QueueStats:
    request = admin_service_pb2.UpdateQueueRequest(name=queue, max_depth=depth)
    return admin.UpdateQueue(request, timeout=10).queue


def stats(admin: AdminServiceStub, queue: str = QUEUE) -> admin_service_pb2.QueueStats:
    listed = admin.ListQueues(admin_service_pb2.ListQueuesRequest(), timeout=10).queues
    return next(q for q in listed if q.name == queue)


def full_details(status: status_pb2.Status) -> tuple[str, list[str]]:
    """(ErrorInfo reason, QuotaFailure subjects) of a refusal."""
    reason, subjects = "", []
    for detail in status.details:
        info, quota = error_details_pb2.ErrorInfo(), error_details_pb2.QuotaFailure()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(quota):
            subjects = [v.subject for v in quota.violations]
    return reason, subjects


def assert_full(exc: pytest.ExceptionInfo[grpc.RpcError]) -> None:
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"queue '{QUEUE}' is full" in (exc.value.details() or "")
    status = rpc_status.from_call(exc.value)  # type: ignore[arg-type]
    assert status is not None
    assert full_details(status) == ("QUEUE_FULL", [f"queue:{QUEUE}"])


def test_a_full_queue_refuses_new_tasks_and_stores_nothing(
    tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    assert set_depth(admin, 3).max_depth == 3
    for i in range(3):
        assert submit(tasks, spec(f"k{i}")).created
    with pytest.raises(grpc.RpcError) as refused:
        submit(tasks, spec("k3"))
    assert_full(refused)
    assert stats(admin).queued == 3
    # A resubmit of a stored task adds nothing, so it is answered as usual.
    again = submit(tasks, spec("k1"))
    assert not again.created
    # Other queues are not limited.
    assert submit(tasks, spec(queue="elsewhere")).created
    # A batch that would overfill is refused whole; one that only repeats keys is answered.
    set_depth(admin, 4)
    batch = task_service_pb2.SubmitTasksRequest(tasks=[spec("b1"), spec("b2")])
    with pytest.raises(grpc.RpcError) as whole:
        tasks.SubmitTasks(batch, timeout=10)
    assert_full(whole)
    assert stats(admin).queued == 3
    known = task_service_pb2.SubmitTasksRequest(tasks=[spec("k0"), spec("k2"), spec("b1")])
    results = tasks.SubmitTasks(known, timeout=10).results
    assert [r.created for r in results] == [False, False, True]
    assert stats(admin).queued == 4


def test_a_finished_task_frees_its_place_and_a_running_one_does_not(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    set_depth(admin, 2)
    first = submit(tasks, spec()).task.id
    submit(tasks, spec())
    node = RawNode(coordinator.address, queues=(QUEUE,), slots=1)
    try:
        (assignment,) = node.next("assignments").assignments.assignments
        assert assignment.lease.task_id == first
        with pytest.raises(grpc.RpcError) as running:  # leased still counts
            submit(tasks, spec())
        assert_full(running)
        node.report(succeeded(first, assignment.lease.attempt, b"{}"))
        wait_until(lambda: stats(admin).succeeded == 1, 10, what="the result stored")
        assert submit(tasks, spec()).created
    finally:
        node.close()


def test_tasks_waiting_for_dependencies_count_only_once_queued(
    tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    parent = submit(tasks, spec(queue="parents")).task.id
    set_depth(admin, 1)
    for _ in range(3):
        assert submit(tasks, spec(depends_on=[parent])).task.state == task_pb2.TASK_STATE_WAITING
    assert submit(tasks, spec()).created
    assert (stats(admin).waiting, stats(admin).queued) == (3, 1)


def test_concurrent_submits_never_overfill(tasks: TaskServiceStub, admin: AdminServiceStub) -> None:
    set_depth(admin, 5)

    def attempt(i: int) -> str:
        try:
            submit(tasks, spec(f"c{i}"))
            return "stored"
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return "full"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(attempt, range(40)))
    assert outcomes.count("stored") == 5
    assert stats(admin).queued == 5


def test_a_full_queue_refuses_stream_submits_one_by_one(
    tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    set_depth(admin, 2)
    frame = task_service_pb2.SubmitTaskStreamRequest(
        submits=[task_service_pb2.StreamedSubmit(ref=ref, task=spec(f"s{ref}")) for ref in range(4)]
    )
    responses = tasks.SubmitTaskStream(iter([frame]), timeout=30)
    results = [r for response in responses for r in response.results]
    assert [r.ref for r in results] == [0, 1, 2, 3]
    assert [r.WhichOneof("outcome") for r in results] == ["submitted"] * 2 + ["error"] * 2
    for r in results[2:]:
        assert r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert full_details(r.error) == ("QUEUE_FULL", [f"queue:{QUEUE}"])
    assert stats(admin).queued == 2


def test_max_depth_is_durable_validated_and_removable(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator()
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
        set_depth(admin, 1)
        submit(tasks, spec())
        with pytest.raises(grpc.RpcError) as bad:
            set_depth(admin, 100_000_001)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_depth" in (bad.value.details() or "")
    coordinator.stop()
    coordinator = make_coordinator()  # same data directory: the limit and the task are back
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
        assert (stats(admin).max_depth, stats(admin).queued) == (1, 1)
        with pytest.raises(grpc.RpcError) as refused:
            submit(tasks, spec())
        assert_full(refused)
        assert set_depth(admin, 0).max_depth == 0
        assert submit(tasks, spec()).created


def test_a_refused_batch_holds_no_place_while_other_submits_are_checked(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    """A batch too big for the queue is refused whole; a batch that fits, checked while
    the refused one waited for the store, must still get its places (it used to be
    refused too: the first batch's places counted as taken until its insert ended)."""
    set_depth(admin, 5)
    backlog = coordinator.writer_backlog
    release = threading.Event()
    blocker = coordinator.hold_writer(release)
    with ThreadPoolExecutor(2) as pool:
        try:
            batch = task_service_pb2.SubmitTasksRequest(tasks=[spec() for _ in range(6)])
            refused = pool.submit(tasks.SubmitTasks, batch, timeout=10)
            wait_until(lambda: backlog() == 1, 10, what="the batch waiting")
            fits = task_service_pb2.SubmitTasksRequest(tasks=[spec(), spec()])
            stored = pool.submit(tasks.SubmitTasks, fits, timeout=10)
            wait_until(lambda: backlog() == 2, 10, what="the second batch waiting")
        finally:
            release.set()
        with pytest.raises(grpc.RpcError) as full:
            refused.result(10)
        assert_full(full)
        assert all(r.created for r in stored.result(10).results)
    wait_until(blocker.done, 10, what="the writer released")
    assert stats(admin).queued == 2


def test_a_limited_queue_goes_through_the_queue_even_to_an_idle_node(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    """The direct handoff (one commit from submit to lease) skips queues with a maximum
    depth, whose check counts the board: the task is queued, then leased, and its
    place stays taken while a node holds it."""
    set_depth(admin, 1)
    node = RawNode(coordinator.address, queues=(QUEUE, "open"), slots=2)
    try:
        listed = admin_service_pb2.ListNodesRequest()
        wait_until(lambda: len(admin.ListNodes(listed, timeout=10).nodes) == 1, 10, what="node")
        task = submit(tasks, spec()).task
        assert task.state == task_pb2.TASK_STATE_QUEUED
        (assignment,) = node.next("assignments").assignments.assignments
        assert assignment.lease.task_id == task.id
        with pytest.raises(grpc.RpcError) as refused:
            submit(tasks, spec())
        assert_full(refused)
        # An unlimited queue on the same node is still handed straight over.
        assert submit(tasks, spec(queue="open")).task.state == task_pb2.TASK_STATE_LEASED
    finally:
        node.close()
