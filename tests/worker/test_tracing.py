"""OpenTelemetry: the client carries the caller's trace in a task's headers, and a node run
with ``tracing`` runs the attempt in a span that continues it. A real SDK (in-memory
exporter), a real in-process coordinator and node."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dtq_client import Client, TaskSpec, TaskState
from dtq_worker import Registry, TaskContext
from tests.harness import InProcessCoordinator, start_node, start_server, wait_until

from .nodes import RunningNode

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test. The SDK is set up once per process: OpenTelemetry's
    global tracer provider cannot be replaced."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def traced_registry() -> Registry:
    registry = Registry()

    @registry.task("traced")
    def traced(payload: dict[str, object], ctx: TaskContext) -> str:
        with trace.get_tracer("handler").start_as_current_span("inside the handler"):
            if payload.get("fail"):
                raise ValueError("asked to fail")
            return dict(ctx.headers).get("traceparent", "")

    return registry


def processed(spans: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    wait_until(
        lambda: sum(s.name.startswith("process ") for s in spans.get_finished_spans()) >= count,
        10,
        what=f"{count} process spans",
    )
    return [s for s in spans.get_finished_spans() if s.name.startswith("process ")]


def test_a_task_run_continues_the_trace_that_submitted_it(
    coordinator_fast: InProcessCoordinator,
    run_node: Callable[..., RunningNode],
    spans: InMemorySpanExporter,
) -> None:
    run_node(coordinator_fast.address, traced_registry(), tracing=True)
    tracer = trace.get_tracer("test")
    with Client(coordinator_fast.address, propagate_trace=True) as client:
        with tracer.start_as_current_span("web request") as request:
            task = client.submit("traced", {}, queue="default")
            own = client.submit(
                "traced", {}, headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
        assert task.headers["traceparent"].startswith("00-")
        done = client.wait(task.id, timeout_s=10)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_value() == task.headers["traceparent"]
        assert (
            client.wait(own.id, timeout_s=10).result_value()
            == "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        )
        # Outside any span nothing is added: the task starts a trace of its own.
        bare = client.submit("traced", {})
        assert "traceparent" not in bare.headers
        client.wait(bare.id, timeout_s=10)
    by_task = {s.attributes["messaging.message.id"]: s for s in processed(spans, 3)}  # type: ignore[index]
    run = by_task[task.id]
    parent = request.get_span_context()
    assert run.parent is not None and run.parent.span_id == parent.span_id
    assert run.context.trace_id == parent.trace_id
    assert run.kind is trace.SpanKind.CONSUMER
    assert dict(run.attributes or {}) == {
        "messaging.system": "dtq",
        "messaging.operation.type": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": task.id,
        "dtq.task.type": "traced",
        "dtq.task.attempt": 1,
    }
    inside = [s for s in spans.get_finished_spans() if s.name == "inside the handler"]
    assert any(s.parent is not None and s.parent.span_id == run.context.span_id for s in inside)
    assert by_task[own.id].context.trace_id == int("1" * 32, 16), "the spec's own header wins"
    assert by_task[bare.id].parent is None


def test_a_failed_attempt_marks_its_span(
    coordinator_fast: InProcessCoordinator,
    run_node: Callable[..., RunningNode],
    spans: InMemorySpanExporter,
) -> None:
    run_node(coordinator_fast.address, traced_registry(), tracing=True)
    with Client(coordinator_fast.address, propagate_trace=True) as client:
        task = client.submit("traced", {"fail": True}, max_attempts=1)
        assert client.wait(task.id, timeout_s=10).state is TaskState.FAILED
    (run,) = processed(spans, 1)
    assert run.status.status_code is trace.StatusCode.ERROR
    assert run.status.description == "asked to fail"
    assert (run.attributes or {})["error.type"] == "ValueError"


def test_every_submit_path_carries_the_trace(
    coordinator_fast: InProcessCoordinator, spans: InMemorySpanExporter
) -> None:
    with Client(coordinator_fast.address, propagate_trace=True) as client:
        with trace.get_tracer("test").start_as_current_span("batch job") as job:
            trace_id = f"{job.get_span_context().trace_id:032x}"
            tasks = [r.task for r in client.submit_many([TaskSpec("traced")])]
            tasks += client.submit_group([TaskSpec("traced")]).tasks
            with client.submitter() as submitter:
                ack = submitter.submit("traced").result(timeout=10)
            tasks.append(client.get(ack.task_id))
        for task in tasks:
            assert task.headers["traceparent"].split("-")[1] == trace_id, task


def test_no_trace_is_written_unless_asked(
    coordinator_fast: InProcessCoordinator, spans: InMemorySpanExporter
) -> None:
    request = trace.get_tracer("test").start_as_current_span("web request")
    with Client(coordinator_fast.address) as client, request:
        assert client.submit("traced", {}).headers == {}


def test_dtq_worker_tracing_with_the_sdk_set_up_in_the_handlers_module(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    server = start_server(tmp_path / "data")
    exported = tmp_path / "spans.jsonl"
    node = start_node(
        server.address, tmp_path, "traced", "--tracing",
        module="tests.traced_handlers:registry", env={"DTQ_TEST_SPANS": str(exported)},
    )  # fmt: skip
    try:
        with Client(server.address, propagate_trace=True) as client:
            with trace.get_tracer("test").start_as_current_span("web request") as request:
                task = client.submit("traced", {})
            assert client.wait(task.id, timeout_s=20).state is TaskState.SUCCEEDED
        wait_until(lambda: exported.exists() and exported.read_text(), 10, what="a span")
        (line,) = exported.read_text().splitlines()
        span = json.loads(line)
        assert span["name"] == "process default"
        assert span["parent_id"] == f"0x{request.get_span_context().span_id:016x}"
        assert span["attributes"]["messaging.message.id"] == task.id
    finally:
        node.stop()
        server.stop()
