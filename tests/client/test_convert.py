from __future__ import annotations

import base64
import math
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from dtq.v1 import admin_service_pb2, schedule_service_pb2, task_pb2, task_service_pb2
from dtq_client import convert, payloads
from dtq_client.convert.scalars import time_from_proto
from dtq_client.errors import PayloadError, ProtocolError
from dtq_client.models import (
    CancelCounts,
    DependencyFailure,
    Group,
    GroupState,
    Lease,
    MissedTicks,
    Node,
    NodeState,
    Progress,
    QueueStats,
    RateLimit,
    RetryResult,
    Schedule,
    SubmitAck,
    SubmitResult,
    SubmittedGroup,
    Task,
    TaskSpec,
    TaskState,
)


def contract_fields(message_type: type[Message]) -> set[str]:
    """The fields of a message type that conversion must carry: every one of them."""
    return {field.name for field in message_type.DESCRIPTOR.fields}


def written_fields(message: Message) -> set[str]:
    return {field.name for field, _ in message.ListFields()}


def test_every_task_field_survives_a_round_trip(full_task: Task) -> None:
    # The fixture sets every field (content_type's default is JSON anyway), so a
    # field that convert.py drops shows up here.
    defaults = Task(id="", type="", queue="", state=TaskState.QUEUED)
    unset = [
        f.name for f in fields(Task) if getattr(full_task, f.name) == getattr(defaults, f.name)
    ]
    assert unset == ["content_type"]
    assert convert.task_from_proto(convert.task_to_proto(full_task)) == full_task


def test_a_converted_task_has_every_model_field_set() -> None:
    # The conversion fills the instance's __dict__ itself (no __init__, so no
    # defaults): a field added to Task but not to the conversion would be missing.
    message = task_pb2.Task(id="t", type="x", queue="q", state=task_pb2.TASK_STATE_QUEUED)
    task = convert.task_from_proto(message)
    assert set(vars(task)) == {f.name for f in fields(Task)}
    assert hash(task) == hash(replace(task)) and task == replace(task)


def test_every_proto_task_field_is_written(full_task: Task) -> None:
    message = convert.task_to_proto(full_task)
    assert written_fields(message) == contract_fields(task_pb2.Task)


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
        prefetch=8,
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
    message = convert.node_to_proto(node)
    assert convert.node_from_proto(message) == node
    assert written_fields(message) == contract_fields(admin_service_pb2.Node)


@pytest.mark.parametrize("state", list(NodeState))
def test_node_states_map_both_ways(state: NodeState) -> None:
    node = Node(node_id="n", session_id="s", state=state)
    message = convert.node_to_proto(node)
    assert admin_service_pb2.NodeState.Name(message.state) == f"NODE_STATE_{state.name}"
    assert convert.node_from_proto(message).state is state


def test_queue_stats_and_submit_result_round_trip(full_task: Task) -> None:
    stats = QueueStats(
        *("mail", 1, 2, 3, 4, 5), paused=True, max_running=6, rate_limit=2.5, waiting=7, max_depth=8
    )
    message = convert.queue_stats_to_proto(stats)
    assert convert.queue_stats_from_proto(message) == stats
    assert written_fields(message) == contract_fields(admin_service_pb2.QueueStats)
    result = SubmitResult(task=full_task, created=False)
    assert convert.submit_result_from_proto(convert.submit_result_to_proto(result)) == result


@pytest.mark.parametrize("state", list(TaskState))
def test_submit_acks_round_trip(state: TaskState) -> None:
    ack = SubmitAck(task_id="0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10", created=True, state=state)
    message = convert.submit_ack_to_proto(ack)
    assert written_fields(message) == contract_fields(task_service_pb2.SubmittedTask)
    assert convert.submit_ack_from_proto(message) == ack
    assert convert.to_json(ack)["taskId"] == ack.task_id


