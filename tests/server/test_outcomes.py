"""OutcomeRules on its own: the transition each outcome asks for (pure logic)."""

from __future__ import annotations

import time
from pathlib import Path

from dtq_server.config import ServerConfig
from dtq_server.models import ActiveTask, Lease, TaskError, TaskState
from dtq_server.outcomes import HELD, OutcomeRules
from dtq_server.updates import Failed, Released, Started, Succeeded

RULES = OutcomeRules(
    ServerConfig(
        listen="127.0.0.1:0",
        data_dir=Path("unused"),
        retry_backoff_s=1.0,
        max_lease_expiries=3,
        max_result_bytes=10,
    )
)
BOOM = TaskError("ValueError", "boom", "", retryable=True)


def _task(state: TaskState = TaskState.RUNNING, **fields: object) -> ActiveTask:
    values: dict[str, object] = {
        "id": "t1",
        "seq": 1,
        "type": "echo",
        "queue": "default",
        "state": state,
        "attempt": 1,
        "max_attempts": 3,
        "failures": 0,
        "lease_expiries": 0,
        "retry_backoff_s": None,
    }
    values.update(fields)
    return ActiveTask(**values)  # type: ignore[arg-type]


def test_every_transition_is_fenced_on_the_lease_it_reports() -> None:
    t = RULES.for_update(Started(Lease("t1", 2)), _task(attempt=2))
    assert (t.task_id, t.attempt, t.from_states) == ("t1", 2, HELD)
    assert t.state is TaskState.RUNNING and t.started


def test_success_records_the_start_only_when_none_was_reported() -> None:
    ok = Succeeded(Lease("t1", 1), b"1", "application/json")
    assert RULES.for_update(ok, _task(TaskState.LEASED)).started
    assert not RULES.for_update(ok, _task(TaskState.RUNNING)).started


def test_a_retryable_failure_goes_back_with_backoff_until_the_last_attempt() -> None:
    before = time.time()
    again = RULES.for_update(Failed(Lease("t1", 1), BOOM), _task())
    assert again.state is TaskState.QUEUED and again.failures == 1 and again.clear_lease
    assert again.next_attempt_at is not None and again.next_attempt_at >= before + 1.0
    last = RULES.for_update(Failed(Lease("t1", 3), BOOM), _task(attempt=3, failures=2))
    assert last.state is TaskState.FAILED and last.error == BOOM


def test_a_requested_cancel_wins_over_a_retryable_failure() -> None:
    t = RULES.for_update(Failed(Lease("t1", 1), BOOM), _task(cancel_requested=True))
    assert t.state is TaskState.CANCELLED


def test_a_task_handed_back_goes_back_to_its_queue_unless_a_cancel_was_requested() -> None:
    for reason in ("SHUTDOWN", "PREFETCH_LOWERED", "UNKNOWN_TASK_TYPE"):
        released = Released(Lease("t1", 1), reason)
        back = RULES.for_update(released, _task(TaskState.LEASED))
        assert (back.state, back.clear_lease, back.failures) == (TaskState.QUEUED, True, None)
        cancelled = RULES.for_update(released, _task(TaskState.LEASED, cancel_requested=True))
        assert cancelled.state is TaskState.CANCELLED


def test_a_result_over_the_limit_fails_the_task_for_good() -> None:
    t = RULES.for_update(Succeeded(Lease("t1", 1), b"x" * 11, "text/plain"), _task())
    assert t.state is TaskState.FAILED
    assert t.error is not None and t.error.type == "RESULT_TOO_LARGE"


def test_lost_leases_count_until_the_task_is_dead_lettered() -> None:
    died = Released(Lease("t1", 1), "WORKER_DIED")
    assert RULES.for_update(died, _task(lease_expiries=1)).state is TaskState.QUEUED
    final = RULES.for_update(died, _task(lease_expiries=2))
    assert final.state is TaskState.FAILED and final.lease_expiries == 3
    assert RULES.orphaned(_task(), 1, expired=False).state is TaskState.QUEUED
    expired = RULES.orphaned(_task(lease_expiries=2), 1, expired=True)
    assert expired.error is not None and expired.error.type == "LEASE_EXPIRED"


def test_a_handlers_retry_after_replaces_the_backoff_but_not_the_attempt_budget() -> None:
    before = time.time()
    wished = Failed(Lease("t1", 1), BOOM, retry_after_s=120.0)
    again = RULES.for_update(wished, _task())
    assert again.state is TaskState.QUEUED and again.failures == 1
    assert again.next_attempt_at is not None
    assert before + 120.0 <= again.next_attempt_at <= time.time() + 120.0  # no jitter
    soon = RULES.for_update(Failed(Lease("t1", 1), BOOM, retry_after_s=0.0), _task())
    assert soon.next_attempt_at is not None and soon.next_attempt_at <= time.time()
    last = Failed(Lease("t1", 3), BOOM, retry_after_s=120.0)
    ended = RULES.for_update(last, _task(attempt=3, failures=2))
    assert ended.state is TaskState.FAILED and ended.next_attempt_at is None
