"""The client's task-lifecycle calls against a real coordinator and real worker nodes.

Priorities, schedules, timeouts, retention, bulk cancel/retry/purge, and queue
pause and concurrency limits. Tasks that must stay queued go to a queue of the
test's own (the ``queue`` fixture), which no node serves unless the test starts
one for it (``served``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest

from dtq_client import (
    CancelCounts,
    Client,
    ClientConfig,
    InvalidArgument,
    RetryPolicy,
    RetryResult,
    Task,
    TaskNotFound,
    TaskSpec,
    TaskState,
)
from tests.harness import InProcessCoordinator, wait_until

from .conftest import NOBODY, Cluster

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)
# Timestamps cross the wire to the nanosecond; computed ones may be off by float rounding.
CLOCK_SLACK_S = 0.01


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    config = ClientConfig(address=cluster.address, timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


def state_is(client: Client, task_id: str, state: TaskState) -> Callable[[], Task | None]:
    """A wait_until predicate: the task once it is in ``state``, else None."""

    def check() -> Task | None:
        task = client.get(task_id)
        return task if task.state is state else None

    return check


def by_start(tasks: list[Task]) -> list[Task]:
    """``tasks`` in the order they started running."""
    assert all(t.started_at is not None for t in tasks)
    return sorted(tasks, key=lambda t: t.started_at or datetime.max)


# --- submit options ------------------------------------------------------------------------


def test_lifecycle_options_are_stored_and_reported(client: Client, queue: str) -> None:
    before = time.time()
    task = client.submit(
        NOBODY,
        queue=queue,
        priority=7,
        delay_s=60,
        execution_timeout_s=2.5,
        schedule_to_start_timeout_s=3600,
        result_ttl_s=120,
        rate_key="tenant-7",
    )
    assert (task.priority, task.execution_timeout_s, task.rate_key) == (7, 2.5, "tenant-7")
    assert task.scheduled_at is not None
    assert before + 60 - CLOCK_SLACK_S <= task.scheduled_at.timestamp() <= time.time() + 60
    assert task.expires_at is None  # only finished tasks expire
    assert client.get(task.id) == task
    cancelled = client.cancel(task.id)
    assert cancelled.finished_at is not None and cancelled.expires_at is not None
    kept_s = (cancelled.expires_at - cancelled.finished_at).total_seconds()
    assert kept_s == pytest.approx(120, abs=CLOCK_SLACK_S)


def test_a_naive_run_at_is_local_time(client: Client, queue: str) -> None:
    local = datetime.now().replace(microsecond=0) + timedelta(hours=1)  # naive, local
    task = client.submit(NOBODY, queue=queue, run_at=local)
    assert task.scheduled_at == local.astimezone()
    assert client.cancel(task.id).state is TaskState.CANCELLED


def test_run_at_and_delay_together_are_refused(client: Client, queue: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.submit(NOBODY, queue=queue, run_at=datetime.now(), delay_s=1)
    assert [field for field, _ in info.value.field_violations] == ["task.run_at"]
    with pytest.raises(InvalidArgument) as info:
        client.submit(NOBODY, queue=queue, priority=1001, result_ttl_s=0.5)
    fields = [field for field, _ in info.value.field_violations]
    assert fields == ["task.priority", "task.result_ttl"]


def test_a_delayed_task_runs_once_due(client: Client) -> None:
    before = time.time()
    task = client.submit("echo", {"later": True}, delay_s=0.5)
    assert task.scheduled_at is not None
    due = task.scheduled_at.timestamp()
    assert before + 0.5 - CLOCK_SLACK_S <= due <= time.time() + 0.5 + CLOCK_SLACK_S
    done = client.wait(task.id, timeout_s=10)
    assert done.state is TaskState.SUCCEEDED
    assert done.started_at is not None and done.started_at >= task.scheduled_at


def test_an_attempt_past_its_execution_timeout_fails_timed_out(client: Client) -> None:
    task = client.submit("sleep", {"seconds": 30}, execution_timeout_s=0.3, max_attempts=1)
    done = client.wait(task.id, timeout_s=15)
    assert done.state is TaskState.FAILED
    assert done.last_error is not None
    assert (done.last_error.type, done.last_error.retryable) == ("TIMED_OUT", True)
    assert done.started_at is not None and done.finished_at is not None
    assert (done.finished_at - done.started_at).total_seconds() < 10


def test_schedule_to_start_timeout_dead_letters_an_unserved_task(
    client: Client, queue: str
) -> None:
    task = client.submit(NOBODY, queue=queue, schedule_to_start_timeout_s=0.2)
    done = client.wait(task.id, timeout_s=10)
    assert done.state is TaskState.FAILED
    assert done.last_error is not None
    assert done.last_error.type == "SCHEDULE_TO_START_TIMEOUT"


def test_finished_tasks_are_deleted_after_their_result_ttl(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator(sweep_interval_s=0.2)
    with Client(coordinator.address, retry=FAST_RETRY) as client:
        short = client.cancel(client.submit(NOBODY, result_ttl_s=1).id)
        kept = client.cancel(client.submit(NOBODY).id)
        assert short.expires_at is not None and kept.expires_at is not None
        assert kept.expires_at - short.expires_at > timedelta(days=6)  # the 7-day default

        def gone() -> bool:
            try:
                client.get(short.id)
            except TaskNotFound:
                return True
            return False

        wait_until(gone, 10, what="the sweep to delete the short-lived task")
        assert client.get(kept.id).state is TaskState.CANCELLED


# --- queues: pause, priorities, concurrency limit ------------------------------------------


def test_a_paused_queue_holds_its_tasks_then_runs_them_by_priority(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    served(1)  # one slot: the tasks run one at a time, in dispatch order
    paused = client.pause_queue(queue)
    assert (paused.name, paused.paused, paused.max_running) == (queue, True, 0)
    # Submitted low, mid, high: had the idle node been given one while the queue was
    # paused, the low one would have started first.
    submitted = [client.submit("echo", p, queue=queue, priority=p) for p in (-5, 0, 10)]
    [listed] = [q for q in client.queues() if q.name == queue]
    assert (listed.paused, listed.queued) == (True, 3)
    assert not client.resume_queue(queue).paused
    done = [client.wait(t.id, timeout_s=10) for t in submitted]
    assert all(t.state is TaskState.SUCCEEDED for t in done)
    assert [t.priority for t in by_start(done)] == [10, 0, -5]


def test_equal_priorities_run_in_submission_order(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    served(1)
    client.pause_queue(queue)
    ids = [client.submit("echo", i, queue=queue).id for i in range(4)]
    client.resume_queue(queue)
    done = [client.wait(task_id, timeout_s=10) for task_id in ids]
    assert [t.id for t in by_start(done)] == ids


def test_a_concurrency_limit_keeps_tasks_from_overlapping(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    served(4)
    limited = client.set_queue_limit(queue, 1)
    assert (limited.max_running, limited.paused) == (1, False)
    ids = [client.submit("sleep", {"seconds": 0.2}, queue=queue).id for _ in range(3)]
    done = by_start([client.wait(task_id, timeout_s=15) for task_id in ids])
    assert all(t.state is TaskState.SUCCEEDED for t in done)
    # With four free slots and no limit they would all run at once.
    for earlier, later in itertools.pairwise(done):
        assert earlier.finished_at is not None and later.started_at is not None
        assert later.started_at >= earlier.finished_at
    assert client.set_queue_limit(queue, 0).max_running == 0
    [listed] = [q for q in client.queues() if q.name == queue]
    assert (listed.max_running, listed.succeeded) == (0, 3)


def test_queue_updates_are_validated(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.set_queue_limit("bad queue", 100_001)
    assert [field for field, _ in info.value.field_violations] == ["name", "max_running"]


# --- bulk cancel, retry, purge -------------------------------------------------------------


def test_cancel_tasks_cancels_queued_and_stops_running_ones(
    client: Client, queue: str, served: Callable[[int], None]
) -> None:
    served(2)
    running = [client.submit("sleep", {"seconds": 30}, queue=queue) for _ in range(2)]
    for task in running:
        wait_until(state_is(client, task.id, TaskState.RUNNING), 10, what="the task to run")
    waiting = client.submit("sleep", {"seconds": 30}, queue=queue)  # no free slot
    other = client.submit(NOBODY, queue=queue)
    counts = client.cancel_tasks(queue=queue, type="sleep")
    assert counts == CancelCounts(cancelled=1, cancel_requested=2)
    assert client.get(waiting.id).state is TaskState.CANCELLED
    for task in running:
        done = client.wait(task.id, timeout_s=10)
        assert done.state is TaskState.CANCELLED
    assert client.get(other.id).state is TaskState.QUEUED
    assert client.cancel_tasks(queue=queue, state=TaskState.QUEUED) == (1, 0)
    assert client.cancel_tasks(queue=queue) == (0, 0)


def test_cancel_tasks_needs_a_queue_or_type_and_an_unfinished_state(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.cancel_tasks()
    assert [field for field, _ in info.value.field_violations] == ["queue"]
    with pytest.raises(InvalidArgument) as info:
        client.cancel_tasks(queue="default", state="failed")
    assert [field for field, _ in info.value.field_violations] == ["state"]


def test_retry_sends_a_dead_letter_back_with_a_fresh_budget(client: Client) -> None:
    failed = client.wait(client.submit("fail", {"message": "x"}, max_attempts=1).id, 10)
    assert (failed.state, failed.attempt, failed.failures) == (TaskState.FAILED, 1, 1)
    assert client.retry([failed.id]) == RetryResult(retried=1)

    def failed_again() -> Task | None:
        task = client.get(failed.id)
        return task if task.state is TaskState.FAILED and task.attempt == 2 else None

    # It runs again (the demo handler fails every time) with a fresh budget of one attempt.
    again = wait_until(failed_again, 10, what="the second attempt to fail")
    assert again is not None
    assert (again.failures, again.max_attempts) == (1, 1)
    # Not failed or cancelled, or unknown: skipped, not counted, and listed.
    done = client.wait(client.submit("echo", 1).id, 10)
    unknown = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"
    assert client.retry([done.id, unknown]) == RetryResult(0, (done.id, unknown), False)


def test_retry_by_filter_takes_failed_tasks_or_cancelled_ones(client: Client, queue: str) -> None:
    dead = client.submit(NOBODY, queue=queue, schedule_to_start_timeout_s=0.1)
    wait_until(state_is(client, dead.id, TaskState.FAILED), 10, what="the dead letter")
    dropped = [client.submit(NOBODY, queue=queue) for _ in range(2)]
    assert client.cancel_tasks(queue=queue, state="queued") == (2, 0)
    assert client.retry(queue=queue) == RetryResult(retried=1)  # FAILED by default
    assert client.get(dead.id).state is TaskState.QUEUED
    assert client.retry(type=NOBODY, queue=queue, state=TaskState.CANCELLED).retried == 2
    assert {client.get(t.id).state for t in dropped} == {TaskState.QUEUED}
    assert client.retry(queue=queue, state="cancelled") == RetryResult(retried=0)


def test_retry_by_filter_says_when_more_tasks_remain(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    coordinator = make_coordinator()  # of its own: 10,001 tasks
    with Client(coordinator.address, retry=FAST_RETRY) as client:
        client.submit_many([TaskSpec(NOBODY, queue="many") for _ in range(10_001)])
        assert client.cancel_tasks(queue="many") == (10_001, 0)
        first = client.retry(queue="many", state=TaskState.CANCELLED)
        assert first == RetryResult(retried=10_000, truncated=True)  # at most 10,000 a call
        assert client.retry(queue="many", state="cancelled") == RetryResult(retried=1)


def test_retry_takes_ids_or_a_filter(client: Client, queue: str) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.retry(["0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"], queue=queue)
    with pytest.raises(TypeError):
        client.retry("0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10")
    with pytest.raises(InvalidArgument):
        client.retry()
    with pytest.raises(InvalidArgument) as info:
        client.retry(queue=queue, state="succeeded")
    assert [field for field, _ in info.value.field_violations] == ["state"]
    with pytest.raises(InvalidArgument) as info:
        client.retry(["abc"])
    assert [field for field, _ in info.value.field_violations] == ["task_ids[0]"]


def test_purge_deletes_finished_tasks_of_one_state(client: Client, queue: str) -> None:
    cancelled = [client.cancel(client.submit(NOBODY, queue=queue).id) for _ in range(2)]
    kept = client.submit(NOBODY, queue=queue)
    assert client.purge("succeeded", queue=queue) == 0
    assert client.purge(TaskState.CANCELLED, queue=queue, type="other") == 0
    assert client.purge(TaskState.CANCELLED, queue=queue, type=NOBODY) == 2
    assert [t.id for t in client.list_tasks(queue=queue)] == [kept.id]
    with pytest.raises(TaskNotFound):
        client.get(cancelled[0].id)
    with pytest.raises(InvalidArgument) as info:
        client.purge("queued", queue=queue)
    assert [field for field, _ in info.value.field_violations] == ["state"]