def test_spec_defaults_leave_the_coordinator_to_decide() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo"))
    assert message == task_pb2.TaskSpec(
        type="echo", payload=task_pb2.Payload(data=b"null", content_type="application/json")
    )
    for name in ("retry_backoff", "run_at", "delay", "execution_timeout", "result_ttl"):
        assert not message.HasField(name), name
    assert not message.HasField("schedule_to_start_timeout")


def test_spec_with_every_field() -> None:
    # run_at and delay_s together: the coordinator refuses that, but conversion carries both.
    spec = TaskSpec(
        type="resize",
        payload=b"\x89PNG",
        content_type="image/png",
        queue="images",
        max_attempts=5,
        idempotency_key="img-1",
        retry_backoff_s=1.5,
        priority=-1000,
        run_at=datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2))),
        delay_s=0.25,
        execution_timeout_s=30,
        schedule_to_start_timeout_s=0.001,
        result_ttl_s=86_400,
        rate_key="tenant-7",
        depends_on=["5d1e8c1a-7b9f-4c3e-8a2d-1f0e9b8c7d6a"],
        on_dependency_failure=DependencyFailure.CANCEL,
        headers={"tenant": "acme", "x-request.id": "r=1"},
    )
    message = convert.spec_to_proto(spec)
    assert message.payload == task_pb2.Payload(data=b"\x89PNG", content_type="image/png")
    assert (message.queue, message.max_attempts, message.idempotency_key) == ("images", 5, "img-1")
    assert message.retry_backoff.ToNanoseconds() == 1_500_000_000
    assert message.priority == -1000
    assert message.run_at.ToDatetime(tzinfo=UTC) == datetime(
        2030, 1, 2, 1, 4, 5, 678000, tzinfo=UTC
    )
    assert message.delay.ToNanoseconds() == 250_000_000
    assert message.execution_timeout.ToSeconds() == 30
    assert message.schedule_to_start_timeout.ToNanoseconds() == 1_000_000
    assert message.result_ttl.ToSeconds() == 86_400
    assert message.rate_key == "tenant-7"
    assert list(message.depends_on) == ["5d1e8c1a-7b9f-4c3e-8a2d-1f0e9b8c7d6a"]
    assert message.on_dependency_failure == task_pb2.DEPENDENCY_FAILURE_CANCEL
    assert dict(message.headers) == {"tenant": "acme", "x-request.id": "r=1"}
    assert written_fields(message) == contract_fields(task_pb2.TaskSpec)
    # A spec read back (a schedule's template) is the spec, its bytes payload included.
    assert convert.spec_from_proto(message) == spec


HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tenant": "acme",
}


def test_headers_go_out_with_a_spec_and_come_back_with_the_task() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo", headers=HEADERS))
    assert dict(message.headers) == HEADERS
    assert "headers" not in written_fields(convert.spec_to_proto(TaskSpec(type="echo")))
    stored = task_pb2.Task(
        id="t", type="echo", queue="q", state=task_pb2.TASK_STATE_QUEUED, headers=message.headers
    )
    task = convert.task_from_proto(stored)
    assert task.headers == HEADERS and type(task.headers) is dict
    assert dict(convert.task_to_proto(task).headers) == HEADERS
    assert convert.to_json(task)["headers"] == HEADERS
    bare = convert.task_from_proto(
        task_pb2.Task(id="t", type="echo", queue="q", state=task_pb2.TASK_STATE_QUEUED)
    )
    assert bare.headers == {}
    assert convert.to_json(bare)["headers"] == {}


def test_tasks_and_specs_with_headers_compare_by_value_and_hash(full_task: Task) -> None:
    # A dict field cannot hash: headers are left out of the hash (never out of ==).
    assert hash(full_task) == hash(replace(full_task, headers=dict(full_task.headers)))
    assert full_task != replace(full_task, headers={})
    given = dict(HEADERS)
    spec = TaskSpec(type="echo", headers=given)
    given["tenant"] = "changed later"
    assert spec.headers == HEADERS, "the spec keeps a copy"
    assert spec == TaskSpec(type="echo", headers=HEADERS)
    assert TaskSpec(type="echo") == TaskSpec(type="echo", headers={})


