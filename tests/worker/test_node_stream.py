"""The node's stream code against a scripted coordinator over real gRPC."""

from __future__ import annotations

import json
from typing import Any

import grpc

from dtq_worker import Registry, TaskContext
from tests.harness import wait_until
from tests.worker.fake_coordinator import FakeCoordinator
from tests.worker.fakes import crash_registry


def test_registers_runs_a_task_and_closes_cleanly(fake: FakeCoordinator, start_node) -> None:
    running = start_node()
    stream = fake.stream(0)
    register = stream.register
    assert register.node_id == "test-node"
    assert set(register.task_types) == {"echo", "sleep", "fail", "add"}
    assert list(register.queues) == ["default"]
    assert register.slots == 2
    assert register.resume_session_id == ""
    stream.assign("t1", "add", b'{"a":1,"b":2}')
    fake.wait_outcome("t1")
    assert fake.kinds("t1") == ["started", "succeeded"]
    result = fake.wait_outcome("t1").succeeded.result
    assert json.loads(result.data) == 3
    assert result.content_type == "application/json"
    wait_until(lambda: fake.heartbeats and not fake.heartbeats[-1].leases, 5, what="empty hb")
    assert running.stop() == 0
    assert stream.left == "SHUTDOWN"
    assert stream.ended.is_set()


def _sleep_payload(seconds: float) -> bytes:
    return json.dumps({"seconds": seconds}).encode()


def test_cancel_stops_the_handler_and_reports_cancelled(fake: FakeCoordinator, start_node):
    running = start_node()
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(30))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    stream.cancel("t1")
    outcome = fake.wait_outcome("t1")
    assert outcome.WhichOneof("update") == "failed"
    assert outcome.failed.cancelled
    assert outcome.failed.error.type == "TaskCancelled"
    assert not outcome.failed.error.retryable
    assert running.stop() == 0


def test_broken_stream_resumes_the_session_with_held_leases(fake: FakeCoordinator, start_node):
    running = start_node()
    first = fake.stream(0)
    first.assign("t1", "sleep", _sleep_payload(0.3))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    first.end(grpc.StatusCode.UNAVAILABLE, "going away", "SHUTTING_DOWN")
    second = fake.stream(1)
    assert second.register.resume_session_id == first.session_id
    assert [(lease.task_id, lease.attempt) for lease in second.register.leases] == [("t1", 1)]
    assert second.resumed
    outcome = fake.wait_outcome("t1")
    assert outcome.WhichOneof("update") == "succeeded"
    assert running.stop() == 0


def test_expired_session_drops_leases_and_registers_afresh(fake: FakeCoordinator, start_node):
    running = start_node()
    first = fake.stream(0)
    first.assign("t1", "sleep", _sleep_payload(30))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    first.end(grpc.StatusCode.FAILED_PRECONDITION, "session expired", "SESSION_EXPIRED")
    second = fake.stream(1)
    assert second.register.resume_session_id == ""
    assert list(second.register.leases) == []
    # The dropped handler was told to stop, and its outcome is never reported.
    second.assign("t2", "echo", b'"hi"')
    fake.wait_outcome("t2")
    assert fake.kinds("t1") == ["started"]
    assert running.stop() == 0
    assert fake.kinds("t1") == ["started"]


def test_stale_lease_in_heartbeat_ack_is_dropped(fake: FakeCoordinator, start_node):
    running = start_node()
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(30))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    fake.stale.add("t1")
    wait_until(
        lambda: (
            fake.heartbeats and all(lease.task_id != "t1" for lease in fake.heartbeats[-1].leases)
        ),
        5,
        what="t1 gone from heartbeats",
    )
    assert running.stop() == 0
    assert fake.kinds("t1") == ["started"]


def test_rejected_outcome_is_dropped_and_never_resent(fake: FakeCoordinator, start_node):
    running = start_node()
    first = fake.stream(0)
    fake.reject.add("t1")
    first.assign("t1", "echo", b"1")
    fake.wait_outcome("t1")
    wait_until(lambda: fake.heartbeats and not fake.heartbeats[-1].leases, 5, what="t1 dropped")
    first.end(grpc.StatusCode.UNAVAILABLE, "bye", "SHUTTING_DOWN")
    second = fake.stream(1)
    assert list(second.register.leases) == []
    assert running.stop() == 0
    assert fake.kinds("t1") == ["started", "succeeded"]


def test_unacknowledged_outcome_is_resent_after_reconnect(fake: FakeCoordinator, start_node):
    fake.ack_updates = False
    running = start_node()
    first = fake.stream(0)
    first.assign("t1", "echo", b'"x"')
    fake.wait_outcome("t1")
    fake.ack_updates = True
    first.end(grpc.StatusCode.UNAVAILABLE, "bye", "SHUTTING_DOWN")
    second = fake.stream(1)
    assert [lease.task_id for lease in second.register.leases] == ["t1"]
    wait_until(lambda: fake.kinds("t1").count("succeeded") == 2, 5, what="resent outcome")
    wait_until(lambda: fake.heartbeats and not fake.heartbeats[-1].leases, 5, what="acked")
    assert running.stop() == 0


