"""The protobuf edge: messages to and from plain values."""

from __future__ import annotations

import math
from dataclasses import replace

from google.protobuf import duration_pb2

from dtq.v1 import task_pb2, worker_service_pb2
from dtq_server.servicers.convert import MAX_RETRY_AFTER_S, update_from_proto
from dtq_server.updates import Progressed
from dtq_worker import convert
from dtq_worker.models import (
    Assignment,
    AssignmentsReceived,
    Failed,
    Failure,
    HeartbeatAcked,
    HeartbeatInfo,
    Lease,
    Payload,
    Progress,
    Registered,
    Registration,
    Released,
    Started,
    Succeeded,
    Update,
    UpdateAck,
    UpdatesAcked,
)


def test_register_request_carries_every_field() -> None:
    request = convert.register_request(
        Registration(
            node_id="n1",
            hostname="h",
            pid=42,
            version="1.0",
            task_types=("a", "b"),
            queues=("q",),
            slots=4,
            resume_session_id="s1",
            leases=(Lease("t1", 2),),
        )
    )
    register = request.register
    assert (register.node_id, register.hostname, register.pid, register.version) == (
        "n1",
        "h",
        42,
        "1.0",
    )
    assert list(register.task_types) == ["a", "b"]
    assert (list(register.queues), register.slots, register.resume_session_id) == (["q"], 4, "s1")
    assert [(lease.task_id, lease.attempt) for lease in register.leases] == [("t1", 2)]


def test_heartbeat_request() -> None:
    request = convert.heartbeat_request(7, HeartbeatInfo((Lease("t1", 1),), 2), 1_700_000_000.5)
    heartbeat = request.heartbeat
    assert (heartbeat.sequence, heartbeat.supervisor_restarts) == (7, 2)
    assert heartbeat.leases[0].task_id == "t1"
    assert heartbeat.node_time.seconds == 1_700_000_000
    assert not heartbeat.HasField("prefetch"), "a fixed prefetch is left as registered"


def test_an_auto_node_heartbeat_carries_its_prefetch_even_when_zero() -> None:
    for prefetch in (0, 16):
        request = convert.heartbeat_request(1, HeartbeatInfo((), 0, prefetch), 1_700_000_000.0)
        assert request.heartbeat.HasField("prefetch")
        assert request.heartbeat.prefetch == prefetch


def test_every_update_kind_converts() -> None:
    lease = Lease("t1", 1)
    updates = [
        Update(lease, Started()),
        Update(lease, Progress(50.0, "half")),
        Update(lease, Succeeded(Payload(b"1", "application/json"))),
        Update(lease, Failed(Failure("E", "m", "tb", False), cancelled=True)),
        Update(lease, Released("SHUTDOWN")),
    ]
    (frame,) = convert.update_frames(updates)
    sent = frame.updates.updates
    assert [u.WhichOneof("update") for u in sent] == [
        "started",
        "progress",
        "succeeded",
        "failed",
        "released",
    ]
    assert sent[1].progress.message == "half"
    assert sent[2].succeeded.result.data == b"1"
    assert sent[3].failed.cancelled and not sent[3].failed.error.retryable
    assert sent[4].released.reason == "SHUTDOWN"


def test_frames_stay_within_the_budget() -> None:
    big = Succeeded(Payload(b"x" * 1000))
    updates = [Update(Lease(f"t{i}", 1), big) for i in range(10)]
    frames = list(convert.update_frames(updates, budget_bytes=3000))
    assert [len(f.updates.updates) for f in frames] == [2, 2, 2, 2, 2]
    assert all(f.ByteSize() <= 3000 for f in frames)
    # An update bigger than the budget still goes, alone.
    (alone,) = convert.update_frames(updates[:1], budget_bytes=10)
    assert len(alone.updates.updates) == 1


