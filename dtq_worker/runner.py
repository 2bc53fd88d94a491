"""Running one task: decode the payload, call the handler, turn what happened into an outcome.

Every ``Exception`` a handler raises becomes a failure outcome. A
``BaseException`` that is not an ``Exception`` (``SystemExit``,
``KeyboardInterrupt``) is deliberately not caught: it kills the worker thread,
and the supervisor releases the task and restarts the thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import traceback
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from dtq.frozen import frozen
from dtq_worker import codec, coroutines
from dtq_worker.context import TaskContext, truncate_utf8
from dtq_worker.errors import (
    CodecError,
    HandlerNotFound,
    NonRetryableError,
    RetryAfter,
    TaskCancelled,
)
from dtq_worker.models import (
    Assignment,
    ErrorType,
    Failed,
    Failure,
    Lease,
    Outcome,
    Released,
    ReleaseReason,
    Succeeded,
)
from dtq_worker.registry import Handler, Registry

if TYPE_CHECKING:
    from dtq_worker.tracing import TaskTracer

log = structlog.get_logger(__name__)

MAX_ERROR_TYPE_CHARS = 200
MAX_ERROR_MESSAGE_BYTES = 4 * 1024
MAX_TRACEBACK_BYTES = 8 * 1024
_TRUNCATED = "...(truncated)\n"


@frozen(eq=False)
class Job:
    """An assignment together with the context its handler will get."""

    assignment: Assignment
    context: TaskContext

    @property
    def lease(self) -> Lease:
        """The assignment's lease."""
        return self.assignment.lease


class Reporter(Protocol):
    """Where worker threads report what happens to their jobs. Must be thread-safe."""

    def started(self, job: Job) -> None:
        """The handler is about to run."""

    def finished(self, job: Job, outcome: Outcome) -> None:
        """The job ended this way on this node."""


class Isolation(Protocol):
    """Runs a job's handler somewhere other than the calling thread (a child process).

    ``run`` reports the start through ``reporter`` and returns the outcome; it
    never raises for what the handler did. See :mod:`dtq_worker.process_pool`.
    """

    def run(self, job: Job, max_result_bytes: int, reporter: Reporter) -> Outcome:
        """Run the job's handler and return how the attempt ended."""


def tail_utf8(text: str, max_bytes: int) -> str:
    """The end of ``text`` in at most ``max_bytes`` of UTF-8, marked when cut.

    Tracebacks keep their tail: the innermost frames and the error are at the end.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    keep = max_bytes - len(_TRUNCATED)
    return _TRUNCATED + data[len(data) - keep :].decode("utf-8", "ignore")


def failure_from(
    exc: Exception, context: TaskContext, coroutine: CoroutineType[Any, Any, Any] | None = None
) -> Failed:
    """The failure outcome for an exception a handler (or its ``coroutine``) raised."""
    tb = _user_frames(exc.__traceback__, coroutine)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    cancelled = isinstance(exc, TaskCancelled) or context.cancelled
    return Failed(
        Failure(
            type=type(exc).__name__[:MAX_ERROR_TYPE_CHARS],
            message=truncate_utf8(str(exc), MAX_ERROR_MESSAGE_BYTES),
            traceback=tail_utf8(text, MAX_TRACEBACK_BYTES),
            retryable=not isinstance(exc, NonRetryableError | TaskCancelled),
        ),
        cancelled=cancelled,
        retry_after_s=exc.seconds if isinstance(exc, RetryAfter) else None,
    )


_OWN_FILES = frozenset({__file__, coroutines.__file__})
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def _user_frames(
    tb: TracebackType | None, coroutine: CoroutineType[Any, Any, Any] | None
) -> TracebackType | None:
    """The traceback without the node's own frames (the runner's, and the event loop's
    on the way to an async handler's coroutine): it reads from middleware and handler."""
    kept = []
    target = coroutine.cr_code if coroutine is not None else None
    reached = target is None
    while tb is not None:
        code = tb.tb_frame.f_code
        reached = reached or code is target
        plumbing = not reached and code.co_filename.startswith(_ASYNCIO_DIR)
        if code.co_filename not in _OWN_FILES and not plumbing:
            kept.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for frame in reversed(kept):
        rebuilt = TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return rebuilt


