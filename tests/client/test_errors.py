"""Error mapping from a status carrying real google.rpc details.

Unit tests of the pure translation (``errors.from_grpc``) on hand-built
statuses, including ones a real coordinator never sends (contradicting or
unparseable details, foreign domains). The real coordinator's errors are
translated end to end in ``test_client_rpc.py``.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from dtq_client import errors
from dtq_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DtqError,
    FailedPrecondition,
    GroupNotFound,
    InvalidArgument,
    NodeNotFound,
    NotFound,
    QueueFull,
    ResourceExhausted,
    RpcError,
    ScheduleExists,
    ScheduleNotFound,
    TaskNotFound,
    TaskTerminal,
    Unavailable,
    translate_rpc_errors,
)

DETAILS_KEY = "grpc-status-details-bin"


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    domain: str = "dtq.dev",
    violations: tuple[tuple[str, str], ...] = (),
) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo and BadRequest details like the coordinator's."""
    details: list[any_pb2.Any] = []
    if reason is not None:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata={"task_id": "t1"})
        )
        details.append(packed)
    if violations:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


class FakeRpcError(grpc.RpcError):
    """What a failed call raises: a grpc.RpcError that is also a grpc.Call."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):  # the stubs' metadata type is private
        return self._trailers


def rich_error(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    domain: str = "dtq.dev",
    violations: tuple[tuple[str, str], ...] = (),
    status_code: grpc.StatusCode | None = None,
) -> FakeRpcError:
    """A FakeRpcError whose trailer carries a google.rpc.Status like the coordinator's."""
    status = rich_status(
        status_code or code, message, reason=reason, domain=domain, violations=violations
    )
    trailers = (("other", "x"), (DETAILS_KEY, status.SerializeToString()))
    return FakeRpcError(code, message, trailers)


def test_invalid_argument_carries_reason_and_field_violations() -> None:
    exc = rich_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid task",
        reason="INVALID_FIELD",
        violations=(("tasks[3].type", "must not be empty"), ("tasks[3].queue", "too long")),
    )
    error = errors.from_grpc(exc)
    assert type(error) is InvalidArgument
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FIELD"
    assert error.message == "invalid task"
    assert error.metadata == {"task_id": "t1"}
    assert error.field_violations == [
        ("tasks[3].type", "must not be empty"),
        ("tasks[3].queue", "too long"),
    ]
    assert str(error) == (
        "INVALID_ARGUMENT (INVALID_FIELD): invalid task; "
        "tasks[3].type: must not be empty; tasks[3].queue: too long"
    )


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND", TaskNotFound),
        (grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND", NodeNotFound),
        (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND", GroupNotFound),
        (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND", ScheduleNotFound),
        (grpc.StatusCode.ALREADY_EXISTS, "SCHEDULE_EXISTS", ScheduleExists),
        (grpc.StatusCode.NOT_FOUND, None, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, "TASK_TERMINAL", TaskTerminal),
        (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_EXPIRED", FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", QueueFull),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAP_REACHED", ResourceExhausted),
        # A reason never overrides its status code's class.
        (grpc.StatusCode.UNAVAILABLE, "TASK_NOT_FOUND", Unavailable),
        (grpc.StatusCode.INTERNAL, None, RpcError),
    ],
)
def test_classes_follow_code_then_reason(
    code: grpc.StatusCode, reason: str | None, expected: type[RpcError]
) -> None:
    error = errors.from_grpc(rich_error(code, "boom", reason=reason))
    assert type(error) is expected
    assert error.reason == reason


def test_a_status_inside_a_message_maps_like_a_call_status() -> None:
    # SubmitTaskStream answers a refused submit with the status SubmitTask would end with.
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "task.type: bad",
        reason="INVALID_FIELD",
        violations=(("task.type", "bad"),),
    )
    error = errors.from_status(status)
    assert type(error) is InvalidArgument
    assert (error.reason, error.field_violations) == ("INVALID_FIELD", [("task.type", "bad")])
    assert error.message == "task.type: bad"
    reused = rich_status(grpc.StatusCode.ALREADY_EXISTS, "x", reason="IDEMPOTENCY_KEY_REUSED")
    assert type(errors.from_status(reused)) is AlreadyExists
    unknown = errors.from_status(status_pb2.Status(code=999, message="?"))
    assert (type(unknown), unknown.code) == (RpcError, grpc.StatusCode.UNKNOWN)


def test_without_details_the_status_code_decides() -> None:
    error = errors.from_grpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such task"))
    assert type(error) is NotFound
    assert error.reason is None
    assert error.field_violations == []
    assert str(error) == "NOT_FOUND: no such task"


def test_details_contradicting_the_status_are_ignored() -> None:
    exc = rich_error(
        grpc.StatusCode.NOT_FOUND,
        "x",
        reason="TASK_NOT_FOUND",
        status_code=grpc.StatusCode.INTERNAL,
    )
    error = errors.from_grpc(exc)
    assert type(error) is NotFound
    assert error.reason is None


def test_unparseable_details_are_ignored() -> None:
    exc = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS_KEY, b"\xff\xff"),))
    assert type(errors.from_grpc(exc)) is Unavailable


def test_foreign_domains_give_no_reason() -> None:
    exc = rich_error(grpc.StatusCode.NOT_FOUND, "x", reason="TASK_NOT_FOUND", domain="proxy.io")
    assert type(errors.from_grpc(exc)) is NotFound


def test_a_bare_rpc_error_is_unknown() -> None:
    error = errors.from_grpc(grpc.RpcError())
    assert type(error) is RpcError
    assert error.code is grpc.StatusCode.UNKNOWN


def test_translation_chains_the_grpc_error() -> None:
    exc = rich_error(grpc.StatusCode.NOT_FOUND, "gone", reason="TASK_NOT_FOUND")
    with pytest.raises(TaskNotFound) as info, translate_rpc_errors():
        raise exc
    assert info.value.__cause__ is exc


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), translate_rpc_errors():
        raise KeyError("x")


def test_every_error_class_is_in_the_docstring_tree() -> None:
    doc = errors.__doc__ or ""
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, DtqError)
    ]
    assert len(classes) == 23
    for cls in classes:
        assert cls.__name__ in doc, cls
        assert cls.__doc__, cls
