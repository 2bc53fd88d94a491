"""Heartbeat bookkeeping for one stream: sequence numbers and ack deadlines.

The coordinator answers every heartbeat. If the oldest unanswered one is
older than the heartbeat timeout, the stream is treated as dead even if the
transport looks fine: that covers one-way black holes where writes succeed
and nothing comes back.
"""

from __future__ import annotations

from collections import deque


class HeartbeatTracker:
    """Sequences sent and not yet acknowledged. Pure: the caller supplies the clock."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._next = 1
        self._unacked: deque[tuple[int, float]] = deque()

    def sent(self, now: float) -> int:
        """Record a heartbeat sent at ``now``; return its sequence number (1, 2, ...)."""
        sequence = self._next
        self._next += 1
        self._unacked.append((sequence, now))
        return sequence

    def acked(self, sequence: int) -> None:
        """An ack for ``sequence`` arrived; it also answers every earlier heartbeat."""
        while self._unacked and self._unacked[0][0] <= sequence:
            self._unacked.popleft()

    def overdue_at(self) -> float | None:
        """When the oldest unanswered heartbeat times out; None if all are answered."""
        return self._unacked[0][1] + self.timeout_s if self._unacked else None

    def overdue(self, now: float) -> bool:
        """True if some heartbeat went unanswered for longer than the timeout."""
        deadline = self.overdue_at()
        return deadline is not None and now >= deadline