def test_a_template_keeps_its_headers() -> None:
    spec = TaskSpec(type="echo", headers=HEADERS)
    assert convert.spec_from_proto(convert.spec_to_proto(spec)) == spec
    assert convert.to_json(spec)["headers"] == HEADERS


def test_a_naive_run_at_is_local_time() -> None:
    naive = datetime(2030, 6, 1, 9, 30)
    message = convert.spec_to_proto(TaskSpec(type="echo", run_at=naive))
    assert message.run_at.ToNanoseconds() == round(naive.timestamp() * 1e9)


@pytest.mark.parametrize(
    ("field", "seconds"),
    [("delay_s", math.inf), ("execution_timeout_s", math.nan), ("retry_backoff_s", 1e300),
     ("result_ttl_s", -math.inf), ("schedule_to_start_timeout_s", 1e20)],
)  # fmt: skip
def test_a_duration_no_protobuf_holds_is_a_value_error_naming_its_field(
    field: str, seconds: float
) -> None:
    """These raised OverflowError ("cannot convert float infinity to integer") or
    protobuf's "Value out of range: 99999999999999991433", naming nothing."""
    with pytest.raises(ValueError, match=f"{field} must be a finite number of seconds"):
        duration: dict[str, Any] = {field: seconds}
        convert.spec_to_proto(TaskSpec(type="echo", **duration))
    with pytest.raises(ValueError, match="interval_s"):
        convert.schedule_to_proto(full_schedule(cron=None, interval_s=seconds))
    longest = 315_576_000_000.0  # 10,000 years: Duration's bound, still sent as asked
    message = convert.spec_to_proto(TaskSpec(type="echo", delay_s=longest))
    assert message.delay.seconds == longest


def test_a_run_at_off_the_calendar_in_utc_is_a_value_error_naming_it() -> None:
    east = timezone(timedelta(hours=5))
    for moment in (
        datetime(1, 1, 1, tzinfo=east),
        datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))),
    ):
        with pytest.raises(ValueError, match="run_at"):  # was OverflowError
            convert.spec_to_proto(TaskSpec(type="echo", run_at=moment))


def test_durations_and_times_of_a_task_come_back_as_seconds_and_utc() -> None:
    message = task_pb2.Task(id="t", type="x", queue="q", state=task_pb2.TASK_STATE_QUEUED)
    message.execution_timeout.FromNanoseconds(1_500_000)
    message.scheduled_time.FromSeconds(1_900_000_000)
    task = convert.task_from_proto(message)
    assert task.execution_timeout_s == 0.0015
    assert task.scheduled_at == datetime.fromtimestamp(1_900_000_000, UTC)
    assert (task.expires_at, task.priority) == (None, 0)
    assert (
        convert.task_from_proto(task_pb2.Task(state=task_pb2.TASK_STATE_QUEUED)).execution_timeout_s
        is None
    )


def test_spec_json_payload_is_compact() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo", payload={"x": 1, "y": "é"}))
    assert message.payload.data == b'{"x":1,"y":"\\u00e9"}'
    assert message.payload.content_type == "application/json"


def test_spec_with_unencodable_payload_raises() -> None:
    with pytest.raises(PayloadError):
        convert.spec_to_proto(TaskSpec(type="echo", payload={1, 2}))
    # Standard JSON only: NaN and Infinity are Python's, not JSON a worker in another
    # language reads.
    for number in (math.nan, math.inf, -math.inf):
        with pytest.raises(PayloadError, match="not JSON-serialisable"):
            convert.spec_to_proto(TaskSpec(type="echo", payload={"x": number}))
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(PayloadError):  # was a bare RecursionError
        convert.spec_to_proto(TaskSpec(type="echo", payload=nested))


def test_a_result_nested_too_deep_to_decode_is_a_payload_error() -> None:
    """A result from a node of any language may nest deeper than Python's parser goes."""
    with pytest.raises(PayloadError, match="not valid JSON"):
        payloads.decode(b"[" * 100_000 + b"]" * 100_000, "application/json")


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
    queue = convert.to_json(QueueStats("q", queued=3, paused=True, max_running=2))
    assert queue["queued"] == "3"  # uint64 is a string
    assert (queue["paused"], queue["maxRunning"]) == (True, 2)  # uint32 is a number


