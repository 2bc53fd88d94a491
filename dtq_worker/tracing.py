"""A span per task run, a child of the trace that submitted the task (``--tracing``).

The span ``process <queue>`` (kind CONSUMER, OpenTelemetry's messaging
conventions) covers one attempt: the handler runs inside it, so spans the
handler starts are its children (in ``thread`` isolation; a child process has
a tracer of its own). Its parent is the context the task's headers carry
(``traceparent``, written by ``Client(..., propagate_trace=True)`` or by hand),
read with the globally configured propagator; a task without one starts a new
trace. A failed attempt sets the span's status to ERROR with the error's type.

Spans go wherever the process's OpenTelemetry SDK sends them: configure it in
the handlers' module or run the node under ``opentelemetry-instrument``.
Needs ``opentelemetry-api`` (``pip install 'dtq[otel]'``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

import dtq
from dtq_worker.errors import ConfigError
from dtq_worker.models import Failed, Outcome, Released

if TYPE_CHECKING:
    from dtq_worker.runner import Job


def require() -> None:
    """Raise ConfigError saying what to install if ``opentelemetry-api`` is missing."""
    if importlib.util.find_spec("opentelemetry") is None:
        raise ConfigError("--tracing needs opentelemetry-api: pip install 'dtq[otel]'")


class TaskTracer:
    """Runs each attempt inside its span."""

    def __init__(self) -> None:
        require()
        from opentelemetry import propagate, trace  # noqa: PLC0415 - an optional dependency

        self._extract = propagate.extract
        self._tracer = trace.get_tracer("dtq_worker", dtq.__version__)
        self._consumer = trace.SpanKind.CONSUMER
        self._error = trace.StatusCode.ERROR

    def run(self, job: Job, attempt: Callable[[Job], Outcome]) -> Outcome:
        """``attempt(job)`` inside the job's span; the span records how it ended."""
        assignment = job.assignment
        parent = self._extract(assignment.headers) if assignment.headers else None
        attributes: dict[str, str | int] = {
            "messaging.system": "dtq",
            "messaging.operation.type": "process",
            "messaging.destination.name": assignment.queue,
            "messaging.message.id": assignment.lease.task_id,
            "dtq.task.type": assignment.type,
            "dtq.task.attempt": assignment.lease.attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {assignment.queue}",
            context=parent,
            kind=self._consumer,
            attributes=attributes,
            record_exception=False,  # handler errors are outcomes, recorded below
        ) as span:
            outcome = attempt(job)
            if isinstance(outcome, Failed):
                span.set_attribute("error.type", outcome.error.type)
                span.set_status(self._error, outcome.error.message[:200])
            elif isinstance(outcome, Released):
                span.set_attribute("dtq.released", outcome.reason)
            return outcome
