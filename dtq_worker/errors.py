"""The worker's errors: what handlers raise, and what goes wrong around them.

Every error the worker package raises derives from :class:`WorkerError`::

    WorkerError
    ├── NonRetryableError         a handler failure retrying cannot fix (retryable = false)
    ├── RetryAfter                a handler failure whose next attempt waits as long as it says
    ├── TaskCancelled             the task was cancelled; raised by ctx.raise_if_cancelled()
    ├── ConfigError               the node cannot start as configured
    │   ├── InvalidTaskType           a task name the coordinator would reject
    │   ├── DuplicateTaskType         a task name registered twice in one registry
    │   └── RegistryLoadError         MODULE[:ATTR] cannot be imported or is not a Registry
    ├── HandlerNotFound           no handler for an assigned task type
    ├── CodecError                a payload does not decode, or a result does not encode
    ├── RestartIntensityExceeded  worker threads died too often; the node gives up
    ├── LifespanFailed            the registry's lifespan raised while setting up
    └── StreamError               the session stream to the coordinator ended
        ├── StreamBroken              transport failure or silence: reconnect and resume
        ├── SessionExpired            the coordinator forgot the session: register afresh
        └── RegistrationRejected      the coordinator refused RegisterNode: fatal

Handlers raise :class:`NonRetryableError` and :class:`TaskCancelled`; everything
else is raised by the node itself (a :class:`CodecError` or :class:`HandlerNotFound`
becomes the task's outcome, never a crash). gRPC errors become :class:`StreamError` s in
one place, :func:`dtq_worker.rpc.stream_error`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc


class WorkerError(Exception):
    """Base class of every error the worker package raises."""


class NonRetryableError(WorkerError):
    """Raise from a handler when retrying cannot help: the task fails at once."""


class RetryAfter(WorkerError):
    """Raise from a handler to fail this attempt and start the next one no sooner than
    ``seconds`` from now, instead of after the coordinator's exponential backoff.

    For a wait the handler knows better, such as an upstream service's
    ``Retry-After``. It counts as a failure against the task's ``max_attempts``:
    raised on the last attempt, the task fails. The coordinator caps the wait
    at 30 days.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"RetryAfter needs a finite, non-negative wait, not {seconds!r}")
        self.seconds = float(seconds)
        super().__init__(message or f"retry in {self.seconds:g} s")


class TaskCancelled(WorkerError):
    """The task was cancelled by a client (raised by ``TaskContext.raise_if_cancelled``)."""


class ConfigError(WorkerError):
    """The node cannot start with this configuration."""


class InvalidTaskType(ConfigError):
    """A task type name is not 1-200 characters of ``[A-Za-z0-9_.:-]``."""


class DuplicateTaskType(ConfigError):
    """Two handlers were registered under one task type in the same registry."""


class RegistryLoadError(ConfigError):
    """``MODULE[:ATTR]`` could not be imported, or does not name a Registry."""


class HandlerNotFound(WorkerError):
    """The registry has no handler for a task type."""

    def __init__(self, task_type: str) -> None:
        super().__init__(f"no handler registered for task type {task_type!r}")
        self.task_type = task_type


class CodecError(WorkerError):
    """A payload could not be decoded, or a handler's result could not be encoded."""


class LifespanFailed(WorkerError):
    """The registry's lifespan raised while setting up (see :mod:`dtq_worker.lifespan`).

    In the node process (thread isolation) the node exits 1 before it connects.
    In a handler process it ends the worker thread that started the process,
    as a crash: the task goes back to the coordinator, and the restart counts
    towards the restart intensity.
    """

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.traceback_text = traceback_text
        """The setup's traceback (from a handler process, where the exception stayed)."""


class RestartIntensityExceeded(WorkerError):
    """More worker threads died within the restart period than the supervisor allows."""

    def __init__(self, restarts: int, period_s: float) -> None:
        super().__init__(f"more than {restarts} worker restarts within {period_s} s")
        self.restarts = restarts
        self.period_s = period_s


class StreamError(WorkerError):
    """The session stream ended; ``code`` and ``reason`` say how, when known."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        head = code.name if code is not None else "stream"
        if reason:
            head += f" ({reason})"
        parts = [message] if message else []
        parts += [f"{field}: {why}" for field, why in field_violations]
        super().__init__(f"{head}: {'; '.join(parts)}" if parts else head)
        self.code = code
        self.reason = reason
        self.field_violations = list(field_violations)


class StreamBroken(StreamError):
    """The stream failed or went silent; the node reconnects and resumes its session."""


class SessionExpired(StreamError):
    """The coordinator ended the session; every lease is gone and the node registers afresh."""


class RegistrationRejected(StreamError):
    """The coordinator refused the registration (INVALID_ARGUMENT); retrying cannot help."""
