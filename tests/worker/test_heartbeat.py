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


def test_the_timeout_runs_from_the_last_ack_so_detection_is_bounded_by_it() -> None:
    # Acked at 10.1; the next heartbeat leaves at 10.5 and the link dies at 10.2:
    # the stream is dead at 12.1 (last ack + timeout), not 12.5 (send + timeout).
    tracker = HeartbeatTracker(timeout_s=2.0, started_at=10.0)
    tracker.acked(tracker.sent(10.0), now=10.1)
    tracker.sent(10.5)
    assert tracker.overdue_at() == 10.1 + 2.0
    assert not tracker.overdue(12.0)
    assert tracker.overdue(12.1)


def test_slow_acks_still_get_the_full_timeout_from_their_send() -> None:
    # The ack of #1 arrives after #2 left: #2 gets at least its own full timeout
    # (from the ack, the last thing heard).
    tracker = HeartbeatTracker(timeout_s=2.0, started_at=0.0)
    first = tracker.sent(0.0)
    tracker.sent(0.5)
    tracker.acked(first, now=0.7)
    assert tracker.overdue_at() == 0.7 + 2.0


def test_any_message_keeps_a_stream_alive_while_acks_wait_behind_a_backlog() -> None:
    # A slow link: assignments queued before the acks keep arriving for longer than
    # the timeout. The stream delivers, so it is alive; silence still ends it.
    tracker = HeartbeatTracker(timeout_s=2.0, started_at=0.0)
    tracker.sent(0.5)
    for t in (1.0, 2.0, 3.0, 4.0):
        tracker.sent(t)
        tracker.heard(t + 0.4)  # an assignment, no ack
        assert not tracker.overdue(t + 0.5)
    assert tracker.overdue_at() == 4.4 + 2.0
    assert tracker.overdue(6.4)


def test_no_ack_yet_counts_from_the_stream_start() -> None:
    tracker = HeartbeatTracker(timeout_s=2.0, started_at=5.0)
    tracker.sent(5.5)
    assert tracker.overdue_at() == 5.0 + 2.0


def test_the_round_trip_is_that_of_the_heartbeat_an_ack_names() -> None:
    tracker = HeartbeatTracker(timeout_s=3.0)
    assert tracker.round_trip_s is None
    tracker.sent(10.0)
    tracker.sent(11.0)
    tracker.acked(2, now=11.25)  # answers 1 too, but names 2
    assert tracker.round_trip_s == 0.25
    tracker.acked(2, now=12.0)  # a repeated ack finds nothing left to time
    assert tracker.round_trip_s == 0.25