def test_inbound_messages() -> None:
    registered = convert.inbound(
        worker_service_pb2.ConnectResponse(
            registered=worker_service_pb2.NodeRegistered(
                session_id="s",
                heartbeat_interval=duration_pb2.Duration(seconds=2),
                heartbeat_timeout=duration_pb2.Duration(seconds=10, nanos=500_000_000),
                resumed=True,
                stale_leases=[task_pb2.Lease(task_id="t", attempt=3)],
                max_result_bytes=99,
            )
        )
    )
    assert registered == Registered("s", 2.0, 10.5, True, (Lease("t", 3),), 99)
    ack = convert.inbound(
        worker_service_pb2.ConnectResponse(
            update_acks=worker_service_pb2.TaskUpdateAcks(
                acks=[
                    worker_service_pb2.TaskUpdateAck(
                        lease=task_pb2.Lease(task_id="t", attempt=1),
                        accepted=False,
                        reason="STALE_ATTEMPT",
                    )
                ]
            )
        )
    )
    assert ack == UpdatesAcked((UpdateAck(Lease("t", 1), False, "STALE_ATTEMPT"),))
    hb = convert.inbound(
        worker_service_pb2.ConnectResponse(
            heartbeat_ack=worker_service_pb2.HeartbeatAck(sequence=5)
        )
    )
    assert hb == HeartbeatAcked(5, ())
    assert convert.inbound(worker_service_pb2.ConnectResponse()) is None


def _assignments(**fields: object) -> tuple[Assignment, ...]:
    message = worker_service_pb2.TaskAssignment(
        lease=task_pb2.Lease(task_id="t", attempt=2),
        type="echo",
        queue="q",
        payload=task_pb2.Payload(data=b"{}"),
        max_attempts=3,
        **fields,  # type: ignore[arg-type]
    )
    received = convert.inbound(
        worker_service_pb2.ConnectResponse(
            assignments=worker_service_pb2.TaskAssignments(assignments=[message])
        )
    )
    assert isinstance(received, AssignmentsReceived)
    return received.assignments


def test_an_assignment_carries_its_headers() -> None:
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    [assignment] = _assignments(headers={**headers, "tenant": "acme"})
    assert assignment.headers == {**headers, "tenant": "acme"}
    assert type(assignment.headers) is dict, "a plain dict pickles to a handler process"
    assert hash(assignment) == hash(replace(assignment)), "still hashable"
    [bare] = _assignments()
    assert bare.headers == {}
    assert bare == Assignment(Lease("t", 2), "echo", "q", Payload(b"{}"), 3)


def test_a_retry_after_travels_to_the_coordinator_clamped_to_its_range() -> None:
    lease = Lease("t1", 1)
    failure = Failure("RetryAfter", "slow down", "", True)
    updates = [
        Update(lease, Failed(failure, retry_after_s=1.5)),
        Update(lease, Failed(failure)),
        Update(lease, Failed(failure, retry_after_s=10 * MAX_RETRY_AFTER_S)),
    ]
    (frame,) = convert.update_frames(updates)
    sent = frame.updates.updates
    assert sent[0].failed.retry_after.ToNanoseconds() == 1_500_000_000
    assert not sent[1].failed.HasField("retry_after")
    received = [update_from_proto(u) for u in sent]
    assert [getattr(u, "retry_after_s", "?") for u in received] == [1.5, None, MAX_RETRY_AFTER_S]
    # A node that sends a negative wait gets its retry at once, not an error.
    negative = worker_service_pb2.TaskUpdate()
    negative.CopyFrom(sent[0])
    negative.failed.retry_after.FromSeconds(-5)
    assert getattr(update_from_proto(negative), "retry_after_s", "?") == 0.0


def test_progress_from_any_node_is_kept_to_its_range() -> None:
    """The Python node normalises progress; a node of another language may send NaN
    (which SQLite stored as NULL, losing the message with it) or infinity."""
    lease = task_pb2.Lease(task_id="t1", attempt=1)

    def received(percent: float) -> float:
        update = worker_service_pb2.TaskUpdate(
            lease=lease, progress=task_pb2.TaskProgress(percent=percent, message="m")
        )
        progressed = update_from_proto(update)
        assert isinstance(progressed, Progressed) and progressed.progress.message == "m"
        return progressed.progress.percent

    assert [received(p) for p in (42.5, 0.0, 100.0)] == [42.5, 0.0, 100.0]
    assert [received(p) for p in (math.inf, 1e308, 250.0)] == [100.0] * 3
    assert [received(p) for p in (math.nan, -math.inf, -5.0)] == [-1.0] * 3