def test_silent_coordinator_is_detected_by_heartbeat_timeout(fake: FakeCoordinator, start_node):
    fake.heartbeat_timeout_s = 0.3
    running = start_node()
    first = fake.stream(0)
    fake.ack_heartbeats = False
    second = fake.stream(1)
    assert second.register.resume_session_id == first.session_id
    fake.ack_heartbeats = True
    assert running.stop() == 0


def test_shutdown_releases_tasks_that_outlive_the_grace(fake: FakeCoordinator, start_node):
    running = start_node(shutdown_grace_s=0.2)
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(30))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    assert running.stop() == 0
    assert fake.wait_outcome("t1").released.reason == "SHUTDOWN"
    assert stream.left == "SHUTDOWN"


def test_shutdown_lets_running_tasks_finish_within_the_grace(fake: FakeCoordinator, start_node):
    running = start_node(shutdown_grace_s=5)
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(0.3))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    assert running.stop() == 0
    assert fake.kinds("t1") == ["started", "succeeded"]


def test_drain_finishes_running_tasks_then_exits_zero(fake: FakeCoordinator, start_node):
    running = start_node()
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(0.2))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    stream.drain()
    assert running.wait() == 0
    assert fake.kinds("t1") == ["started", "succeeded"]
    assert stream.left == "DRAINED"


def test_unknown_task_type_is_released(fake: FakeCoordinator, start_node):
    running = start_node()
    fake.stream(0).assign("t1", "nope")
    outcome = fake.wait_outcome("t1")
    assert outcome.released.reason == "UNKNOWN_TASK_TYPE"
    assert fake.kinds("t1") == ["released"]
    assert running.stop() == 0


def test_restart_intensity_exceeded_releases_everything_and_exits_70(
    fake: FakeCoordinator, start_node
):
    running = start_node(registry=crash_registry(), threads=2, max_restarts=1)
    stream = fake.stream(0)
    for i in range(2):
        stream.assign(f"c{i}", "crash")
    assert running.wait() == 70
    assert [fake.wait_outcome(f"c{i}").released.reason for i in range(2)] == ["WORKER_DIED"] * 2
    assert running.node.restarts == 1
    assert fake.heartbeats  # the stream stayed up until the end
    assert stream.left == "RESTART_INTENSITY_EXCEEDED"


def test_progress_is_coalesced_and_the_last_value_arrives(fake: FakeCoordinator, start_node):
    registry = Registry()

    @registry.task("chatty")
    def chatty(payload: Any, ctx: TaskContext) -> None:
        for i in range(10_001):
            ctx.report_progress(i / 100)
        ctx.cancel_event.wait(0.3)  # long enough for the throttled last value to go out

    running = start_node(registry=registry, progress_interval_s=0.1)
    fake.stream(0).assign("t1", "chatty")
    fake.wait_outcome("t1")
    progress = [u.progress for u in fake.updates if u.WhichOneof("update") == "progress"]
    assert 1 <= len(progress) <= 3
    assert progress[-1].percent == 100.0
    assert running.stop() == 0


def test_heartbeats_carry_held_leases_and_restarts(fake: FakeCoordinator, start_node):
    running = start_node()
    fake.stream(0).assign("t1", "sleep", _sleep_payload(30))
    wait_until(lambda: any(h.leases for h in fake.heartbeats), 5, what="a heartbeat with leases")
    heartbeat = next(h for h in fake.heartbeats if h.leases)
    assert [(lease.task_id, lease.attempt) for lease in heartbeat.leases] == [("t1", 1)]
    assert heartbeat.supervisor_restarts == 0
    sequences = [h.sequence for h in fake.heartbeats]
    assert sequences == sorted(sequences)
    running.node.stop()
    running.node.stop()  # a second stop cuts the grace short
    assert running.wait() == 0
    assert fake.wait_outcome("t1").released.reason == "SHUTDOWN"


def test_assignments_after_stop_are_held_not_run_and_handed_back_by_leave(
    fake: FakeCoordinator, start_node
):
    running = start_node(shutdown_grace_s=5)
    stream = fake.stream(0)
    stream.assign("t1", "sleep", _sleep_payload(0.3))
    wait_until(lambda: "started" in fake.kinds("t1"), 5, what="t1 started")
    running.node.stop()
    wait_until(lambda: fake.heartbeats and fake.heartbeats[-1].sequence > 0, 5, what="hb")
    stream.assign("late", "echo")
    wait_until(
        lambda: any(lease.task_id == "late" for lease in fake.heartbeats[-1].leases),
        5,
        what="the late task to be held",
    )
    assert running.wait() == 0
    assert fake.kinds("late") == []  # never run, never released: Leave hands it back
    assert fake.kinds("t1") == ["started", "succeeded"]
    assert stream.left == "SHUTDOWN"
