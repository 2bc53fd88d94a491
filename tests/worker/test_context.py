"""TaskContext: cancellation and coalesced progress reports."""

from __future__ import annotations

import json
import math
import threading

import pytest

from dtq.v1 import task_pb2, worker_service_pb2
from dtq_worker import TaskCancelled, TaskContext, convert
from dtq_worker.context import NO_HEADERS
from dtq_worker.ledger import Ledger
from dtq_worker.models import Assignment, AssignmentsReceived, Lease, Progress, Succeeded
from dtq_worker.process_pool import ProcessPool
from dtq_worker.runner import Runner
from tests.handlers import registry as handlers
from tests.worker.fakes import RecordingReporter


def _context(notified: list[TaskContext] | None = None, attempt: int = 1) -> TaskContext:
    sink = notified.append if notified is not None else (lambda ctx: None)
    return TaskContext("t1", attempt, 3, "echo", "default", "", on_progress=sink)


def test_progress_reports_are_coalesced_until_collected() -> None:
    notified: list[TaskContext] = []
    ctx = _context(notified)
    for i in range(1000):
        ctx.report_progress(i / 10, f"step {i}")
    assert notified == [ctx]  # one notification for a thousand reports
    assert ctx.take_progress() == Progress(99.9, "step 999")
    assert ctx.take_progress() is None
    ctx.report_progress(100)
    assert len(notified) == 2


def test_progress_values_are_normalised() -> None:
    ctx = _context()
    ctx.report_progress(math.nan)
    assert ctx.take_progress() == Progress(-1.0, "")
    ctx.report_progress(250, "é" * 1000)
    progress = ctx.take_progress()
    assert progress is not None
    assert progress.percent == 100.0
    assert len(progress.message.encode()) <= 1024


def test_cancellation() -> None:
    ctx = _context()
    assert not ctx.cancelled
    ctx.raise_if_cancelled()
    ctx.cancel_event.set()
    assert ctx.cancelled
    with pytest.raises(TaskCancelled):
        ctx.raise_if_cancelled()


def test_the_cancel_event_is_one_event_built_on_first_use() -> None:
    ctx = _context()
    assert not ctx.cancelled and ctx.cancel_cell._event is None  # checking builds nothing
    events: list[threading.Event] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        events.append(ctx.cancel_event)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(events) == 8 and all(event is events[0] for event in events)


def test_a_handler_waiting_on_the_cancel_event_wakes_when_cancelled() -> None:
    ctx = _context()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ctx.cancel_event.wait(10)))
    waiter.start()
    ctx.cancel_event.set()  # what the node's ledger does on a cancel
    waiter.join(10)
    assert woke == [True] and ctx.cancelled


def test_attempt_facts() -> None:
    assert _context(attempt=3).is_last_attempt
    assert not _context(attempt=2).is_last_attempt
    assert _context().lease == Lease("t1", 1)
    assert _context().deadline is None


# --- headers -------------------------------------------------------------------------------

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tenant": "acme",
}


def _received(headers: dict[str, str]) -> Assignment:
    """An assignment of the ``headers`` handler (tests/handlers.py) as the node receives it."""
    message = worker_service_pb2.TaskAssignment(
        lease=task_pb2.Lease(task_id="t1", attempt=1),
        type="headers",
        queue="default",
        payload=task_pb2.Payload(data=b"null", content_type="application/json"),
        max_attempts=3,
        headers=headers,
    )
    received = convert.inbound(
        worker_service_pb2.ConnectResponse(
            assignments=worker_service_pb2.TaskAssignments(assignments=[message])
        )
    )
    assert isinstance(received, AssignmentsReceived)
    [assignment] = received.assignments
    return assignment


def test_the_context_has_the_assignments_headers_read_only() -> None:
    job = Ledger(on_progress=lambda ctx: None).accept(_received(HEADERS))
    assert job is not None
    headers = job.context.headers
    assert headers == HEADERS
    with pytest.raises(TypeError):
        headers["tenant"] = "evil"  # type: ignore[index]
    assert job.assignment.headers == HEADERS
    bare = Ledger(on_progress=lambda ctx: None).accept(_received({}))
    assert bare is not None and bare.context.headers is NO_HEADERS
    assert _context().headers == {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_the_handler_gets_the_headers(isolation: str) -> None:
    # The process pool pickles the assignment to a child, which builds its own context.
    pool = ProcessPool(handlers) if isolation == "process" else None
    try:
        runner = Runner(handlers, RecordingReporter(), max_result_bytes=1 << 20, isolation=pool)
        for headers in (HEADERS, {}):
            job = Ledger(on_progress=lambda ctx: None).accept(_received(headers))
            assert job is not None
            outcome = runner.run(job)
            assert isinstance(outcome, Succeeded), outcome
            assert json.loads(outcome.result.data) == headers
    finally:
        if pool is not None:
            pool.close()
