"""Assignment and ack frames as the coordinator writes them, read back by a node's parser.

Both halves of the worker contract in one place: what ``_to_proto`` puts on
the wire (written field by field into the frame, for speed) must come out of
``dtq_worker.convert.inbound`` exactly as it went in.
"""

from __future__ import annotations

from dtq.v1 import worker_service_pb2 as pb
from dtq_server.models import Assignment, Lease
from dtq_server.registry import SendAcks, SendAssignments
from dtq_server.servicers.convert import assignment_bytes
from dtq_server.servicers.worker_service import _frames, _to_proto
from dtq_server.updates import UpdateAck
from dtq_worker import convert as node_convert
from dtq_worker.models import AssignmentsReceived, UpdatesAcked

CREATED = 1_764_201_600.123456


def _over_the_wire(message: pb.ConnectResponse) -> pb.ConnectResponse:
    return pb.ConnectResponse.FromString(message.SerializeToString())


def test_an_assignments_frame_reads_back_field_for_field() -> None:
    sent = [
        Assignment(Lease("t-1", 1), "echo", "default", b"[1]", "application/json", 3, CREATED),
        Assignment(
            Lease("t-2", 7), "resize", "images", b"\x00\xff", "application/octet-stream",
            max_attempts=5, created_at=CREATED + 1, execution_timeout_s=2.5, priority=-3,
        ),
    ]  # fmt: skip
    wire = _over_the_wire(_to_proto(SendAssignments(sent)))
    received = node_convert.inbound(wire)
    assert isinstance(received, AssignmentsReceived)
    assert [
        (
            a.lease.task_id, a.lease.attempt, a.type, a.queue, a.payload.data,
            a.payload.content_type, a.max_attempts, a.execution_timeout_s,
        )
        for a in received.assignments
    ] == [
        ("t-1", 1, "echo", "default", b"[1]", "application/json", 3, None),
        ("t-2", 7, "resize", "images", b"\x00\xff", "application/octet-stream", 5, 2.5),
    ]  # fmt: skip
    # What the node's model does not keep is on the wire all the same.
    first, second = wire.assignments.assignments
    assert first.create_time.ToNanoseconds() == int(CREATED * 1e9)
    assert second.create_time.ToNanoseconds() == int((CREATED + 1) * 1e9)
    assert not first.HasField("execution_timeout")
    assert (first.priority, second.priority) == (0, -3)


def test_an_acks_frame_reads_back_field_for_field() -> None:
    sent = [
        UpdateAck(Lease("t-1", 1), True),
        UpdateAck(Lease("t-2", 2), False, "STALE_ATTEMPT", "lease t-2#2 not held"),
    ]
    received = node_convert.inbound(_over_the_wire(_to_proto(SendAcks(sent))))
    assert isinstance(received, UpdatesAcked)
    assert [
        (a.lease.task_id, a.lease.attempt, a.accepted, a.reason, a.message) for a in received.acks
    ] == [
        ("t-1", 1, True, "", ""),
        ("t-2", 2, False, "STALE_ATTEMPT", "lease t-2#2 not held"),
    ]


def _sized(task_id: str, payload_bytes: int) -> Assignment:
    return Assignment(Lease(task_id, 1), "echo", "default", b"x" * payload_bytes, "a/b", 3, CREATED)


def test_assignments_are_cut_into_frames_under_the_budget_in_order() -> None:
    budget = 10_000
    sent = [
        _sized("a", 4000),
        _sized("b", 4000),
        _sized("c", 30_000),
        _sized("d", 10),
        _sized("e", 9900),
    ]
    frames = _frames(SendAssignments(sent), budget)
    runs = [
        [a.lease.task_id for a in f.assignments] for f in frames if isinstance(f, SendAssignments)
    ]
    assert runs == [["a", "b"], ["c"], ["d"], ["e"]]  # the oversized one alone, order kept
    for frame in frames:
        assert isinstance(frame, SendAssignments)
        if len(frame.assignments) > 1:
            assert _to_proto(frame).ByteSize() <= budget
    assert all(
        assignment_bytes(a) >= len(_to_proto(SendAssignments([a])).SerializeToString())
        for a in sent
    )


def test_a_run_under_the_budget_goes_out_as_it_came() -> None:
    item = SendAssignments([_sized("a", 100), _sized("b", 100)])
    assert _frames(item, 10_000) == [item]