def _node_failure(kind: ErrorType, message: str, *, cancelled: bool = False) -> Failed:
    """A non-retryable failure decided by the node, not raised by the handler."""
    failure = Failure(kind.value, truncate_utf8(message, MAX_ERROR_MESSAGE_BYTES), "", False)
    return Failed(failure, cancelled=cancelled)


def _call(
    handler: Handler, payload: Any, context: TaskContext, ran: list[CoroutineType[Any, Any, Any]]
) -> Any:
    """The handler's result: an ``async def`` one's coroutine is run to its end (and kept
    in ``ran``, where its traceback starts)."""
    result = handler(payload, context)
    if inspect.iscoroutine(result):
        ran.append(result)
        result = coroutines.run(result, context)
    return result


class Runner:
    """Runs jobs with the handlers of one registry and reports their progress and outcomes."""

    def __init__(
        self,
        registry: Registry,
        reporter: Reporter,
        max_result_bytes: int,
        isolation: Isolation | None = None,
        tracer: TaskTracer | None = None,
    ) -> None:
        self._registry = registry
        self._reporter = reporter
        self._isolation = isolation
        self._tracer = tracer
        """With ``--tracing``: each attempt runs inside its span."""
        """None: handlers run on the worker thread itself (``thread`` isolation)."""
        self.max_result_bytes = max_result_bytes
        """Largest result accepted; the node lowers it to the coordinator's limit when it
        registers (a plain int, so worker threads may read it while it is replaced)."""

    def run(self, job: Job) -> Outcome:
        """Run ``job`` on the calling thread, report its outcome, and return it."""
        outcome = self._run(job) if self._tracer is None else self._tracer.run(job, self._run)
        self._reporter.finished(job, outcome)
        return outcome

    def _run(self, job: Job) -> Outcome:
        assignment, context = job.assignment, job.context
        try:
            handler = self._registry.lookup(assignment.type)
        except HandlerNotFound:
            # Another node may handle it; hand it back rather than fail it.
            return Released(ReleaseReason.UNKNOWN_TASK_TYPE)
        if context.cancelled:
            return _node_failure(
                ErrorType.TASK_CANCELLED, "cancelled before it started", cancelled=True
            )
        if self._isolation is not None:
            return self._isolation.run(job, self.max_result_bytes, self._reporter)
        self._reporter.started(job)
        try:
            value = codec.decode(assignment.payload)
        except CodecError as exc:
            return _node_failure(ErrorType.PAYLOAD_DECODE_ERROR, str(exc))
        ran: list[CoroutineType[Any, Any, Any]] = []  # an async handler's coroutine
        try:
            if self._registry.middleware_chain:
                call = self._registry.around(functools.partial(_call, handler, ran=ran))
                result = call(value, context)
            else:
                result = _call(handler, value, context, ran)
        except Exception as exc:  # any handler failure is an outcome, not a crash
            outcome = failure_from(exc, context, ran[0] if ran else None)
            log.debug(
                "task.failed",
                task_id=context.task_id,
                attempt=context.attempt,
                error_type=outcome.error.type,
            )
            return outcome
        return self._encode(result, context)

    def _encode(self, result: object, context: TaskContext) -> Outcome:
        try:
            payload = codec.encode(result)
        except CodecError as exc:
            return _node_failure(ErrorType.RESULT_ENCODE_ERROR, str(exc))
        limit = self.max_result_bytes
        if len(payload.data) > limit:
            return _node_failure(
                ErrorType.RESULT_TOO_LARGE,
                f"result is {len(payload.data)} bytes; the limit is {limit}",
            )
        return Succeeded(payload)
