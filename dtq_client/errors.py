"""The client's errors, and the one place gRPC errors become them.

Every error the client raises derives from :class:`DtqError`::

    DtqError
    ├── PayloadError            a value could not be encoded, or a payload decoded
    ├── ProtocolError           the coordinator sent something this client cannot read
    ├── WaitTimeout             wait() gave up before the task reached a terminal state
    ├── SubmitManyError         a later batch of submit_many() failed; earlier ones are stored
    └── RpcError                the coordinator (or the transport) answered with a non-OK status
        ├── InvalidArgument         a request field is malformed (see field_violations)
        ├── NotFound                no such object
        │   ├── TaskNotFound            reason TASK_NOT_FOUND
        │   ├── NodeNotFound            reason NODE_NOT_FOUND
        │   ├── GroupNotFound           reason GROUP_NOT_FOUND
        │   └── ScheduleNotFound        reason SCHEDULE_NOT_FOUND
        ├── AlreadyExists           idempotency key reused with a different spec
        │   └── ScheduleExists          reason SCHEDULE_EXISTS: another schedule has the name
        ├── FailedPrecondition      the object is in the wrong state
        │   ├── TaskTerminal            reason TASK_TERMINAL: cancelling a finished task
        │   └── UnknownTaskType         reason UNKNOWN_TASK_TYPE: strict mode, no node declared it
        ├── Unavailable             coordinator down, unreachable or shutting down; retry
        ├── DeadlineExceeded        the call's deadline passed
        ├── ResourceExhausted       a message over the size limit, or a limit reached
        │   └── QueueFull               reason QUEUE_FULL: the queue is at its max_depth
        ├── Unauthenticated         no valid credentials
        └── PermissionDenied        credentials lack the right

Status codes without a class of their own (INTERNAL, UNKNOWN, ...) raise a
plain :class:`RpcError`. :func:`translate_rpc_errors` is the only place a
``grpc.RpcError`` is caught, so users never see one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from dtq_client.models import SubmitAck, SubmitResult, Task, TaskSpec

ERROR_DOMAIN = "dtq.dev"
"""The ``google.rpc.ErrorInfo.domain`` of the coordinator's errors."""


class DtqError(Exception):
    """Base class of every error the DTQ client raises."""


class PayloadError(DtqError):
    """A value could not be encoded, or a payload could not be decoded."""


class ProtocolError(DtqError):
    """The coordinator sent a message this client cannot interpret."""


class WaitTimeout(DtqError):
    """Waiting for a task gave up before the task reached a terminal state."""

    def __init__(self, task_id: str, timeout_s: float | None, last: Task | None) -> None:
        state = f" (last seen {last.state})" if last is not None else ""
        super().__init__(f"task {task_id} not finished after {timeout_s} s{state}")
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.last = last
        """The last state seen, or None if the watch never delivered one."""


class RpcError(DtqError):
    """A call ended with a non-OK gRPC status.

    ``reason`` is the ``google.rpc.ErrorInfo`` reason (e.g. ``TASK_NOT_FOUND``)
    and ``field_violations`` the ``google.rpc.BadRequest`` ``(field, description)``
    pairs, when the coordinator sent them; both are empty otherwise.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        *,
        reason: str | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations = list(field_violations)
        self.metadata = dict(metadata or {})
        super().__init__(self.summary())

    @property
    def message_lists_violations(self) -> bool:
        """True when ``message`` already spells out every field violation."""
        return bool(self.field_violations) and all(
            f"{field}: {description}" in self.message
            for field, description in self.field_violations
        )

    def summary(self) -> str:
        """One line: ``CODE (REASON): message; field: description``."""
        head = self.code.name + (f" ({self.reason})" if self.reason else "")
        parts = [self.message] if self.message else []
        if not self.message_lists_violations:
            parts += [f"{field}: {description}" for field, description in self.field_violations]
        return f"{head}: {'; '.join(parts)}" if parts else head


class InvalidArgument(RpcError):
    """A request field is malformed; ``field_violations`` names each one."""


class NotFound(RpcError):
    """The object the call names does not exist."""


class TaskNotFound(NotFound):
    """No task has the given id."""


class NodeNotFound(NotFound):
    """No live node has the given id."""


class GroupNotFound(NotFound):
    """No group has the given id."""


class ScheduleNotFound(NotFound):
    """No schedule has the given name."""


class AlreadyExists(RpcError):
    """An idempotency key was reused with a different task spec, or a name is taken."""


class ScheduleExists(AlreadyExists):
    """A different schedule already has the name (creating the same one again is fine)."""


class FailedPrecondition(RpcError):
    """The object is in a state that does not allow the call."""


class TaskTerminal(FailedPrecondition):
    """The task already succeeded or failed, so it cannot be cancelled."""


class UnknownTaskType(FailedPrecondition):
    """The coordinator runs ``--strict-task-types`` and no node has ever declared the
    (queue, type) of a submitted task (the message names each one)."""


class Unavailable(RpcError):
    """The coordinator cannot be reached, is shutting down, or cannot write; retry later."""


class DeadlineExceeded(RpcError):
    """The call did not finish before its deadline."""


class ResourceExhausted(RpcError):
    """A message exceeded a size limit, or a limit of the caller or the queue was reached."""


class QueueFull(ResourceExhausted):
    """The submit would take its queue past its ``max_depth``; nothing was stored.

    Submitting the same spec again (same idempotency key) once the queue has
    drained cannot create the task twice.
    """


class Unauthenticated(RpcError):
    """The call carried no valid credentials."""


class PermissionDenied(RpcError):
    """The caller's credentials do not allow the call."""


