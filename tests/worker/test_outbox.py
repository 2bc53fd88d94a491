"""The outbox and the ledger around it: acks remove, rejections drop, reconnects resend."""

from __future__ import annotations

import pytest
import structlog
import structlog.testing

from dtq_worker.context import TaskContext
from dtq_worker.ledger import Ledger
from dtq_worker.models import (
    Assignment,
    Failed,
    Failure,
    Lease,
    Payload,
    Progress,
    Released,
    Started,
    Succeeded,
    Update,
    UpdateAck,
)
from dtq_worker.outbox import Outbox

RESULT = Succeeded(Payload(b"1", "application/json"))


def _assignment(task_id: str, attempt: int = 1) -> Assignment:
    return Assignment(Lease(task_id, attempt), "echo", "default", Payload(b"{}"), 3)


class ProgressListener:
    def __init__(self) -> None:
        self.calls: list[TaskContext] = []

    def __call__(self, context: TaskContext) -> None:
        self.calls.append(context)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(on_progress=ProgressListener(), progress_interval_s=0.5)


def _run(ledger: Ledger, task_id: str, outcome=RESULT):
    job = ledger.accept(_assignment(task_id))
    assert job is not None
    ledger.started(job.lease)
    ledger.finished(job.lease, outcome)
    return job


# --- the outbox on its own ------------------------------------------------------------


def test_outbox_ack_removes_and_entries_keep_order() -> None:
    outbox = Outbox()
    a, b = Update(Lease("a", 1), RESULT), Update(Lease("b", 1), Released("SHUTDOWN"))
    outbox.add(a)
    outbox.add(b)
    assert outbox.entries() == [a, b]
    assert outbox.ack(Lease("a", 1)) == a
    assert outbox.ack(Lease("a", 1)) is None
    assert outbox.entries() == [b]
    assert Lease("b", 1) in outbox


def test_outbox_only_keeps_terminal_updates() -> None:
    with pytest.raises(ValueError):
        Outbox().add(Update(Lease("a", 1), Started()))


# --- the ledger -----------------------------------------------------------------------


def test_updates_are_pending_in_order_and_outcomes_wait_in_the_outbox(ledger) -> None:
    job = _run(ledger, "t1")
    # The start is folded into the outcome that goes in the same frame.
    assert ledger.take_pending() == [Update(job.lease, RESULT)]
    assert ledger.take_pending() == []
    assert ledger.outbox.entries() == [Update(job.lease, RESULT)]
    # Held (and in heartbeats) until the ack.
    assert ledger.held_leases() == (job.lease,)


def test_ack_removes_the_outcome_and_frees_the_lease(ledger) -> None:
    job = _run(ledger, "t1")
    ledger.ack(UpdateAck(job.lease, accepted=True))
    assert len(ledger.outbox) == 0
    assert ledger.held_leases() == ()


def test_rejected_outcome_is_dropped_and_never_reported_again(ledger) -> None:
    job = _run(ledger, "t1")
    ledger.take_pending()
    ledger.ack(UpdateAck(job.lease, accepted=False, reason="STALE_ATTEMPT"))
    assert job.context.cancelled
    assert ledger.held_leases() == ()
    ledger.resend()
    ledger.finished(job.lease, RESULT)
    assert ledger.take_pending() == []


def test_resend_after_reconnect_queues_every_unacknowledged_outcome(ledger) -> None:
    failed = Failed(Failure("ValueError", "x"))
    first = _run(ledger, "t1")
    second = _run(ledger, "t2", failed)
    ledger.ack(UpdateAck(first.lease, accepted=True))
    running = ledger.accept(_assignment("t3"))
    assert running is not None
    ledger.take_pending()  # written to a stream that then broke
    ledger.started(running.lease)  # happened while disconnected: not written yet
    ledger.resend()
    assert ledger.take_pending() == [
        Update(running.lease, Started()),
        Update(second.lease, failed),
    ]


def test_resend_drops_unsent_progress_of_a_task_with_an_outcome(ledger) -> None:
    job = _run(ledger, "t1")  # started and result both still pending
    ledger.resend()
    assert ledger.take_pending() == [Update(job.lease, RESULT)]


