"""TaskService against a real in-process coordinator: submits, reads, bad input."""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.task_service_pb2_grpc import TaskServiceStub

SPEC = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b'{"x":1}'))


def details(exc: grpc.RpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest field paths) from a rich status."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "status details missing"
    reason, fields = "", []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
            assert info.domain == "dtq.dev"
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def submit(tasks: TaskServiceStub, spec: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse:
    return tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10)


def test_submit_stores_task_with_defaults(tasks: TaskServiceStub) -> None:
    response = submit(tasks, SPEC)
    assert response.created
    task = response.task
    assert task.state == task_pb2.TASK_STATE_QUEUED
    assert (task.queue, task.max_attempts, task.attempt) == ("default", 3, 0)
    assert task.payload.content_type == "application/json"
    fetched = tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task.id), timeout=10).task
    assert fetched.id == task.id
    assert fetched.payload.data == b'{"x":1}'


def test_idempotency_key_returns_same_task(tasks: TaskServiceStub) -> None:
    spec = task_pb2.TaskSpec()
    spec.CopyFrom(SPEC)
    spec.idempotency_key = "order-42"
    first = submit(tasks, spec)
    second = submit(tasks, spec)
    assert first.created and not second.created
    assert first.task.id == second.task.id
    spec.payload.data = b'{"x":2}'
    with pytest.raises(grpc.RpcError) as info:
        submit(tasks, spec)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(info.value)[0] == "IDEMPOTENCY_KEY_REUSED"


def test_batch_submit_is_all_or_nothing(tasks: TaskServiceStub) -> None:
    good = [task_pb2.TaskSpec(type="echo", queue="batch") for _ in range(5)]
    bad = task_pb2.TaskSpec(type="", queue="batch")
    with pytest.raises(grpc.RpcError) as info:
        tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=[*good, bad]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(info.value) == ("INVALID_FIELD", ["tasks[5].type"])
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="batch"), timeout=10)
    assert list(listed.tasks) == []
    response = tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=good), timeout=10)
    assert len(response.results) == 5
    assert all(r.created for r in response.results)
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="batch"), timeout=10)
    assert len(listed.tasks) == 5


def test_batch_submit_answers_acks_when_asked(tasks: TaskServiceStub) -> None:
    specs = [
        task_pb2.TaskSpec(type="echo", queue="acked", idempotency_key=f"k{i}") for i in range(3)
    ]
    request = task_service_pb2.SubmitTasksRequest(
        tasks=specs, answer=task_service_pb2.SUBMIT_ANSWER_ACK
    )
    first = tasks.SubmitTasks(request, timeout=10)
    assert list(first.results) == []
    assert [(a.created, a.state) for a in first.acks] == [(True, task_pb2.TASK_STATE_QUEUED)] * 3
    listed = tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="acked"), timeout=10)
    assert sorted(t.id for t in listed.tasks) == sorted(a.task_id for a in first.acks)
    again = tasks.SubmitTasks(request, timeout=10)  # the same keys: the same tasks
    assert [(a.task_id, a.created) for a in again.acks] == [(a.task_id, False) for a in first.acks]
    whole = tasks.SubmitTasks(
        task_service_pb2.SubmitTasksRequest(
            tasks=specs, answer=task_service_pb2.SUBMIT_ANSWER_TASK
        ),
        timeout=10,
    )
    assert [r.task.id for r in whole.results] == [a.task_id for a in first.acks]
    assert list(whole.acks) == []


