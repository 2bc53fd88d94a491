"""A heartbeat may change the node's prefetch (``Heartbeat.prefetch``): credits follow it.

A RawNode speaks the protocol by hand, so the test decides what each heartbeat
reports; the Python node's ``--prefetch auto`` is what sends it in real life.
"""

from __future__ import annotations

import grpc

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import InProcessCoordinator, RawNode, wait_until


def _submit(tasks: TaskServiceStub, count: int) -> list[str]:
    specs = [task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"{}"))] * count
    response = tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10)
    return [result.task.id for result in response.results]


def _leases_held(node: RawNode, expected: int) -> list[str]:
    """Task ids assigned to ``node`` until it holds ``expected`` of them."""
    held: list[str] = []
    while len(held) < expected:
        held += [a.lease.task_id for a in node.next("assignments").assignments.assignments]
    return held


def _prefetch_of(coordinator: InProcessCoordinator, node_id: str) -> int:
    server = coordinator.server.coordinator
    [session] = coordinator.run(lambda: server.registry.live_for_node(node_id))
    return int(session.node.prefetch)


def test_a_heartbeat_raises_the_prefetch_and_more_work_follows(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    ids = _submit(tasks, 5)
    node = RawNode(coordinator.address, node_id="growing", slots=1)
    assert _leases_held(node, 1) == ids[:1]
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert node.unread() == [], "one slot, no prefetch: one task"

    node.heartbeat(2, prefetch=2)
    assert _leases_held(node, 2) == ids[1:3], "two more, in order, with nothing finished"
    assert _prefetch_of(coordinator, "growing") == 2
    node.close()


def test_a_lower_prefetch_stops_new_work_and_keeps_what_is_held(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    _submit(tasks, 6)
    node = RawNode(coordinator.address, node_id="shrinking", slots=1, prefetch=3)
    held = _leases_held(node, 4)
    node.heartbeat(1, leases=tuple((task_id, 1) for task_id in held), prefetch=0)
    ack = node.next("heartbeat_ack").heartbeat_ack
    assert list(ack.stale_leases) == [], "the leases already held stay the node's"
    assert _prefetch_of(coordinator, "shrinking") == 0
    assert node.unread() == []
    node.close()


def test_a_heartbeat_without_prefetch_leaves_the_registered_one(
    coordinator: InProcessCoordinator, tasks: TaskServiceStub
) -> None:
    node = RawNode(coordinator.address, node_id="steady", slots=1, prefetch=3)
    node.heartbeat(1)
    node.next("heartbeat_ack")
    assert _prefetch_of(coordinator, "steady") == 3
    node.close()


def test_an_out_of_range_prefetch_ends_the_stream_with_invalid_argument(
    coordinator: InProcessCoordinator,
) -> None:
    node = RawNode(coordinator.address, node_id="greedy", slots=1)
    node.heartbeat(1, prefetch=10_001)
    wait_until(node.closed.is_set, 10, what="the stream to end")
    assert node.error is not None
    assert node.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "heartbeat.prefetch" in str(node.error.details())
    assert "0-10000" in str(node.error.details())
