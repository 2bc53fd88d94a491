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
slot. It starts at 0 and is recomputed at every heartbeat from the tasks that
finished since the last one and the heartbeat's own round trip (at least
``MIN_ROUND_TRIP_S``, for the lease commit a heartbeat does not wait for). Tasks
still running count with their run time so far, so long tasks lower the
prefetch before any of them finishes, and one long task among many short ones
lowers it in proportion. Pure: the node feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtq_worker.config import MAX_SLOTS

CAP_PER_SLOT = 4
"""Most tasks buffered per slot (16 for the default 4 threads)."""
MIN_ROUND_TRIP_S = 0.002
"""The round trip assumed at least: a heartbeat ack skips the commit a lease needs."""
SMOOTHING = 0.5
"""Weight of the newest heartbeat's round trip in the running estimate."""


@dataclass(frozen=True, slots=True)
class WorkDone:
    """What a node's worker threads have done so far (running totals)."""

    finished: int
    """Jobs finished."""
    busy_s: float
    """Seconds spent running the finished jobs."""
    running: int = 0
    """Jobs running now."""
    running_s: float = 0.0
    """How long the jobs running now have run, together."""


class AutoPrefetch:
    """The prefetch of an ``auto`` node (see the module docstring)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._cap = min(MAX_SLOTS, CAP_PER_SLOT * slots)
        self._round_trip_s: float | None = None
        self._last = WorkDone(0, 0.0)
        self.value = 0
        """The prefetch to report now."""

    def update(self, work: WorkDone, round_trip_s: float | None) -> int:
        """Recompute from the work done since the last update and the latest round trip."""
        if round_trip_s is not None:
            previous = self._round_trip_s
            self._round_trip_s = (
                round_trip_s
                if previous is None
                else SMOOTHING * round_trip_s + (1 - SMOOTHING) * previous
            )
        finished = work.finished - self._last.finished
        busy_s = work.busy_s - self._last.busy_s
        self._last = work
        seen = finished + work.running
        if seen == 0:
            return self.value  # idle: nothing learnt
        run_s = (busy_s + work.running_s) / seen
        round_trip = max(self._round_trip_s or 0.0, MIN_ROUND_TRIP_S)
        wanted = self._slots * round_trip / run_s if run_s > 0 else float(self._cap)
        self.value = min(self._cap, int(wanted + 0.5))
        return self.value
