from __future__ import annotations

import base64
from dataclasses import fields
from datetime import UTC, datetime

import pytest

from dtq.v1 import admin_service_pb2, task_pb2
from dtq_client import convert
from dtq_client.errors import PayloadError, ProtocolError
from dtq_client.models import (
    Lease,
    Node,
    NodeState,
    Progress,
    QueueStats,
    SubmitResult,
    Task,
    TaskSpec,
    TaskState,
)


def test_every_task_field_survives_a_round_trip(full_task: Task) -> None:
    # The fixture sets every field (content_type's default is JSON anyway), so a
    # field that convert.py drops shows up here.
    defaults = Task(id="", type="", queue="", state=TaskState.QUEUED)
    unset = [
        f.name for f in fields(Task) if getattr(full_task, f.name) == getattr(defaults, f.name)
    ]
    assert unset == ["content_type"]
    assert convert.task_from_proto(convert.task_to_proto(full_task)) == full_task


def test_every_proto_task_field_is_written(full_task: Task) -> None:
    message = convert.task_to_proto(full_task)
    written = {field.name for field, _ in message.ListFields()}
    assert written == {field.name for field in task_pb2.Task.DESCRIPTOR.fields}


def test_a_minimal_task_maps_absent_fields_to_none() -> None:
    message = task_pb2.Task(
        id="t", type="x", queue="q", state=task_pb2.TASK_STATE_QUEUED, max_attempts=3
    )
    task = convert.task_from_proto(message)
    assert task == Task(
        id="t",
        type="x",
        queue="q",
        state=TaskState.QUEUED,
        max_attempts=3,
        content_type="application/json",  # empty on the wire means JSON
    )
    assert task.created_at is None
    assert task.result is None
    assert task.result_content_type == ""
    assert task.last_error is None
    assert task.progress is None
    assert task.node_id is None
    assert task.idempotency_key is None


def test_empty_result_content_type_means_json() -> None:
    message = task_pb2.Task(
        id="t",
        type="x",
        queue="q",
        state=task_pb2.TASK_STATE_SUCCEEDED,
        result=task_pb2.Payload(data=b"[1]"),
    )
    task = convert.task_from_proto(message)
    assert task.result_content_type == "application/json"
    assert task.result_value() == [1]


