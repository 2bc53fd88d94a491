"""Restart intensity: how often a supervisor may restart its children (OTP style).

More than ``max_restarts`` restarts within any ``period_s`` window means the
failure is not transient; the supervisor then gives up instead of looping.
"""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    """A sliding window of restart times. Pure: the caller supplies the clock."""

    def __init__(self, max_restarts: int, period_s: float) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Count a crash at ``now`` (monotonic seconds); True if the intensity is exceeded."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period_s:
            self._times.popleft()
        return len(self._times) > self.max_restarts

    def __len__(self) -> int:
        """Crashes counted in the current window (as of the last :meth:`record`)."""
        return len(self._times)
