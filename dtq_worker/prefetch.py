"""``--prefetch auto``: hold extra tasks only while they are short against the round trip.

A node asks for work by finishing it: a freed slot is credit, and the next task
arrives a round trip later (the outcome reaches the coordinator, a lease is
committed, the assignment comes back). With tasks much shorter than that round
trip, threads sit idle for most of it unless tasks wait on the node already;
with long tasks, a buffered task waits behind a running one while another node
may be idle. A fixed prefetch gets one of the two wrong (Celery's and
Dramatiq's defaults buffer long tasks; a prefetch of 0 starves short ones, at a
third of the throughput on no-op tasks in DTQ's P1 benchmark).

So the node buffers what its threads would finish during one round trip:
``slots x round trip / mean run time``, rounded, at most ``CAP_PER_SLOT`` per
slot. It starts at 0 and is recomputed at every heartbeat (and, as tasks
finish, every ``RESIZE_EVERY_S`` in between) from the tasks that finished
since the last time and the heartbeat's own round trip (at least
``MIN_ROUND_TRIP_S``, for the lease commit a heartbeat does not wait for). Tasks
still running count at their run time so far once they have outlasted the
others, so long tasks lower the prefetch before any of them finishes and one
long task among many short ones lowers it in proportion; a task that has just
started counts for nothing yet.

A guess can be wrong for a while: tasks that were short turn long, and the
buffer holds tasks that wait behind them while another node may be idle. So
when the queued tasks would wait longer than ``HAND_BACK_AFTER_S`` to start,
the node hands the ones beyond its new prefetch back to the coordinator
(:meth:`AutoPrefetch.surplus`), in the heartbeat that lowers it: a wrong guess
costs at most about a heartbeat interval, not the run time of everything
buffered. That is what lets the cap be high (``CAP_PER_SLOT``). Memory is
bounded apart: buffered tasks may hold about ``buffer_bytes`` of payload
(``--prefetch-buffer-bytes``, 64 MiB by default) at the mean size of the
payloads received since the last re-size, so a node fed large payloads buffers
fewer of them.

The round trip must not feed on itself. On a link slower than the node's
threads (chaos N5: 200 ms each way at 256 kB/s, 32 KiB payloads), the
heartbeat's ack waits behind the assignments the prefetch itself asked for, so
a larger prefetch measures a longer round trip, which asks for a larger
prefetch: it grew to 339 tasks, 11 MB or 43 s of link, until gRPC's keepalive
ping timed out behind them and broke the stream. So the node remembers the
fastest of its last ``BASE_WINDOW`` round trips (the link without the node's
own queue, as TCP Vegas and BBR do), and a round trip beyond that by more
than ``QUEUEING_BUDGET_S`` counts as queueing: the estimate is then folded
back below the ceiling (``ceiling**2 / round trip``), so the more the link
queues, the less the node asks for. On a fast link the round trip is
milliseconds and the ceiling never applies. Pure: the node feeds it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dtq_worker.config import DEFAULT_PREFETCH_BUFFER_BYTES, MAX_SLOTS

CAP_PER_SLOT = 256
"""Most tasks buffered per slot (1,024 for the default 4 threads). On DTQ's P1 benchmark
(no-op tasks, where the rule asks for more than any cap) a cap of 4 per slot gave
~4,100 tasks/s, 64 ~6,500 and 256 ~7,500; 1,024 hardly more."""
MIN_ROUND_TRIP_S = 0.002
"""The round trip assumed at least: a heartbeat ack skips the commit a lease needs."""
SMOOTHING = 0.5
"""Weight of the newest heartbeat's round trip in the running estimate."""
BASE_WINDOW = 64
"""Round trips the fastest one is taken from (about two minutes of 2 s heartbeats): long enough
that a queue which only drains now and then still shows the link without it, short
enough that a path which got slower for good is learnt."""
QUEUEING_BUDGET_S = 0.25
"""How far the round trip may exceed the fastest recent one before the excess counts as
the node's own queue. It never bites at P1: the prefetch still climbs to its cap
(0 -> 147 -> 805 -> 1,024 in the first 0.5 s)."""
HAND_BACK_AFTER_S = 0.1
"""Queued tasks that would wait longer than this to start are handed back beyond the
prefetch; below it a lower estimate only stops new work (no churn on small drifts)."""
RESIZE_EVERY_S = 0.1
"""Between heartbeats, how often the node re-sizes its prefetch as tasks finish; a
big change is sent at once (:func:`worth_telling`) rather than at the next heartbeat."""


