"""The supervisor: dead worker threads are reaped, replaced and their tasks released."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dtq_worker import RestartIntensityExceeded, TaskContext
from dtq_worker.intensity import RestartIntensity
from dtq_worker.models import Released, Succeeded
from dtq_worker.prefetch import WorkDone
from dtq_worker.runner import Runner
from dtq_worker.supervisor import Supervisor
from tests.harness import wait_until
from tests.worker.fakes import RecordingReporter, crash_registry, make_job

SLOTS = 3


class Harness:
    def __init__(self, max_restarts: int = 3) -> None:
        self.reporter = RecordingReporter()
        self.escalations: list[RestartIntensityExceeded] = []
        self.now = 0.0
        self.supervisor = Supervisor(
            SLOTS,
            Runner(crash_registry(), self.reporter, 1024),
            self.reporter,
            RestartIntensity(max_restarts, period_s=5.0),
            on_escalate=self.escalations.append,
            clock=lambda: self.now,
        )


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.supervisor.close()


def test_a_thread_killed_by_system_exit_is_restarted_and_its_task_released(harness) -> None:
    supervisor = harness.supervisor
    supervisor.start(monitor=False)
    assert supervisor.alive == SLOTS
    crash = make_job("crash", task_id="c1")
    supervisor.submit(crash)
    wait_until(lambda: supervisor.alive == SLOTS - 1, 5, what="the worker to die")

    assert supervisor.check_workers() == 1

    assert supervisor.alive == SLOTS
    assert supervisor.restarts == 1
    assert harness.reporter.outcomes() == {crash.lease: Released("WORKER_DIED")}
    # The pool still works.
    echo = make_job("echo", b'"hi"', task_id="e1")
    supervisor.submit(echo)
    wait_until(lambda: echo.lease in harness.reporter.outcomes(), 5, what="echo to finish")
    assert isinstance(harness.reporter.outcomes()[echo.lease], Succeeded)
    assert not harness.escalations


def test_a_step_with_nothing_dead_changes_nothing(harness) -> None:
    harness.supervisor.start(monitor=False)
    assert harness.supervisor.check_workers() == 0
    assert harness.supervisor.alive == SLOTS
    assert harness.supervisor.restarts == 0


def test_the_monitor_restarts_on_its_own_and_keeps_the_slot_count(harness) -> None:
    supervisor = harness.supervisor
    supervisor.start()
    for i in range(3):
        harness.now += 10.0  # spaced out: no escalation
        supervisor.submit(make_job("crash", task_id=f"c{i}"))
        wait_until(lambda: supervisor.restarts == i + 1, 5, what=f"restart {i + 1}")  # noqa: B023
        wait_until(lambda: supervisor.alive == SLOTS, 5, what="full pool")
    assert not harness.escalations


def test_exceeding_the_intensity_escalates_and_stops_restarting(harness) -> None:
    supervisor = harness.supervisor
    supervisor.start()
    crashes = [make_job("crash", task_id=f"c{i}") for i in range(4)]
    for job in crashes:
        supervisor.submit(job)
    wait_until(lambda: harness.escalations, 5, what="escalation")
    assert supervisor.restarts == 3
    assert isinstance(supervisor.escalation, RestartIntensityExceeded)
    outcomes = harness.reporter.outcomes()
    assert [outcomes.get(job.lease) for job in crashes] == [Released("WORKER_DIED")] * 4
    # No replacement for the fourth death, and the rest stop taking work.
    wait_until(lambda: supervisor.alive == 0, 5, what="workers to exit")
    assert supervisor.check_workers() == 0
    assert supervisor.alive == 0


def test_stop_taking_work_returns_the_jobs_nobody_took(harness) -> None:
    supervisor = harness.supervisor  # not started: nobody takes anything
    jobs = [make_job("echo", task_id=f"e{i}") for i in range(3)]
    for job in jobs:
        supervisor.submit(job)
    assert supervisor.stop_taking_work() == jobs
    assert supervisor.stop_taking_work() == []


def test_jobs_taken_back_are_the_oldest_waiting_and_never_run(harness) -> None:
    supervisor = harness.supervisor
    jobs = [make_job("echo", b'"hi"', task_id=f"e{i}") for i in range(5)]
    for job in jobs:
        supervisor.submit(job)
    assert supervisor.queued == 5
    assert supervisor.idle == 0  # not started: no threads
    assert supervisor.take_back(2) == jobs[:2]
    assert supervisor.queued == 3
    supervisor.start(monitor=False)
    wait_until(lambda: len(harness.reporter.outcomes()) == 3, 5, what="the rest to run")
    assert set(harness.reporter.outcomes()) == {job.lease for job in jobs[2:]}
    assert supervisor.queued == 0
    wait_until(lambda: supervisor.idle == SLOTS, 5, what="the threads to be idle")
    assert supervisor.take_back(4) == []


def test_work_done_counts_finished_and_running_jobs_and_survives_a_restart() -> None:
    release = threading.Event()
    registry = crash_registry()

    @registry.task("wait")
    def wait(payload: Any, ctx: TaskContext) -> None:
        release.wait(10)

    now = [10.0]
    reporter = RecordingReporter()
    supervisor = Supervisor(
        SLOTS, Runner(registry, reporter, 1024), reporter, RestartIntensity(3, period_s=5.0),
        on_escalate=lambda exc: None, clock=lambda: now[0],
    )  # fmt: skip
    supervisor.start(monitor=False)
    try:
        assert supervisor.work_done() == WorkDone(0, 0.0)
        job = make_job("wait", task_id="w1")
        supervisor.submit(job)
        wait_until(lambda: len(supervisor.work_done().running) == 1, 5, what="the job to start")
        now[0] = 12.5
        assert supervisor.work_done() == WorkDone(0, 0.0, running=(2.5,))
        release.set()
        wait_until(lambda: job.lease in reporter.outcomes(), 5, what="the job to finish")
        wait_until(lambda: not supervisor.work_done().running, 5, what="the slot to free")
        assert supervisor.work_done() == WorkDone(1, 2.5)

        # A dead thread's count stays in the totals.
        crash = make_job("crash", task_id="c1")
        supervisor.submit(crash)
        wait_until(lambda: supervisor.alive == SLOTS - 1, 5, what="the worker to die")
        assert supervisor.check_workers() == 1
        assert supervisor.work_done() == WorkDone(1, 2.5)
    finally:
        release.set()
        supervisor.close()
