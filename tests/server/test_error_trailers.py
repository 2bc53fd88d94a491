"""Errors about huge or numerous bad inputs still reach the caller as sent.

A status travels in the trailers, and gRPC peers refuse trailers past 16 KiB
(between 8 and 16 KiB, some of the time): the caller then gets
RESOURCE_EXHAUSTED "Stream removed" instead. Before the statuses were cut to
size, a batch of 100 specs with a bad queue, a GetSchedule of a 20,000-character
name or a registration declaring long bad types all ended that way.

Real in-process coordinators and raw stubs: what a client in any language sees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dtq.v1 import (
    admin_service_pb2,
    schedule_service_pb2,
    task_pb2,
    task_service_pb2,
    worker_service_pb2,
)
from dtq.v1.admin_service_pb2_grpc import AdminServiceStub
from dtq.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq.v1.worker_service_pb2_grpc import WorkerServiceStub
from dtq_server.servicers.errors import MAX_MESSAGE_BYTES, MAX_VIOLATIONS_BYTES, clipped
from tests.harness import InProcessCoordinator

MakeCoordinator = Callable[..., InProcessCoordinator]
LONG = "é" * 20_000  # two UTF-8 bytes each, and percent-encoded in grpc-message
TRAILERS_LIMIT = 8 * 1024  # the soft limit: past it peers start refusing


def refusal(call: Callable[[], object]) -> tuple[grpc.RpcError, status_pb2.Status]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None, refused.value
    trailers = sum(len(m.key) + len(m.value) for m in refused.value.trailing_metadata())
    message = refused.value.details() or ""
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert trailers + 3 * len(message.encode()) < TRAILERS_LIMIT  # grpc-message at its worst
    return refused.value, status


def violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    return [(v.field, v.description) for v in bad_request.field_violations]


def test_a_batch_of_thousands_of_bad_specs_names_the_first_and_counts_the_rest(
    coordinator: InProcessCoordinator,
) -> None:
    specs = [task_pb2.TaskSpec(type="echo", queue="q" * 190) for _ in range(5_000)]
    with grpc.insecure_channel(coordinator.address) as channel:
        error, status = refusal(
            lambda: TaskServiceStub(channel).SubmitTasks(
                task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    named = violations(status)
    assert 1 <= len(named) <= 10
    assert [field for field, _ in named] == [f"tasks[{i}].queue" for i in range(len(named))]
    # The message names the same ones, then counts the rest.
    assert status.message == "; ".join(f"{f}: {d}" for f, d in named) + (
        f"; and {5_000 - len(named)} more"
    )


def test_not_found_errors_quote_a_huge_name_cut_short(
    coordinator: InProcessCoordinator,
) -> None:
    with grpc.insecure_channel(coordinator.address) as channel:
        tasks, admin = TaskServiceStub(channel), AdminServiceStub(channel)
        schedules = ScheduleServiceStub(channel)
        calls: dict[str, Callable[[], object]] = {
            "GROUP_NOT_FOUND": lambda: tasks.GetGroup(
                task_service_pb2.GetGroupRequest(group_id=LONG), timeout=10
            ),
            "NODE_NOT_FOUND": lambda: admin.DrainNode(
                admin_service_pb2.DrainNodeRequest(node_id=LONG), timeout=10
            ),
            "SCHEDULE_NOT_FOUND": lambda: schedules.GetSchedule(
                schedule_service_pb2.GetScheduleRequest(name=LONG), timeout=10
            ),
        }
        for reason, call in calls.items():
            error, status = refusal(call)
            assert error.code() is grpc.StatusCode.NOT_FOUND, reason
            info = error_details_pb2.ErrorInfo()
            assert any(detail.Unpack(info) for detail in status.details)
            assert info.reason == reason
            assert "é" * 100 + "...'" in status.message


def test_long_bad_headers_and_dependencies_are_refused_whole(
    coordinator: InProcessCoordinator,
) -> None:
    headers = {f"{i:02d}" + "h" * 5_000: LONG for i in range(32)}
    specs = {
        "headers": task_pb2.TaskSpec(type="echo", headers=headers),
        "depends_on": task_pb2.TaskSpec(type="echo", depends_on=[LONG] * 100),
    }
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = TaskServiceStub(channel)
        for field, spec in specs.items():
            request = task_service_pb2.SubmitTaskRequest(task=spec)
            error, status = refusal(functools.partial(stub.SubmitTask, request, timeout=10))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            named = violations(status)
            assert named and all(f.startswith(f"task.{field}") for f, _ in named)
            assert sum(len(f.encode()) + len(d.encode()) for f, d in named) <= (
                MAX_VIOLATIONS_BYTES + 2 * 300
            )


def test_unknown_long_types_in_strict_mode_fit_the_trailers(
    make_coordinator: MakeCoordinator,
) -> None:
    coordinator = make_coordinator(strict_task_types=True)
    specs = [task_pb2.TaskSpec(type=f"{i:03d}" + "t" * 197, queue="q" * 100) for i in range(500)]
    with grpc.insecure_channel(coordinator.address) as channel:
        error, status = refusal(
            lambda: TaskServiceStub(channel).SubmitTasks(
                task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10
            )
        )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    failure = error_details_pb2.PreconditionFailure()
    assert any(detail.Unpack(failure) for detail in status.details)
    assert [v.subject for v in failure.violations] == [
        f"tasks[{i}].type" for i in range(len(failure.violations))
    ]
    assert failure.violations and status.message.endswith("...")


def test_a_registration_with_a_thousand_long_bad_types_is_refused_as_invalid(
    coordinator: InProcessCoordinator,
) -> None:
    register = worker_service_pb2.RegisterNode(
        node_id="n1", slots=1, task_types=["é" * 190 + f"{i:04d}" for i in range(1_000)]
    )
    with grpc.insecure_channel(coordinator.address) as channel:
        stream = WorkerServiceStub(channel).Connect(
            iter([worker_service_pb2.ConnectRequest(register=register)]), timeout=10
        )
        error, status = refusal(lambda: next(stream))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in violations(status)} == {"register.task_types"}
    assert " more" in status.message


def test_clipped_cuts_on_a_character_boundary() -> None:
    assert clipped("abc", 3) == "abc"
    assert clipped("abcdef", 5) == "ab..."
    cut = clipped("é" * 10, 8)  # 20 bytes: two é (4 bytes) and a half one dropped
    assert cut == "éé..." and len(cut.encode()) <= 8