def test_stale_leases_are_dropped_with_their_updates(ledger) -> None:
    job = _run(ledger, "t1")
    other = ledger.accept(_assignment("t2"))
    assert other is not None
    assert ledger.drop([job.lease, Lease("unknown", 1)], "stale") == 1
    assert job.context.cancelled
    assert ledger.take_pending() == []
    assert len(ledger.outbox) == 0
    assert ledger.held_leases() == (other.lease,)


def test_drop_all_forgets_everything(ledger) -> None:
    job = _run(ledger, "t1")
    assert ledger.drop_all("session expired") == 1
    assert job.context.cancelled
    assert (ledger.held_leases(), ledger.take_pending(), len(ledger.outbox)) == ((), [], 0)


def test_cancel_tells_the_handler_but_keeps_the_task(ledger) -> None:
    job = ledger.accept(_assignment("t1"))
    assert job is not None
    ledger.cancel([job.lease, Lease("unknown", 1)])
    assert job.context.cancelled
    assert ledger.held_leases() == (job.lease,)


def test_the_same_assignment_twice_is_held_once(ledger) -> None:
    assert ledger.accept(_assignment("t1")) is not None
    assert ledger.accept(_assignment("t1")) is None
    assert len(ledger) == 1


def test_release_unfinished_releases_queued_and_running_tasks_once(ledger) -> None:
    done = _run(ledger, "t1")
    queued = ledger.accept(_assignment("t2"))
    running = ledger.accept(_assignment("t3"))
    assert queued is not None and running is not None
    ledger.started(running.lease)
    ledger.take_pending()
    assert ledger.unfinished == 2
    assert ledger.release_unfinished("SHUTDOWN") == 2
    assert queued.context.cancelled and running.context.cancelled
    assert ledger.take_pending() == [
        Update(queued.lease, Released("SHUTDOWN")),
        Update(running.lease, Released("SHUTDOWN")),
    ]
    # The handler finishing later changes nothing: the lease was already released.
    ledger.finished(running.lease, RESULT)
    assert ledger.take_pending() == []
    assert ledger.unfinished == 0
    assert len(ledger.outbox) == 3
    assert done.lease in ledger.outbox


def test_assignments_after_stop_are_held_but_never_run_or_reported(ledger) -> None:
    ledger.accepting = False
    assert ledger.accept(_assignment("t1")) is None
    assert ledger.take_pending() == []
    assert ledger.held_leases() == (Lease("t1", 1),)  # the slot stays full until Leave
    assert ledger.unfinished == 0
    assert ledger.release_unfinished("SHUTDOWN") == 0


def test_progress_is_throttled_and_the_latest_value_wins(ledger) -> None:
    job = ledger.accept(_assignment("t1"))
    assert job is not None
    ledger.started(job.lease)
    ledger.take_pending()
    job.context.report_progress(10)
    assert ledger.progress(job.lease, now=100.0) is None  # first one goes at once
    job.context.report_progress(20)
    job.context.report_progress(30, "later")
    due = ledger.progress(job.lease, now=100.1)
    assert due == pytest.approx(100.5)
    assert ledger.progress(job.lease, now=100.2) is None  # a timer is already armed
    ledger.flush_progress(job.lease, now=100.5)
    assert ledger.take_pending() == [
        Update(job.lease, Progress(10.0)),
        Update(job.lease, Progress(30.0, "later")),
    ]


def test_a_start_already_taken_stays_sent_and_a_pending_one_goes_alone(ledger) -> None:
    first = ledger.accept(_assignment("t1"))
    ledger.started(first.lease)
    assert ledger.take_pending() == [Update(first.lease, Started())]
    second = ledger.accept(_assignment("t2"))
    ledger.started(second.lease)
    ledger.finished(first.lease, RESULT)
    # t1's start went out before; t2 has no outcome yet, so its start is kept.
    assert ledger.take_pending() == [Update(second.lease, Started()), Update(first.lease, RESULT)]


def test_dropping_a_reported_task_is_quiet_and_an_unreported_one_warns(ledger) -> None:
    reported = _run(ledger, "reported")
    running = ledger.accept(_assignment("running"))
    assert running is not None
    ledger.started(running.lease)
    with structlog.testing.capture_logs() as logs:
        assert ledger.drop([reported.lease, running.lease], "stale lease") == 2
    levels = {entry["task_id"]: entry["log_level"] for entry in logs}
    assert levels == {"reported": "debug", "running": "warning"}
    assert ledger.outbox.entries() == [] and len(ledger) == 0
