"""``--prefetch auto``: slots x round trip / mean run time, from what the threads did."""

from __future__ import annotations

from dtq_worker.prefetch import (
    BASE_WINDOW,
    CAP_PER_SLOT,
    HAND_BACK_AFTER_S,
    MIN_ROUND_TRIP_S,
    QUEUEING_BUDGET_S,
    AutoPrefetch,
    WorkDone,
    worth_telling,
)

SLOTS = 4


def test_it_starts_at_zero_and_stays_there_while_idle() -> None:
    auto = AutoPrefetch(SLOTS)
    assert auto.value == 0
    assert auto.update(WorkDone(0, 0.0), round_trip_s=0.001) == 0
    assert auto.update(WorkDone(0, 0.0), round_trip_s=None) == 0


def test_short_tasks_fill_the_buffer_up_to_its_cap() -> None:
    auto = AutoPrefetch(SLOTS)
    # 2,000 tasks of 50 us against a 2 ms round trip: 4 x 2 / 0.05 = 160.
    assert auto.update(WorkDone(2000, 0.1), round_trip_s=0.002) == 160
    # 5 us tasks: 1,600, capped.
    assert auto.update(WorkDone(4000, 0.11), round_trip_s=0.002) == CAP_PER_SLOT * SLOTS


def test_large_payloads_are_buffered_fewer_at_a_time() -> None:
    auto = AutoPrefetch(SLOTS, buffer_bytes=1_000_000)
    auto.received(100, 100 * 100_000)  # 100 kB payloads: 10 fit
    assert auto.update(WorkDone(2000, 0.1), round_trip_s=0.002) == 10  # not 160
    auto.received(50, 50 * 1_000)  # then 1 kB ones: 1,000 would fit, the rule's 160 holds
    assert auto.update(WorkDone(4000, 0.2), round_trip_s=0.002) == 160
    # Nothing received since: the last mean stands.
    assert auto.update(WorkDone(6000, 0.3), round_trip_s=0.002) == 160


def test_tasks_as_long_as_the_round_trip_get_one_per_slot() -> None:
    auto = AutoPrefetch(SLOTS)
    assert auto.update(WorkDone(100, 100 * 0.004), round_trip_s=0.004) == SLOTS


def test_long_tasks_are_not_buffered() -> None:
    auto = AutoPrefetch(SLOTS)
    assert auto.update(WorkDone(8, 8 * 0.5), round_trip_s=0.002) == 0


def test_tasks_that_just_started_tell_nothing() -> None:
    # An idle node whose first tasks have just begun must not read them as short.
    auto = AutoPrefetch(SLOTS)
    assert auto.update(WorkDone(0, 0.0, running=(0.0001,) * 4), round_trip_s=0.002) == 0
    short = AutoPrefetch(SLOTS)
    short.update(WorkDone(1000, 1000 * 0.001), round_trip_s=0.002)  # 1 ms tasks: 8
    # Tasks that started after the mean run time was measured, still under it: no change.
    assert short.update(WorkDone(2000, 2.0, running=(0.0005,)), round_trip_s=0.002) == 8


def test_long_running_tasks_lower_it_before_they_finish() -> None:
    auto = AutoPrefetch(SLOTS)
    assert auto.update(WorkDone(5000, 0.25), round_trip_s=0.002) == 160
    # The next tasks are long: none finished yet, four have run 0.9 s each.
    assert auto.update(WorkDone(5000, 0.25, running=(0.9,) * 4), round_trip_s=0.002) == 0


def test_with_nothing_finished_running_tasks_only_lower_it() -> None:
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(1000, 1000 * 0.001), round_trip_s=0.002)  # 8
    # One task at 4 ms so far: at most 4 x 2 / 4 = 2, never more than before.
    assert auto.update(WorkDone(1000, 1.0, running=(0.004,)), round_trip_s=0.002) == 2
    assert auto.update(WorkDone(1000, 1.0, running=(0.0001,)), round_trip_s=0.002) == 2


def test_one_long_task_among_short_ones_lowers_it_in_proportion() -> None:
    auto = AutoPrefetch(SLOTS)
    # 3,000 short tasks (0.15 s) and one that has run 5 s: 5.15 s / 3,001 = 1.7 ms a task.
    work = WorkDone(3000, 0.15, running=(5.0, 0.00001))  # the second just started
    assert auto.update(work, round_trip_s=0.002) == round(SLOTS * 0.002 / (5.15 / 3001))


def test_only_the_work_since_the_last_update_counts() -> None:
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(1000, 0.05), round_trip_s=0.002)  # short: capped
    # Then 10 tasks of 100 ms: totals grow by 10 and 1 s.
    assert auto.update(WorkDone(1010, 1.05), round_trip_s=0.002) == 0


def test_a_slow_round_trip_buffers_more() -> None:
    near, far = AutoPrefetch(SLOTS), AutoPrefetch(SLOTS)
    work = WorkDone(100, 100 * 0.01)  # 10 ms tasks
    assert near.update(work, round_trip_s=0.001) == round(SLOTS * MIN_ROUND_TRIP_S / 0.01)
    assert far.update(work, round_trip_s=0.02) == SLOTS * 2  # 4 x 20 / 10


