"""The caller's trace context, carried in a task's headers (``propagate_trace=True``).

With ``Client(..., propagate_trace=True)`` every submit writes the current
OpenTelemetry context (W3C ``traceparent``, and ``tracestate``/``baggage`` when
set), through the globally configured propagator, into the headers of each
task it sends; a node run with ``--tracing`` makes its handler's span a child of
it, so one trace shows the request that submitted a task and the task's run.
Headers the spec sets itself are left as they are. Needs ``opentelemetry-api``
(``pip install 'dtq[otel]'``); without a configured SDK it writes nothing.

Off by default: getting the context costs a few microseconds per call, which
matters to a client submitting tens of thousands of tasks a second.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from dtq.v1 import task_pb2

MAX_VALUE_CHARS = 2048
"""The coordinator's limit on a header value: a longer entry (a large baggage) is left out
rather than have the coordinator refuse the task."""


def require() -> None:
    """Raise ImportError with what to install if ``opentelemetry-api`` is missing."""
    if importlib.util.find_spec("opentelemetry") is None:
        raise ImportError("propagate_trace needs opentelemetry-api: pip install 'dtq[otel]'")


def stamp(specs: Iterable[task_pb2.TaskSpec]) -> None:
    """Write the current trace context into each spec's headers (its own ones win)."""
    from opentelemetry import propagate  # noqa: PLC0415 - an optional dependency

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    entries = [(k, v) for k, v in carrier.items() if len(v) <= MAX_VALUE_CHARS]
    if not entries:  # no span is active (or no SDK): nothing to carry
        return
    for spec in specs:
        headers = spec.headers
        for key, value in entries:
            if key not in headers:
                headers[key] = value
