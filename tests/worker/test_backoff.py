"""Reconnect backoff: exponential, jittered, capped."""

from __future__ import annotations

import tenacity

from dtq_worker.connection import reconnect_backoff


def _wait(strategy: tenacity.wait.wait_base, attempt: int) -> float:
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return strategy(state)


def test_pauses_grow_exponentially_with_jitter_and_stay_under_the_cap() -> None:
    strategy = reconnect_backoff(max_s=5.0)
    for attempt in range(1, 30):
        fixed = min(0.05 * 2 ** (attempt - 1), 2.5)
        samples = [_wait(strategy, attempt) for _ in range(50)]
        assert all(fixed <= s <= 2 * fixed for s in samples), attempt
        assert max(samples) <= 5.0
    late = [_wait(strategy, 20) for _ in range(50)]
    assert len(set(late)) > 1  # jittered: nodes do not reconnect in lockstep


def test_first_pause_is_short_but_not_zero() -> None:
    samples = [_wait(reconnect_backoff(5.0), 1) for _ in range(50)]
    assert all(0.05 <= s <= 0.1 for s in samples)