def test_the_round_trip_is_smoothed() -> None:
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(100, 1.0), round_trip_s=0.02)  # 10 ms tasks, 20 ms: 8
    # One fast ack halves the estimate's distance to it, not all of it: 11 ms -> 4.4.
    assert auto.update(WorkDone(200, 2.0), round_trip_s=0.002) == 4


def test_a_far_link_that_does_not_queue_buffers_by_its_round_trip() -> None:
    auto = AutoPrefetch(SLOTS)
    work = WorkDone(0, 0.0)
    for _ in range(5):  # 50 ms tasks, 400 ms away: 4 x 0.4 / 0.05 = 32, every time
        work = WorkDone(work.finished + 40, work.busy_s + 40 * 0.05)
        assert auto.update(work, round_trip_s=0.4) == 32


def test_a_round_trip_that_grows_with_the_nodes_own_backlog_does_not_run_away() -> None:
    # Chaos N5: 200 ms each way, and each 32 KiB assignment takes 0.128 s of a 256 kB/s
    # link, so a heartbeat's ack waits behind every task asked for and not yet arrived.
    base_s, per_task_s = 0.4, 0.128
    auto, work, round_trip = AutoPrefetch(SLOTS), WorkDone(0, 0.0), base_s
    seen = []
    for _ in range(40):
        work = WorkDone(work.finished + 8, work.busy_s + 8 * 0.05)
        value = auto.update(work, round_trip_s=round_trip)
        seen.append(value)
        round_trip = base_s + (value + SLOTS) * per_task_s
    # Counting the queue as round trip, it grew without bound (339 in the chaos run);
    # folded back below the ceiling it settles where the link queues ~2 s, not 40.
    assert seen[0] == 32  # the link's own round trip
    assert max(seen[5:]) <= 20, seen
    assert (max(seen[-10:]) + SLOTS) * per_task_s < 3.0, seen


def test_the_ceiling_follows_a_path_that_got_slower_for_good() -> None:
    auto, done = AutoPrefetch(SLOTS), 0

    def update(round_trip_s: float) -> int:
        nonlocal done
        done += 100
        return auto.update(WorkDone(done, done * 0.05), round_trip_s=round_trip_s)

    update(0.002)
    slower = 0.002 + 2 * QUEUEING_BUDGET_S  # then 0.5 s away, for good
    # It looks like queueing at first (the smoothed estimate passes the ceiling and is
    # folded back below it), until the fast sample leaves the window.
    assert max(update(slower) for _ in range(BASE_WINDOW - 1)) <= 20  # 4 x 0.252 / 0.05
    assert update(slower) == round(SLOTS * slower / 0.05)


def test_only_big_changes_are_worth_a_heartbeat_of_their_own() -> None:
    assert worth_telling(0, 16) and worth_telling(16, 0)  # starting, and long tasks
    assert worth_telling(16, 8) and worth_telling(4, 9)  # by half or more
    assert not worth_telling(16, 15) and not worth_telling(16, 10)  # drift
    assert not worth_telling(7, 7)


def test_nothing_is_handed_back_before_anything_is_known_or_within_the_prefetch() -> None:
    auto = AutoPrefetch(SLOTS)
    assert auto.surplus(1000, idle=0) == 0  # nothing learnt yet: no grounds to give work away
    auto.update(WorkDone(2000, 0.1), round_trip_s=0.002)  # 160
    assert auto.surplus(160, idle=0) == 0


def test_short_queued_tasks_are_kept_even_beyond_a_lower_prefetch() -> None:
    # A drift down (jobs a little slower) stops new work but hands nothing back:
    # 300 queued 60 us tasks wait 4.5 ms at most, well under the hand-back bound.
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(2000, 2000 * 60e-6), round_trip_s=0.002)  # 133
    assert 300 * 60e-6 / SLOTS < HAND_BACK_AFTER_S
    assert auto.surplus(300, idle=0) == 0


def test_queued_tasks_that_turned_long_are_handed_back() -> None:
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(5000, 0.25), round_trip_s=0.002)  # short: 160 queued
    # The four running tasks have taken 0.9 s so far: the 156 behind them would
    # wait ~35 s; all of them go back (the prefetch is now 0).
    assert auto.update(WorkDone(5000, 0.25, running=(0.9,) * 4), round_trip_s=0.002) == 0
    assert auto.surplus(156, idle=0) == 156


def test_beyond_a_small_prefetch_only_the_surplus_goes_back() -> None:
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(100, 100 * 0.004), round_trip_s=0.004)  # 4 ms tasks: 4
    # 150 queued 4 ms tasks would wait 150 ms; 4 of them are still wanted.
    assert auto.surplus(150, idle=0) == 146


def test_a_task_an_idle_thread_takes_at_once_is_not_handed_back() -> None:
    # Long tasks, prefetch 0: a thread has just finished and its next task has just
    # arrived (the slot was lent while the outcome committed). It does not wait.
    auto = AutoPrefetch(SLOTS)
    auto.update(WorkDone(8, 8 * 0.5), round_trip_s=0.002)  # 0.5 s tasks: 0
    assert auto.surplus(1, idle=1) == 0
    assert auto.surplus(1, idle=0) == 1  # all four threads busy: it would wait
    assert auto.surplus(3, idle=1) == 2
