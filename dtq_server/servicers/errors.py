"""The one place coordinator errors become gRPC statuses.

Every status carries a ``google.rpc.Status`` in the trailers with an
``ErrorInfo`` (domain ``dtq.dev`` and a stable ``reason`` callers can branch
on) and, for INVALID_ARGUMENT, a ``BadRequest`` naming the first bad fields.
Unexpected exceptions become INTERNAL with a correlation id; their text stays
in the server log and never reaches the client.

Trailers are small: gRPC peers refuse a response whose metadata passes 16 KiB
(between 8 and 16 KiB, some of the time), and the client then sees
RESOURCE_EXHAUSTED "Stream removed" in place of the status it was sent. The
message travels twice (percent-encoded in ``grpc-message``, up to three times
its bytes, and inside the base64 ``grpc-status-details-bin``), so both it and
the listed violations are cut to sizes that keep the trailers under ~7 KiB
whatever the request held: a batch of 10,000 bad specs, a 100 KB id.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dtq_server.errors import (
    CallRateExceeded,
    CallTooLong,
    CapReached,
    CoordinatorError,
    GroupNotFound,
    IdempotencyKeyReused,
    InvalidArgument,
    NodeNotFound,
    PermissionDenied,
    QueueFull,
    ScheduleEnded,
    ScheduleExists,
    ScheduleNotFound,
    SessionExpired,
    ShuttingDown,
    StoreUnavailable,
    TaskNotFound,
    TaskTerminal,
    Unauthenticated,
    UnknownTaskType,
)
from dtq_server.store.listing import fitting

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
DOMAIN = "dtq.dev"
MAX_MESSAGE_BYTES = 1_000
"""Most UTF-8 bytes of a status message; longer ones end in "..."."""
MAX_VIOLATIONS_BYTES = 1_500
"""Most bytes of the violations a status lists (the first ones, at least one)."""
MAX_VIOLATION_TEXT_BYTES = 300
"""Most UTF-8 bytes of a violation's field path or description."""

# error class -> (status code, ErrorInfo reason)
_MAPPING: dict[type[CoordinatorError], tuple[grpc.StatusCode, str]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    TaskNotFound: (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"),
    NodeNotFound: (grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND"),
    IdempotencyKeyReused: (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"),
    TaskTerminal: (grpc.StatusCode.FAILED_PRECONDITION, "TASK_TERMINAL"),
    UnknownTaskType: (grpc.StatusCode.FAILED_PRECONDITION, "UNKNOWN_TASK_TYPE"),
    ScheduleNotFound: (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND"),
    GroupNotFound: (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND"),
    ScheduleExists: (grpc.StatusCode.ALREADY_EXISTS, "SCHEDULE_EXISTS"),
    ScheduleEnded: (grpc.StatusCode.FAILED_PRECONDITION, "SCHEDULE_ENDED"),
    ShuttingDown: (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"),
    StoreUnavailable: (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
    SessionExpired: (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_EXPIRED"),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    CallRateExceeded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALL_RATE_EXCEEDED"),
    CapReached: (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAP_REACHED"),
    QueueFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL"),
    CallTooLong: (grpc.StatusCode.DEADLINE_EXCEEDED, "MAX_CALL_TIME"),
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, ending in "..." when cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


V = TypeVar(
    "V",
    error_details_pb2.BadRequest.FieldViolation,
    error_details_pb2.PreconditionFailure.Violation,
)


def _first_fitting(violations: list[V]) -> list[V]:
    return violations[: fitting([v.ByteSize() for v in violations], MAX_VIOLATIONS_BYTES)]


def _text(value: str) -> str:
    return clipped(value, MAX_VIOLATION_TEXT_BYTES)


def rich_status(error: CoordinatorError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for a coordinator error: code, message, ErrorInfo, BadRequest.

    SubmitTaskStream sends it as is, inside the answer of the one submit it
    refuses; :func:`to_status` makes it the status of a whole call.
    """
    code, reason = _MAPPING.get(type(error), (grpc.StatusCode.INTERNAL, "INTERNAL"))
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=_text(field), description=_text(why))
            for field, why in error.named
        ]
        details.append(
            _pack(error_details_pb2.BadRequest(field_violations=_first_fitting(violations)))
        )
    elif isinstance(error, UnknownTaskType):
        failures = [
            error_details_pb2.PreconditionFailure.Violation(
                type="UNKNOWN_TASK_TYPE",
                subject=_text(field),
                description=_text(f"no worker has declared type {type_!r} on queue {queue!r}"),
            )
            for field, queue, type_ in error.unknown[: UnknownTaskType.MAX_NAMED]
        ]  # a batch's first few, as in the message
        details.append(
            _pack(error_details_pb2.PreconditionFailure(violations=_first_fitting(failures)))
        )
    elif isinstance(error, QueueFull):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"queue:{error.queue}",
            description=f"at most {error.max_depth} unfinished tasks (max_depth)",
        )
        details.append(_pack(error_details_pb2.QuotaFailure(violations=[violation])))
    elif isinstance(error, CallRateExceeded):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after_s))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(
        code=getattr(code_pb2, code.name),
        message=clipped(str(error), MAX_MESSAGE_BYTES),
        details=details,
    )


def to_status(error: CoordinatorError) -> grpc.Status:
    """The rich gRPC status for a coordinator error."""
    return rpc_status.to_status(rich_status(error))


def internal_status(correlation_id: str) -> grpc.Status:
    """A generic INTERNAL status that reveals nothing but a correlation id."""
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (correlation id {correlation_id})",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))],
    )
    return rpc_status.to_status(status)


async def abort(context: Context, status: grpc.Status) -> NoReturn:
    """End the call with ``status`` (raises)."""
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")


async def _abort_for(context: Context, exc: Exception, method: str) -> NoReturn:
    if isinstance(exc, CoordinatorError):
        await abort(context, to_status(exc))
    correlation_id = uuid.uuid4().hex[:12]
    log.error("rpc.internal_error", method=method, correlation_id=correlation_id, exc_info=exc)
    await abort(context, internal_status(correlation_id))


def unary_boundary(
    method: Callable[[S, Req, Context], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Coroutine[Any, Any, Resp]]:
    """Wrap a unary servicer method: map domain errors, hide unexpected ones."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort_for(context, exc, method.__name__)

    return wrapper


def stream_boundary(
    method: Callable[[S, Req, Context], AsyncIterator[Resp]],
) -> Callable[[S, Req, Context], AsyncIterator[Resp]]:
    """Wrap a server-streaming servicer method the same way."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            await _abort_for(context, exc, method.__name__)

    return wrapper
