"""``async def`` handlers: run on their worker thread's own loop, interrupted when cancelled."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from dtq_worker import NonRetryableError, Registry, TaskCancelled, TaskContext, coroutines
from dtq_worker.intensity import RestartIntensity
from dtq_worker.models import Failed, Payload, Succeeded
from dtq_worker.runner import Runner
from dtq_worker.supervisor import Supervisor
from tests.harness import wait_until
from tests.worker.fakes import RecordingReporter, make_job, on_thread

registry = Registry()
started = threading.Event()
unwound = threading.Event()


@registry.task("echo")
async def echo(payload: Any, ctx: TaskContext) -> Any:
    await asyncio.sleep(0)
    return {"payload": payload, "attempt": ctx.attempt}


@registry.task("loop")
async def loop_id(payload: Any, ctx: TaskContext) -> int:
    return id(asyncio.get_running_loop())


@registry.task("boom")
async def boom(payload: Any, ctx: TaskContext) -> None:
    await asyncio.sleep(0)
    raise ValueError("no luck")


@registry.task("fatal")
async def fatal(payload: Any, ctx: TaskContext) -> None:
    raise NonRetryableError("bad input")


@registry.task("sleeper")
async def sleeper(payload: Any, ctx: TaskContext) -> None:
    started.set()
    try:
        await asyncio.sleep(60)
    finally:
        unwound.set()


@registry.task("stubborn")
async def stubborn(payload: Any, ctx: TaskContext) -> str:
    started.set()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        return "finished anyway"
    return "slept"


@registry.task("self_cancel")
async def self_cancel(payload: Any, ctx: TaskContext) -> None:
    inner = asyncio.ensure_future(asyncio.sleep(60))
    asyncio.get_running_loop().call_soon(inner.cancel)
    await inner  # raises CancelledError: the handler's own, not the task's cancel


@pytest.fixture
def runner() -> Runner:
    return Runner(registry, RecordingReporter(), max_result_bytes=1024)


def test_an_async_handler_returns_its_result(runner: Runner) -> None:
    outcome = on_thread(lambda: runner.run(make_job("echo", b'{"a": 1}', attempt=2)))
    assert outcome == Succeeded(Payload(b'{"payload":{"a":1},"attempt":2}', "application/json"))


def test_each_thread_keeps_one_loop_of_its_own(runner: Runner) -> None:
    def two() -> list[Any]:
        return [runner.run(make_job("loop")) for _ in range(2)]

    first, second = on_thread(two), on_thread(two)
    assert first[0] == first[1]  # one loop for a thread's tasks
    assert second[0] == second[1]
    # (ids may repeat once a loop is freed, so compare while both threads' loops live)
    loops: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def hold(name: str) -> None:
        loops[name] = runner.run(make_job("loop"))
        barrier.wait(10)
        coroutines.close_thread_loop()

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loops["a"] != loops["b"]


def test_an_exception_is_a_failure_whose_traceback_starts_in_the_handler(runner) -> None:
    outcome = on_thread(lambda: runner.run(make_job("boom")))
    assert isinstance(outcome, Failed)
    error = outcome.error
    assert (error.type, error.message, error.retryable) == ("ValueError", "no luck", True)
    assert error.traceback.splitlines()[1].strip().endswith("in boom")
    assert "asyncio" not in error.traceback
    fatal = on_thread(lambda: runner.run(make_job("fatal")))
    assert isinstance(fatal, Failed) and not fatal.error.retryable


def test_a_cancel_interrupts_the_coroutine(runner: Runner) -> None:
    started.clear()
    unwound.clear()
    job = make_job("sleeper")
    outcomes: list[Any] = []
    thread = threading.Thread(target=lambda: outcomes.append(runner.run(job)))
    thread.start()
    try:
        assert started.wait(10)
        job.context.cancel_event.set()  # from another thread, as the node does
        thread.join(10)
        assert not thread.is_alive(), "the cancelled coroutine still runs"
    finally:
        job.context.cancel_event.set()
    assert unwound.is_set()  # its finally block ran
    (outcome,) = outcomes
    assert isinstance(outcome, Failed) and outcome.cancelled
    assert (outcome.error.type, outcome.error.retryable) == (TaskCancelled.__name__, False)


def test_a_coroutine_that_catches_the_cancel_still_reports_its_result(runner) -> None:
    started.clear()
    job = make_job("stubborn")

    def cancel_once_started() -> None:
        started.wait(10)
        job.context.cancel_event.set()

    threading.Thread(target=cancel_once_started).start()
    outcome = on_thread(lambda: runner.run(job))
    assert outcome == Succeeded(Payload(b'"finished anyway"', "application/json"))


def test_a_cancellation_of_the_handlers_own_is_a_retryable_failure(runner) -> None:
    outcome = on_thread(lambda: runner.run(make_job("self_cancel")))
    assert isinstance(outcome, Failed) and not outcome.cancelled
    assert (outcome.error.type, outcome.error.retryable) == ("HandlerCancelled", True)


def test_a_supervised_worker_thread_closes_its_loop_when_it_stops() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    handlers = Registry()

    @handlers.task("grab_loop")
    async def grab(payload: Any, ctx: TaskContext) -> None:
        loops.append(asyncio.get_running_loop())

    reporter = RecordingReporter()
    supervisor = Supervisor(
        1, Runner(handlers, reporter, 1024), reporter, RestartIntensity(3, 5.0), print
    )
    supervisor.start(monitor=False)
    try:
        job = make_job("grab_loop")
        supervisor.submit(job)
        wait_until(lambda: job.lease in reporter.outcomes(), 5, what="the task to finish")
        assert not loops[0].is_closed()  # kept for the thread's next task
        supervisor.stop_taking_work()
        wait_until(lambda: supervisor.alive == 0, 5, what="the worker thread to stop")
        assert loops[0].is_closed()
    finally:
        supervisor.close()
