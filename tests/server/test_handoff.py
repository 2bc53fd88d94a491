"""Who gets new tasks: an idle node straight away (leased in the commit that stores
them), nodes in turn, idle threads before prefetch buffers, buffers by threads.

Against a real in-process coordinator; RawNode speaks the worker protocol by
hand so each test sees exactly what the node is sent.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from dtq.v1 import admin_service_pb2, task_pb2, task_service_pb2
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.validation import SpecInput
from tests.harness import InProcessCoordinator, RawNode, started, succeeded, wait_until

QUEUED, LEASED = task_pb2.TASK_STATE_QUEUED, task_pb2.TASK_STATE_LEASED
RUNNING = task_pb2.TASK_STATE_RUNNING


def submit(tasks: TaskServiceStub, **fields: object) -> task_pb2.Task:
    spec = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"{}"), **fields)  # type: ignore[arg-type]
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task


def get(tasks: TaskServiceStub, task_id: str) -> task_pb2.Task:
    return tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task


def submit_batch(tasks: TaskServiceStub, count: int) -> list[task_pb2.Task]:
    spec = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"{}"))
    request = task_service_pb2.SubmitTasksRequest(tasks=[spec] * count)
    return [r.task for r in tasks.SubmitTasks(request, timeout=10).results]


def is_running(tasks: TaskServiceStub, task_id: str) -> bool:
    return get(tasks, task_id).state == RUNNING


def assigned_ids(node: RawNode) -> list[str]:
    message = node.next("assignments")
    return [a.lease.task_id for a in message.assignments.assignments]


def test_a_task_for_an_idle_node_is_stored_leased_and_sent_at_once(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    node = RawNode(coordinator.address, slots=1)
    task = submit(tasks)
    # The submit's own commit leased it: the answer already says so.
    assert (task.state, task.attempt, task.node_id) == (LEASED, 1, "raw")
    assert assigned_ids(node) == [task.id]
    stored = get(tasks, task.id)
    assert (stored.state, stored.attempt, stored.node_id) == (LEASED, 1, "raw")
    node.report(succeeded(task.id, 1, b'"ok"'))
    [ack] = node.next("update_acks").update_acks.acks
    assert ack.accepted
    node.close()


def test_a_task_behind_waiting_work_keeps_its_place_in_the_queue(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    node = RawNode(coordinator.address, slots=1)
    first = submit(tasks)
    assert assigned_ids(node) == [first.id]
    second = submit(tasks)  # the node is busy: queued, not leased
    assert second.state == QUEUED
    node.report(succeeded(first.id, 1, b'"ok"'))
    node.next("update_acks")
    assert assigned_ids(node) == [second.id]
    third = submit(tasks)  # the node is busy again: FIFO through the queue
    assert third.state == QUEUED
    node.close()


def test_a_paused_queue_gets_no_direct_leases(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub, admin: AdminServiceStub
) -> None:
    admin.UpdateQueue(admin_service_pb2.UpdateQueueRequest(name="default", paused=True), timeout=10)
    node = RawNode(coordinator.address, slots=1)
    task = submit(tasks)
    assert task.state == QUEUED
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert node.unread() == [], "a paused queue must not hand out work"
    node.close()


def test_a_node_leaving_before_the_commit_returns_its_direct_lease_to_the_queue(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    leaving = RawNode(coordinator.address, node_id="leaving", slots=1)
    server = coordinator.server.coordinator
    spec = SpecInput(
        type="echo",
        queue="",
        payload=b"{}",
        content_type="",
        max_attempts=0,
        idempotency_key="",
        retry_backoff_s=None,
    )

    async def submit_while_the_node_leaves() -> str:
        # Keep the writer busy so the insert is still waiting when the node leaves.
        busy = asyncio.ensure_future(server.store._writer.run(lambda conn: time.sleep(0.5)))  # type: ignore[attr-defined]
        [session] = server.registry.live_for_node("leaving")
        call = asyncio.ensure_future(server.submit([spec], batch=False))
        for _ in range(100):  # a few loop turns: validated, reserved, insert queued
            if session.leases:
                break
            await asyncio.sleep(0)
        assert session.leases, "the idle node's slot was reserved"
        assert not busy.done() and not call.done()
        await server.sessions.leave(session, "test")
        [(record, created)] = await call
        assert created
        return record.id

    task_id = coordinator.call(submit_while_the_node_leaves())
    wait_until(lambda: get(tasks, task_id).state == QUEUED, 10, what="the task requeued")
    other = RawNode(coordinator.address, node_id="other", slots=1)
    assert assigned_ids(other) == [task_id]
    assert get(tasks, task_id).attempt == 2  # the direct lease was attempt 1: fenced off
    other.close()
    leaving.channel.close()


def test_direct_leases_are_spread_across_idle_nodes_in_turn(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    a = RawNode(coordinator.address, node_id="a", slots=4)
    b = RawNode(coordinator.address, node_id="b", slots=4)
    submitted = submit_batch(tasks, 4)
    nodes = [t.node_id for t in submitted]
    assert all(t.state == LEASED for t in submitted)
    assert sorted(nodes) == ["a", "a", "b", "b"], nodes
    assert len(assigned_ids(a)) == 2 and len(assigned_ids(b)) == 2
    a.close()
    b.close()


def test_tasks_arriving_one_at_a_time_alternate_between_idle_nodes(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    """Each node in turn, however many dispatch rounds run between two submits.

    A node's Started report runs a dispatch round that finds nothing to lease. When
    every call for nodes rotated the starting node, a submit (one rotation) and its
    start (another) brought two nodes back to the same one: every task went there.
    """
    nodes = {"a": RawNode(coordinator.address, node_id="a", slots=8),
             "b": RawNode(coordinator.address, node_id="b", slots=8)}  # fmt: skip
    went_to = []
    for _ in range(8):
        task = submit(tasks)
        went_to.append(task.node_id)
        node = nodes[task.node_id]
        assert assigned_ids(node) == [task.id]
        node.report(started(task.id, 1))
        wait_until(partial(is_running, tasks, task.id), 10, what="the start committed")
    assert sorted(went_to) == ["a"] * 4 + ["b"] * 4, went_to
    for node in nodes.values():
        node.close()


def assigned_count(node: RawNode, expected: int) -> int:
    """How many tasks ``node`` was assigned, reading until ``expected`` arrived, then
    one heartbeat round trip more (anything sent after them arrives before its ack)."""
    ids: list[str] = []
    while len(ids) < expected:
        ids += assigned_ids(node)
    node.heartbeat(1, leases=tuple((task_id, 1) for task_id in ids))
    assert not node.next("heartbeat_ack").heartbeat_ack.stale_leases
    return len(ids) + sum(kind == "assignments" for kind in node.unread())


def test_a_new_task_goes_to_an_idle_thread_before_a_busy_node_s_buffer(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    a = RawNode(coordinator.address, node_id="a", slots=1, prefetch=8)
    b = RawNode(coordinator.address, node_id="b", slots=1, prefetch=8)
    running = submit(tasks)
    assert running.node_id == "a" and assigned_ids(a) == [running.id]
    done = submit(tasks)
    assert done.node_id == "b" and assigned_ids(b) == [done.id]
    b.report(succeeded(done.id, 1, b'"ok"'))
    b.next("update_acks")
    # a comes first in turn (served longer ago) and has room in its buffer; b's thread is idle.
    task = submit(tasks)
    assert task.node_id == "b", "a task waited in a busy node's buffer while a thread idled"
    assert assigned_ids(b) == [task.id]
    a.close()
    b.close()


def test_prefetch_buffers_fill_in_proportion_to_the_nodes_threads(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    """With every thread busy, a node with 4 threads takes 4 tasks for each 1 of a node
    with 1 thread (one each, the small node's buffer would hold as many)."""
    big = RawNode(coordinator.address, node_id="big", slots=4, prefetch=8)
    small = RawNode(coordinator.address, node_id="small", slots=1, prefetch=8)
    busy = submit_batch(tasks, 5)
    assert sorted(t.node_id for t in busy) == ["big"] * 4 + ["small"]
    assert assigned_count(big, 4) == 4 and assigned_count(small, 1) == 1
    waiting = submit_batch(tasks, 10)
    assert all(t.state == QUEUED for t in waiting)  # no idle thread: through a round
    assert (assigned_count(big, 8), assigned_count(small, 2)) == (8, 2)
    big.close()
    small.close()
