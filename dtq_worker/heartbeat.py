"""Heartbeat bookkeeping for one stream: sequence numbers and ack deadlines.

The coordinator answers every heartbeat. If a heartbeat is unanswered and
nothing at all has arrived for the heartbeat timeout (counted from the last
message, or from the start of the stream), the stream is treated as dead even
if the transport looks fine: that covers one-way black holes where writes
succeed and nothing comes back. Counting from the last message, not from the
oldest unanswered send, is what bounds detection by the timeout itself: the
last message came before the fault, while the next send may come an interval
after it.

Any message counts, not only acks: on a slow link an ack waits behind the
assignments queued before it, and a stream that keeps delivering them is
alive. (Counting acks alone, a backlog that took longer than the timeout to
cross the link broke the stream; the node resumed, the coordinator sent the
backlog again, and the same tasks crossed the link forever: chaos N5 found it.)
"""

from __future__ import annotations

from collections import deque


class HeartbeatTracker:
    """Sequences sent and not yet acknowledged. Pure: the caller supplies the clock."""

    def __init__(self, timeout_s: float, started_at: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._next = 1
        self._unacked: deque[tuple[int, float]] = deque()
        self._heard_at = started_at
        """When the last message arrived (or the stream started); None if unknown."""
        self.round_trip_s: float | None = None
        """Send to ack of the latest heartbeat answered; None before the first."""

    def sent(self, now: float) -> int:
        """Record a heartbeat sent at ``now``; return its sequence number (1, 2, ...)."""
        sequence = self._next
        self._next += 1
        self._unacked.append((sequence, now))
        return sequence

    def acked(self, sequence: int, now: float | None = None) -> None:
        """An ack for ``sequence`` arrived (at ``now``); it also answers every earlier one."""
        while self._unacked and self._unacked[0][0] <= sequence:
            answered, sent_at = self._unacked.popleft()
            if answered == sequence and now is not None:
                self.round_trip_s = now - sent_at
        if now is not None:
            self._heard_at = now

    def heard(self, now: float) -> None:
        """Some other message from the coordinator arrived at ``now``."""
        self._heard_at = now

    def overdue_at(self) -> float | None:
        """When the stream counts as dead; None while every heartbeat is answered.

        The timeout runs from the last message (or the stream's start, when
        known; else from the oldest unanswered send).
        """
        if not self._unacked:
            return None
        base = self._unacked[0][1] if self._heard_at is None else self._heard_at
        return base + self.timeout_s

    def overdue(self, now: float) -> bool:
        """True if some heartbeat went unanswered for longer than the timeout."""
        deadline = self.overdue_at()
        return deadline is not None and now >= deadline