def worth_telling(before: int, after: int) -> bool:
    """A change big enough to send its own heartbeat for: from or to 0, or by half.

    A node that has just started on short tasks buffers them within a fraction of
    a second instead of a heartbeat interval, and one that turns to long tasks
    stops taking more as soon as it sees them; small drifts wait for the next
    heartbeat, so a fleet's steady state costs no extra messages.
    """
    if before == after:
        return False
    return before == 0 or after == 0 or abs(after - before) * 2 >= before


@dataclass(frozen=True, slots=True)
class WorkDone:
    """What a node's worker threads have done so far (running totals)."""

    finished: int
    """Jobs finished."""
    busy_s: float
    """Seconds spent running the finished jobs."""
    running: tuple[float, ...] = ()
    """How long each job running now has run so far."""


class AutoPrefetch:
    """The prefetch of an ``auto`` node (see the module docstring)."""

    def __init__(self, slots: int, buffer_bytes: int = DEFAULT_PREFETCH_BUFFER_BYTES) -> None:
        self._slots = slots
        self._cap = min(MAX_SLOTS, CAP_PER_SLOT * slots)
        self._buffer_bytes = buffer_bytes
        self._round_trip_s: float | None = None
        self._recent_round_trips: deque[float] = deque(maxlen=BASE_WINDOW)
        self._last = WorkDone(0, 0.0)
        self._run_s: float | None = None
        """The run time a task is expected to take, from the last update that learnt one."""
        self._byte_cap = self._cap
        """The most tasks ``buffer_bytes`` holds at the recent mean payload size."""
        self._received = 0
        self._received_bytes = 0
        self.value = 0
        """The prefetch to report now."""

    def received(self, count: int, payload_bytes: int) -> None:
        """``count`` assignments arrived holding ``payload_bytes`` of payload."""
        self._received += count
        self._received_bytes += payload_bytes

    def update(self, work: WorkDone, round_trip_s: float | None) -> int:
        """Re-size from the work done since the last update and the latest round trip.

        A running job has run at least as long as it has so far: one that has
        already outlasted the finished jobs' mean counts at its time so far, and
        with nothing finished the longest running job can only lower the value.
        One that has just started tells nothing yet.
        """
        if round_trip_s is not None:
            self._recent_round_trips.append(round_trip_s)
            previous = self._round_trip_s
            self._round_trip_s = (
                round_trip_s
                if previous is None
                else SMOOTHING * round_trip_s + (1 - SMOOTHING) * previous
            )
        if self._received:
            mean_bytes = self._received_bytes / self._received
            self._byte_cap = min(self._cap, int(self._buffer_bytes / max(mean_bytes, 1.0)))
            self._received = self._received_bytes = 0
        finished = work.finished - self._last.finished
        busy_s = work.busy_s - self._last.busy_s
        self._last = work
        if finished > 0:
            mean_s = busy_s / finished
            longer = [elapsed for elapsed in work.running if elapsed > mean_s]
            self._run_s = (busy_s + sum(longer)) / (finished + len(longer))
            self.value = self._size(self._run_s)
        elif work.running:
            longest = max(work.running)
            if self._run_s is None or longest > self._run_s:
                self._run_s = longest
            self.value = min(self.value, self._size(longest))
        return self.value  # unchanged while idle: nothing learnt

    def surplus(self, queued: int, idle: int) -> int:
        """How many of ``queued`` tasks (not started yet) to hand back: those beyond the
        prefetch, once they would wait more than ``HAND_BACK_AFTER_S`` to start.

        The ``idle`` threads take a queued task each at once: a task that has just
        arrived for a thread that has just finished does not wait.
        """
        waiting = queued - idle
        if waiting <= self.value or self._run_s is None:
            return 0
        if waiting * self._run_s / self._slots <= HAND_BACK_AFTER_S:
            return 0
        return waiting - self.value

    def _size(self, run_s: float) -> int:
        """The prefetch for tasks of ``run_s`` each."""
        if run_s <= 0:
            return self._byte_cap
        round_trip = max(self._round_trip_s or 0.0, MIN_ROUND_TRIP_S)
        if self._recent_round_trips:
            ceiling = max(min(self._recent_round_trips), MIN_ROUND_TRIP_S) + QUEUEING_BUDGET_S
            if round_trip > ceiling:
                round_trip = ceiling * ceiling / round_trip  # queueing: ask for less
        return min(self._byte_cap, int(self._slots * round_trip / run_s + 0.5))