class SubmitManyError(DtqError):
    """A batch of ``submit_many`` failed after earlier batches were stored.

    ``results`` holds what was stored (with ``answer="ack"``, ``acks`` does and
    ``results`` is empty); ``pending`` the specs from the failed batch on, with
    their idempotency keys filled in, so that submitting ``pending`` again can
    never create a task twice. Field paths in ``error`` (``tasks[i].type``)
    count from ``offset``, the input index of ``pending[0]``.
    """

    def __init__(
        self,
        error: RpcError,
        *,
        results: Sequence[SubmitResult] = (),
        acks: Sequence[SubmitAck] = (),
        pending: Sequence[TaskSpec],
        offset: int,
    ) -> None:
        stored = len(results) + len(acks)
        super().__init__(f"{stored} tasks stored, {len(pending)} not: {error}")
        self.error = error
        self.results = list(results)
        self.acks = list(acks)
        self.pending = list(pending)
        self.offset = offset


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

_BY_REASON: dict[str, type[RpcError]] = {
    "TASK_NOT_FOUND": TaskNotFound,
    "NODE_NOT_FOUND": NodeNotFound,
    "GROUP_NOT_FOUND": GroupNotFound,
    "SCHEDULE_NOT_FOUND": ScheduleNotFound,
    "SCHEDULE_EXISTS": ScheduleExists,
    "TASK_TERMINAL": TaskTerminal,
    "UNKNOWN_TASK_TYPE": UnknownTaskType,
    "QUEUE_FULL": QueueFull,
}


def error_class(code: grpc.StatusCode, reason: str | None) -> type[RpcError]:
    """The most specific error class for a status code and ErrorInfo reason."""
    by_code = _BY_CODE.get(code, RpcError)
    by_reason = _BY_REASON.get(reason or "")
    # A reason only refines the class its status code implies, never overrides it.
    if by_reason is not None and issubclass(by_reason, by_code):
        return by_reason
    return by_code


def from_grpc(exc: grpc.RpcError) -> RpcError:
    """Build the typed error for a ``grpc.RpcError`` (a ``grpc.Call``) and its details."""
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else None) or ""
    return _typed(code, message, _status_details(exc))


def from_status(status: status_pb2.Status) -> RpcError:
    """Build the typed error for a ``google.rpc.Status`` sent inside a message.

    SubmitTaskStream answers a refused submit with the status SubmitTask would
    have ended with, so it becomes the same error class as a refused ``submit``.
    """
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(code, status.message, list(status.details))


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _typed(code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any]) -> RpcError:
    """The error for a status code, its message and its ``google.rpc.Status`` details."""
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason = info.reason or None
                metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    cls = error_class(code, reason)
    return cls(code, message, reason=reason, field_violations=violations, metadata=metadata)


def _status_details(exc: grpc.RpcError) -> list[any_pb2.Any]:
    """The ``google.rpc.Status`` details of ``exc``; empty when absent or unreadable."""
    if not callable(getattr(exc, "trailing_metadata", None)):
        return []
    try:
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except (ValueError, DecodeError):
        # Details that contradict the status (or do not parse) are ignored:
        # the status code alone still gives a correct, if less precise, error.
        return []
    return list(status.details) if status is not None else []


@contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` inside the block as the matching :class:`RpcError`."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_grpc(exc) from exc
