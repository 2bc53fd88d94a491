"""Retry delays: exponential backoff with jitter (pure, so it is unit-tested alone)."""

from __future__ import annotations

import random


def retry_delay_s(
    failures: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Delay before the attempt that follows the ``failures``-th failure (1-based).

    The nominal delay is ``base_s * 2**(failures-1)`` capped at ``max_s``; it is
    stretched by a random 0-25 % so that tasks failing together do not retry in
    lock-step. Jitter only ever adds: a retry never comes before its nominal delay.
    """
    nominal = min(max_s, base_s * 2.0 ** min(max(0, failures - 1), 60))
    jitter: float = (rng or random).uniform(1.0, 1.25)
    return nominal * jitter