def test_batch_submit_refuses_an_unknown_answer(tasks: TaskServiceStub) -> None:
    request = task_service_pb2.SubmitTasksRequest(tasks=[SPEC])
    request.answer = 7  # type: ignore[assignment]  # what a newer client might send
    with pytest.raises(grpc.RpcError) as info:
        tasks.SubmitTasks(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(info.value) == ("INVALID_FIELD", ["answer"])
    assert list(tasks.ListTasks(task_service_pb2.ListTasksRequest(), timeout=10).tasks) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (task_pb2.TaskSpec(type=""), "task.type"),
        (task_pb2.TaskSpec(type="has space"), "task.type"),
        (task_pb2.TaskSpec(type="echo", queue="q" * 101), "task.queue"),
        (task_pb2.TaskSpec(type="echo", max_attempts=101), "task.max_attempts"),
        (task_pb2.TaskSpec(type="echo", idempotency_key="k" * 201), "task.idempotency_key"),
    ],
)
def test_invalid_fields_are_named(
    tasks: TaskServiceStub, spec: task_pb2.TaskSpec, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        submit(tasks, spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")
    assert details(info.value) == ("INVALID_FIELD", [field])


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253_402_300_800, 0),  # 10000-01-01: past the last second a Timestamp holds
        (-62_135_596_801, 0),  # before 0001-01-01
        (2**63 - 1, 0),
        (0, -1),
        (0, 1_000_000_000),
    ],
)
def test_a_run_at_outside_the_timestamp_rules_is_invalid_everywhere(
    tasks: TaskServiceStub, seconds: int, nanos: int
) -> None:
    """protobuf's conversion raised ValueError for these, which every submit RPC (and
    CreateSchedule) answered INTERNAL: a client in another language can send them.
    Found by fuzzing the messages field by field."""
    bad = task_pb2.TaskSpec(type="echo", run_at=Timestamp(seconds=seconds, nanos=nanos))
    calls = {
        "task.run_at": lambda: submit(tasks, bad),
        "tasks[1].run_at": lambda: tasks.SubmitTasks(
            task_service_pb2.SubmitTasksRequest(tasks=[SPEC, bad]), timeout=10
        ),
        "task.run_at ": lambda: next(
            tasks.SubmitAndWatchTask(task_service_pb2.SubmitAndWatchTaskRequest(task=bad))
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert "must be a valid Timestamp" in (info.value.details() or "")
        assert details(info.value) == ("INVALID_FIELD", [field.strip()])
    request = task_service_pb2.SubmitTaskStreamRequest(
        submits=[task_service_pb2.StreamedSubmit(ref=1, task=bad)]
    )
    (answer,) = tasks.SubmitTaskStream(iter([request]), timeout=10)
    (result,) = answer.results
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "run_at" in result.error.message
    assert list(tasks.ListTasks(task_service_pb2.ListTasksRequest(), timeout=10).tasks) == []


def test_the_timestamp_rules_edges_are_accepted(
    tasks: TaskServiceStub,
) -> None:
    first = Timestamp(seconds=-62_135_596_800)  # 0001-01-01T00:00:00Z: due at once
    answer = submit(tasks, task_pb2.TaskSpec(type="echo", run_at=first))
    assert not answer.task.HasField("scheduled_time")
    later = Timestamp(seconds=int(time.time()) + 60, nanos=999_999_999)
    answer = submit(tasks, task_pb2.TaskSpec(type="echo", run_at=later))
    scheduled = answer.task.scheduled_time
    assert abs(scheduled.ToNanoseconds() - later.ToNanoseconds()) < 1_000  # a float's µs


def test_unknown_and_malformed_task_ids(tasks: TaskServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        tasks.GetTask(
            task_service_pb2.GetTaskRequest(task_id="00000000-0000-4000-8000-000000000000"),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(info.value)[0] == "TASK_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as info:
        tasks.GetTask(task_service_pb2.GetTaskRequest(task_id="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(info.value) == ("INVALID_FIELD", ["task_id"])


def test_oversize_payloads_are_refused_and_server_keeps_serving(tasks: TaskServiceStub) -> None:
    # Over the application limit (1 MiB) but under the transport limit: named field.
    spec = task_pb2.TaskSpec(type="echo", payload=task_pb2.Payload(data=b"x" * (1024 * 1024 + 1)))
    with pytest.raises(grpc.RpcError) as info:
        submit(tasks, spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(info.value) == ("INVALID_FIELD", ["task.payload.data"])
    # Over the transport limit (4 MiB): refused before it is read into a message.
    spec.payload.data = b"x" * (5 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        submit(tasks, spec)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert submit(tasks, SPEC).created


def test_cancel_queued_task_and_terminal_rules(tasks: TaskServiceStub) -> None:
    task = submit(tasks, SPEC).task
    cancelled = tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.id), timeout=10)
    assert cancelled.task.state == task_pb2.TASK_STATE_CANCELLED
    assert cancelled.task.HasField("finish_time")
    again = tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.id), timeout=10)
    assert again.task.state == task_pb2.TASK_STATE_CANCELLED


def test_list_pages_newest_first_with_stable_token(tasks: TaskServiceStub) -> None:
    ids = [submit(tasks, task_pb2.TaskSpec(type="echo", queue="paged")).task.id for _ in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = tasks.ListTasks(
            task_service_pb2.ListTasksRequest(queue="paged", page_size=3, page_token=token),
            timeout=10,
        )
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    # Made up: garbage, and a real token of these filters with its place changed to
    # one past a 64-bit integer (SQLite raised OverflowError: INTERNAL).
    first = tasks.ListTasks(
        task_service_pb2.ListTasksRequest(queue="paged", page_size=3), timeout=10
    ).next_page_token
    fingerprint = base64.urlsafe_b64decode(first).decode().split(":")[1]
    forged = [f"{place}:{fingerprint}".encode() for place in (10**30, -(10**30))]
    for token in ["garbage"] + [base64.urlsafe_b64encode(raw).decode() for raw in forged]:
        with pytest.raises(grpc.RpcError) as info:
            tasks.ListTasks(
                task_service_pb2.ListTasksRequest(queue="paged", page_size=3, page_token=token),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (info.value.details() or "")


def test_watch_sends_current_state_then_ends_at_terminal(tasks: TaskServiceStub) -> None:
    task = submit(tasks, SPEC).task
    tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.id), timeout=10)
    states = [
        m.task.state
        for m in tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.id), timeout=10)
    ]
    assert states == [task_pb2.TASK_STATE_CANCELLED]


def test_submit_and_watch_acks_the_commit_then_streams_to_the_end(tasks: TaskServiceStub) -> None:
    request = task_service_pb2.SubmitAndWatchTaskRequest(task=SPEC)
    call = tasks.SubmitAndWatchTask(request, timeout=10)
    first = next(call)
    assert first.created and first.task.state == task_pb2.TASK_STATE_QUEUED
    # Acknowledged means committed: another call reads it.
    got = tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=first.task.id), timeout=10)
    assert got.task == first.task
    tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=first.task.id), timeout=10)
    rest = list(call)
    assert [(m.task.state, m.created) for m in rest] == [(task_pb2.TASK_STATE_CANCELLED, True)]


def test_submit_and_watch_without_a_task_is_invalid(tasks: TaskServiceStub) -> None:
    request = task_service_pb2.SubmitAndWatchTaskRequest()
    with pytest.raises(grpc.RpcError) as info:
        list(tasks.SubmitAndWatchTask(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(info.value)[1] == ["task"]
