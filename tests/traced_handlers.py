"""Handlers of a node run with ``--tracing`` in the tests, with the OpenTelemetry SDK set up
the way the README says: in the handlers' module. Finished spans are written as JSON
lines to the file ``DTQ_TEST_SPANS`` names."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from dtq_worker import Registry, TaskContext


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(
            out=open(os.environ["DTQ_TEST_SPANS"], "a", buffering=1),  # noqa: SIM115 - for the process's life
            formatter=_one_line,
        )
    )
)
trace.set_tracer_provider(_provider)

registry = Registry()


@registry.task("traced")
def traced(payload: Any, ctx: TaskContext) -> str:
    """The traceparent this attempt was given."""
    return ctx.headers.get("traceparent", "")
