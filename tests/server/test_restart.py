"""Coordinator processes killed with SIGKILL and restarted on the same data directory."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import HEARTBEAT_TIMEOUT_S, RawNode, start_server, succeeded, wait_until


def submit_many(address: str, n: int) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = TaskServiceStub(channel)
        return [
            stub.SubmitTask(
                task_service_pb2.SubmitTaskRequest(
                    task=task_pb2.TaskSpec(type="echo", idempotency_key=f"k{i}")
                ),
                timeout=10,
            ).task.id
            for i in range(n)
        ]


def states(address: str, ids: list[str]) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        stub = TaskServiceStub(channel)
        return [
            stub.GetTask(task_service_pb2.GetTaskRequest(task_id=i), timeout=10).task.state
            for i in ids
        ]


def drain_all(node: RawNode, n: int, timeout_s: float = 30) -> set[str]:
    """Complete every assignment the node gets until ``n`` tasks are done."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(done) < n and time.monotonic() < deadline:
        message = node.next("assignments", max(0.1, deadline - time.monotonic()))
        for a in message.assignments.assignments:
            node.report(succeeded(a.lease.task_id, a.lease.attempt, b"1"))
            done.add(a.lease.task_id)
    return done


@pytest.mark.timeout(90)
def test_acknowledged_submits_survive_kill_9(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        ids = submit_many(server.address, 50)
        server.kill9()
        restarted = start_server(tmp_path / "data", name="restarted")
        try:
            assert set(states(restarted.address, ids)) == {task_pb2.TASK_STATE_QUEUED}
            # A retried submit with the same key after the crash finds the same task.
            assert submit_many(restarted.address, 50) == ids
            node = RawNode(restarted.address, slots=8, auto_heartbeat=True)
            assert drain_all(node, 50) == set(ids)
            wait_until(
                lambda: set(states(restarted.address, ids)) == {task_pb2.TASK_STATE_SUCCEEDED},
                10,
                what="all tasks succeeded",
            )
            node.close()
        finally:
            restarted.stop()
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_leases_survive_a_coordinator_restart_when_the_node_resumes(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        [task_id] = submit_many(server.address, 1)
        node = RawNode(server.address, node_id="steady")
        lease = node.next("assignments").assignments.assignments[0].lease
        server.kill9()
        node.closed.wait(10)
        restarted = start_server(tmp_path / "data", name="restarted")
        again = RawNode(
            restarted.address, node_id="steady", resume_session_id=node.session_id,
            leases=((task_id, lease.attempt),),
        )  # fmt: skip
        assert again.registered.resumed, "the lease's session is stored with the task"
        again.report(succeeded(task_id, lease.attempt, b'"kept"'))
        assert again.next("update_acks").update_acks.acks[0].accepted
        with grpc.insecure_channel(restarted.address) as channel:
            task = (
                TaskServiceStub(channel)
                .GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10)
                .task
            )
        assert (task.state, task.attempt, task.lease_expiries) == (
            task_pb2.TASK_STATE_SUCCEEDED,
            1,
            0,
        )
        again.close()
        restarted.stop()
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_orphaned_leases_are_reissued_after_the_timeout(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        [task_id] = submit_many(server.address, 1)
        node = RawNode(server.address, node_id="doomed")
        node.next("assignments")
        server.kill9()
        restarted = start_server(tmp_path / "data", name="restarted")
        started = time.monotonic()
        other = RawNode(restarted.address, node_id="other", auto_heartbeat=True)
        lease = other.next("assignments", HEARTBEAT_TIMEOUT_S + 5).assignments.assignments[0].lease
        waited = time.monotonic() - started
        assert (lease.task_id, lease.attempt) == (task_id, 2)
        # A fresh grace of the heartbeat timeout from start-up, then re-issued.
        assert HEARTBEAT_TIMEOUT_S - 0.5 <= waited <= HEARTBEAT_TIMEOUT_S + 1.0
        other.close()
        restarted.stop()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_sigterm_turns_health_not_serving_refuses_submits_and_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--shutdown-grace", "3")
    try:
        [task_id] = submit_many(server.address, 1)
        node = RawNode(server.address, node_id="busy", auto_heartbeat=True)
        lease = node.next("assignments").assignments.assignments[0].lease
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            server.signal(signal.SIGTERM)
            wait_until(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                2,
                what="NOT_SERVING",
            )
            with pytest.raises(grpc.RpcError) as info:
                TaskServiceStub(channel).SubmitTask(
                    task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(type="echo")),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            # Results of running tasks are still accepted during the grace period.
            node.report(succeeded(task_id, lease.attempt, b"1"))
            assert node.next("update_acks").update_acks.acks[0].accepted
        assert server.wait(10) == 0
    finally:
        server.stop()