def test_bulk_results_as_proto3_json() -> None:
    counts = CancelCounts(cancelled=3, cancel_requested=1)
    assert convert.to_json(counts) == {"cancelled": "3", "cancelRequested": "1"}
    message = task_service_pb2.CancelTasksResponse(cancelled=3, cancel_requested=1)
    assert convert.cancel_counts_from_proto(message) == counts == (3, 1)
    assert convert.deleted_to_json(0) == {"deleted": "0"}
    retried = RetryResult(retried=2, skipped_task_ids=("t9",), truncated=True)
    assert convert.to_json(retried) == {"retried": "2", "skippedTaskIds": ["t9"], "truncated": True}
    assert convert.to_json(RetryResult(0)) == {
        "retried": "0",
        "skippedTaskIds": [],
        "truncated": False,
    }
    response = convert.retry_result_to_proto(retried)
    assert convert.retry_result_from_proto(response) == retried
    assert written_fields(response) == contract_fields(task_service_pb2.RetryTasksResponse)


# --- dependencies, groups, schedules, rate limits ------------------------------------------


@pytest.mark.parametrize("policy", [*DependencyFailure, None])
def test_dependency_failure_policies_map_both_ways(policy: DependencyFailure | None) -> None:
    number = convert.dependency_failure_to_proto(policy)
    name = "UNSPECIFIED" if policy is None else policy.name
    assert task_pb2.DependencyFailure.Name(number) == f"DEPENDENCY_FAILURE_{name}"
    assert convert.dependency_failure_from_proto(number) is policy
    with pytest.raises(ProtocolError):
        convert.dependency_failure_from_proto(99)


def test_a_spec_without_dependencies_sends_none() -> None:
    message = convert.spec_to_proto(TaskSpec(type="echo"))
    assert not message.depends_on
    assert message.on_dependency_failure == task_pb2.DEPENDENCY_FAILURE_UNSPECIFIED


def test_a_template_payload_decodes_when_it_is_json() -> None:
    plain = task_pb2.TaskSpec(type="x", payload=task_pb2.Payload(data=b'{"a":[1]}'))
    assert convert.spec_from_proto(plain) == TaskSpec(type="x", payload={"a": [1]})
    typed = task_pb2.Payload(data=b'{"a":1}', content_type="application/vnd.x+json")
    spec = convert.spec_from_proto(task_pb2.TaskSpec(type="x", payload=typed))
    assert (spec.payload, spec.content_type) == ({"a": 1}, "application/vnd.x+json")
    broken = task_pb2.Payload(data=b"{", content_type="application/json")
    spec = convert.spec_from_proto(task_pb2.TaskSpec(type="x", payload=broken))
    assert (spec.payload, spec.content_type) == (b"{", "application/json")
    assert convert.spec_to_proto(spec).payload == broken  # the same bytes go back


@pytest.mark.parametrize("state", list(GroupState))
def test_groups_round_trip_in_every_state(state: GroupState) -> None:
    group = Group(
        id="g1",
        state=state,
        total=6,
        pending=1,
        running=1,
        succeeded=1,
        failed=2,
        cancelled=1,
        task_ids=tuple(f"t{i}" for i in range(6)),
    )
    message = convert.group_to_proto(group)
    assert task_service_pb2.GroupState.Name(message.state) == f"GROUP_STATE_{state.name}"
    assert convert.group_from_proto(message) == group
    assert written_fields(message) == contract_fields(task_service_pb2.GetGroupResponse)
    with pytest.raises(ProtocolError):
        convert.group_state_from_proto(task_service_pb2.GROUP_STATE_UNSPECIFIED)


