"""Heartbeat sequence numbers and ack deadlines."""

from __future__ import annotations

from dtq_worker.heartbeat import HeartbeatTracker


def test_sequences_increase_from_one() -> None:
    tracker = HeartbeatTracker(timeout_s=3.0)
    assert [tracker.sent(float(t)) for t in range(3)] == [1, 2, 3]


def test_an_ack_answers_its_heartbeat_and_every_earlier_one() -> None:
    tracker = HeartbeatTracker(timeout_s=3.0)
    for t in range(3):
        tracker.sent(float(t))
    tracker.acked(2)
    assert tracker.overdue_at() == 2.0 + 3.0
    tracker.acked(3)
    assert tracker.overdue_at() is None
    assert not tracker.overdue(1000.0)


def test_overdue_when_the_oldest_unanswered_heartbeat_times_out() -> None:
    tracker = HeartbeatTracker(timeout_s=3.0)
    tracker.sent(10.0)
    tracker.sent(11.0)
    assert not tracker.overdue(12.9)
    assert tracker.overdue(13.0)
