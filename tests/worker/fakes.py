"""Fakes for pure-logic tests: a reporter that records, and handy registries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from dtq_worker import Registry, TaskContext, coroutines
from dtq_worker.models import Assignment, Lease, Outcome, Payload
from dtq_worker.runner import Job

T = TypeVar("T")


class RecordingReporter:
    """Records what worker threads report, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, Lease, Outcome | None]] = []

    def started(self, job: Job) -> None:
        with self._lock:
            self.events.append(("started", job.lease, None))

    def finished(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            self.events.append(("finished", job.lease, outcome))

    def outcomes(self) -> dict[Lease, Outcome]:
        with self._lock:
            return {lease: o for kind, lease, o in self.events if kind == "finished" and o}


def make_job(
    type: str = "echo",
    payload: bytes = b"{}",
    content_type: str = "application/json",
    task_id: str = "t1",
    attempt: int = 1,
    max_attempts: int = 3,
) -> Job:
    """A job as the ledger would build it (without a progress listener)."""
    assignment = Assignment(
        lease=Lease(task_id, attempt),
        type=type,
        queue="default",
        payload=Payload(payload, content_type),
        max_attempts=max_attempts,
    )
    context = TaskContext(
        task_id=task_id,
        attempt=attempt,
        max_attempts=max_attempts,
        type=type,
        queue="default",
        content_type=content_type,
    )
    return Job(assignment, context)


def on_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a fresh thread, as a worker thread runs it (its event loop closed
    after). Not on pytest's own thread: Playwright's sync API (the UI tests) may have
    left an event loop running there."""
    out: list[T] = []

    def body() -> None:
        try:
            out.append(fn())
        finally:
            coroutines.close_thread_loop()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the handler did not end"
    return out[0]


def crash_registry() -> Registry:
    """``crash`` kills its worker thread (SystemExit); ``echo`` returns its payload."""
    registry = Registry()

    @registry.task("crash")
    def crash(payload: Any, ctx: TaskContext) -> None:
        raise SystemExit(3)

    @registry.task("echo")
    def echo(payload: Any, ctx: TaskContext) -> Any:
        return payload

    return registry