def test_timestamps_are_utc_aware_to_the_microsecond() -> None:
    message = task_pb2.Task(id="t", type="x", queue="q", state=task_pb2.TASK_STATE_RUNNING)
    message.create_time.FromDatetime(datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    created = convert.task_from_proto(message).created_at
    assert created == datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert created is not None and created.tzinfo is not None


@pytest.mark.parametrize("state", list(TaskState))
def test_task_states_map_both_ways(state: TaskState) -> None:
    number = convert.task_state_to_proto(state)
    assert task_pb2.TaskState.Name(number) == f"TASK_STATE_{state.name}"
    assert convert.task_state_from_proto(number) is state


def test_no_state_filter_is_unspecified() -> None:
    assert convert.task_state_to_proto(None) == task_pb2.TASK_STATE_UNSPECIFIED


@pytest.mark.parametrize("number", [task_pb2.TASK_STATE_UNSPECIFIED, 99])
def test_unknown_task_states_are_protocol_errors(number: int) -> None:
    with pytest.raises(ProtocolError):
        convert.task_state_from_proto(number)


def test_unknown_progress_percent_is_none() -> None:
    progress = convert.progress_from_proto(task_pb2.TaskProgress(percent=-1, message="busy"))
    assert progress == Progress(percent=None, message="busy")
    assert convert.progress_to_proto(progress).percent == -1


def test_node_round_trip() -> None:
    node = Node(
        node_id="host-1",
        session_id="s-1",
        state=NodeState.DRAINING,
        hostname="host",
        pid=1234,
        version="0.1.0",
        task_types=("echo", "email.send"),
        queues=("default", "mail"),
        slots=4,
        busy_slots=2,
        leases=(Lease("t1", 1), Lease("t2", 3)),
        supervisor_restarts=1,
        connected_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        last_seen_at=datetime(2024, 5, 1, 12, 1, tzinfo=UTC),
    )
    assert convert.node_from_proto(convert.node_to_proto(node)) == node


@pytest.mark.parametrize("state", list(NodeState))
def test_node_states_map_both_ways(state: NodeState) -> None:
    node = Node(node_id="n", session_id="s", state=state)
    message = convert.node_to_proto(node)
    assert admin_service_pb2.NodeState.Name(message.state) == f"NODE_STATE_{state.name}"
    assert convert.node_from_proto(message).state is state


def test_queue_stats_and_submit_result_round_trip(full_task: Task) -> None:
    stats = QueueStats("mail", queued=1, running=2, succeeded=3, failed=4, cancelled=5)
    assert convert.queue_stats_from_proto(convert.queue_stats_to_proto(stats)) == stats
    result = SubmitResult(task=full_task, created=False)
    assert convert.submit_result_from_proto(convert.submit_result_to_proto(result)) == result


def test_spec_defaults_leave_the_coordinator_to_decide() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo"))
    assert message == task_pb2.TaskSpec(
        type="echo", payload=task_pb2.Payload(data=b"null", content_type="application/json")
    )
    assert not message.HasField("retry_backoff")


def test_spec_with_every_field() -> None:
    spec = TaskSpec(
        type="resize",
        payload=b"\x89PNG",
        content_type="image/png",
        queue="images",
        max_attempts=5,
        idempotency_key="img-1",
        retry_backoff_s=1.5,
    )
    message = convert.spec_to_proto(spec)
    assert message.payload == task_pb2.Payload(data=b"\x89PNG", content_type="image/png")
    assert (message.queue, message.max_attempts, message.idempotency_key) == ("images", 5, "img-1")
    assert message.retry_backoff.ToNanoseconds() == 1_500_000_000


def test_spec_json_payload_is_compact() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo", payload={"x": 1, "y": "é"}))
    assert message.payload.data == b'{"x":1,"y":"\\u00e9"}'
    assert message.payload.content_type == "application/json"


def test_spec_with_unencodable_payload_raises() -> None:
    with pytest.raises(PayloadError):
        convert.spec_to_proto(TaskSpec(type="echo", payload={1, 2}))


def test_to_json_uses_the_proto3_mapping_and_decodes_json_payloads(full_task: Task) -> None:
    data = convert.to_json(full_task)
    assert data["id"] == full_task.id
    assert data["state"] == "TASK_STATE_FAILED"
    assert data["createTime"] == "2024-05-01T12:00:00.123456Z"
    assert data["maxAttempts"] == 3
    assert data["payload"] == {
        "data": base64.b64encode(full_task.payload).decode(),
        "contentType": "application/json",
        "json": {"to": "ada@example.com"},
    }
    assert data["result"]["json"] == {"sent": False}
    assert data["lastError"]["type"] == "SMTPError"


def test_to_json_keeps_default_fields_and_skips_binary_payloads() -> None:
    task = Task(
        id="t",
        type="x",
        queue="q",
        state=TaskState.QUEUED,
        payload=b"\x00",
        content_type="application/octet-stream",
    )
    data = convert.to_json(task)
    assert data["attempt"] == 0
    assert data["cancelRequested"] is False
    assert "json" not in data["payload"]
    assert "result" not in data


def test_to_json_skips_invalid_json_payloads() -> None:
    task = Task(id="t", type="x", queue="q", state=TaskState.QUEUED, payload=b"{")
    assert "json" not in convert.to_json(task)["payload"]


def test_to_json_of_nested_payloads(full_task: Task) -> None:
    data = convert.to_json(SubmitResult(task=full_task, created=True))
    assert data["created"] is True
    assert data["task"]["payload"]["json"] == {"to": "ada@example.com"}
    assert data["task"]["result"]["json"] == {"sent": False}


def test_to_json_of_a_node_and_queue() -> None:
    node = Node(node_id="n", session_id="s", state=NodeState.ACTIVE, leases=(Lease("t", 2),))
    assert convert.to_json(node)["leases"] == [{"taskId": "t", "attempt": 2}]
    assert convert.to_json(node)["state"] == "NODE_STATE_ACTIVE"
    assert convert.to_json(QueueStats("q", queued=3))["queued"] == "3"  # uint64 is a string