def test_a_submitted_group_as_proto3_json(full_task: Task) -> None:
    group = SubmittedGroup(group_id="g1", results=(SubmitResult(task=full_task, created=True),))
    data = convert.to_json(group)
    assert data["groupId"] == "g1"
    assert data["results"][0]["task"]["payload"]["json"] == {"to": "ada@example.com"}
    assert data["results"][0]["task"]["groupId"] == full_task.group_id
    assert data["results"][0]["task"]["dependsOn"] == list(full_task.depends_on)
    assert group.tasks == [full_task]


def full_schedule(**fields: object) -> Schedule:
    values: dict[str, object] = {
        "name": "nightly",
        "task": TaskSpec(type="report.build", payload={"kind": "daily"}, queue="reports"),
        "cron": "0 3 * * *",
        "time_zone": "Europe/Paris",
        "paused": True,
        "missed_ticks": MissedTicks.RUN_ALL,
        "next_fire_at": datetime(2024, 5, 2, 1, 0, tzinfo=UTC),
        "last_fire_at": datetime(2024, 5, 1, 1, 0, tzinfo=UTC),
        "fired_count": 12,
        "created_at": datetime(2024, 4, 20, 9, 30, tzinfo=UTC),
        "last_error": "queue 'reports' is full",
        "last_error_at": datetime(2024, 5, 2, 1, 0, 1, tzinfo=UTC),
    }
    values.update(fields)
    return Schedule(**values)  # type: ignore[arg-type]


def test_a_cron_schedule_round_trips_with_every_field() -> None:
    schedule = full_schedule()
    message = convert.schedule_to_proto(schedule)
    assert message.WhichOneof("timing") == "cron"
    # Every field but the other half of the timing oneof.
    assert written_fields(message) == contract_fields(schedule_service_pb2.Schedule) - {"interval"}
    assert convert.schedule_from_proto(message) == schedule


def test_an_interval_schedule_round_trips() -> None:
    schedule = full_schedule(
        cron=None, interval_s=90.5, time_zone=None, missed_ticks=None, last_error=None,
        last_error_at=None,
    )  # fmt: skip
    message = convert.schedule_to_proto(schedule)
    assert message.WhichOneof("timing") == "interval"
    assert message.interval.ToNanoseconds() == 90_500_000_000
    assert message.missed_ticks_policy == schedule_service_pb2.MISSED_TICKS_POLICY_UNSPECIFIED
    assert convert.schedule_from_proto(message) == schedule
    data = convert.to_json(schedule)
    assert (data["interval"], data["timeZone"], data["paused"]) == ("90.500s", "", True)
    assert data["task"]["payload"]["json"] == {"kind": "daily"}


@pytest.mark.parametrize("policy", [*MissedTicks, None])
def test_missed_ticks_policies_map_both_ways(policy: MissedTicks | None) -> None:
    number = convert.missed_ticks_to_proto(policy)
    name = "UNSPECIFIED" if policy is None else policy.name
    assert schedule_service_pb2.MissedTicksPolicy.Name(number) == f"MISSED_TICKS_POLICY_{name}"
    assert convert.missed_ticks_from_proto(number) is policy
    with pytest.raises(ProtocolError):
        convert.missed_ticks_from_proto(99)


def test_rate_limits_round_trip() -> None:
    limit = RateLimit(key="tenant-7", per_second=2.5, burst=3)
    message = convert.rate_limit_to_proto(limit)
    assert convert.rate_limit_from_proto(message) == limit
    assert written_fields(message) == contract_fields(admin_service_pb2.RateLimit)
    assert convert.to_json(limit) == {"key": "tenant-7", "perSecond": 2.5, "burst": 3}


@given(
    seconds=st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)
def test_time_from_proto_equals_the_protobuf_conversion(seconds: int, nanos: int) -> None:
    # time_from_proto skips Timestamp.ToDatetime for speed; it must agree with it.
    message = task_pb2.Task()
    message.create_time.seconds = seconds
    message.create_time.nanos = nanos
    expected = message.create_time.ToDatetime(tzinfo=UTC)
    assert time_from_proto(message, "create_time") == expected
    assert time_from_proto(message, "finish_time") is None
