"""Token buckets for dispatch rate limits (per queue and per rate key).

Pure and clock-injected, so the arithmetic is unit-tested alone. The buckets
live only in memory: their settings are durable, their fill level is not (a
restarted coordinator starts with full buckets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SLACK = 0.1
"""A tenth of a token a bucket may save beyond its burst (see TokenBucket.refill)."""


@dataclass(slots=True)
class TokenBucket:
    """``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill.

        The cap is ``burst`` plus a tenth of a token: a dispatcher that wakes a
        little late (up to a tenth of a token's time) does not lose the time it
        overslept, while at most ``burst`` tasks can start at once and the
        long-run rate never exceeds ``per_second``.
        """
        if now > self.stamp:
            cap = self.burst + _SLACK
            self.tokens = min(cap, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def available(self, now: float) -> bool:
        """True if a task may be dispatched now."""
        self.refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> None:
        """Spend one token (the caller checked ``available``)."""
        self.refill(now)
        self.tokens -= 1.0

    def seconds_until_token(self, now: float) -> float:
        """How long until ``available`` turns true."""
        self.refill(now)
        return max(0.0, (1.0 - self.tokens) / self.per_second)


def default_burst(per_second: float) -> float:
    """One second's worth of tokens, at least one."""
    return max(1.0, float(int(per_second)))


class RateLimiter:
    """The buckets of every limited queue and rate key.

    Every dispatch round asks which buckets are out of tokens. A bucket only runs
    out when a task takes its last token (refills only add), so the limiter keeps
    the names of the buckets that ran out and looks at those alone: looking at
    every bucket cost a round 2.6 ms with a limit per tenant for 10,000 tenants.
    """

    def __init__(self) -> None:
        self.queues: dict[str, TokenBucket] = {}
        self.keys: dict[str, TokenBucket] = {}
        self._empty_queues: set[str] = set()
        self._empty_keys: set[str] = set()

    def configure_queue(self, name: str, per_second: float, now: float) -> None:
        """Set or (with 0) remove a queue's limit."""
        _configure(self.queues, name, per_second, default_burst(per_second), now)

    def configure_key(self, key: str, per_second: float, burst: float, now: float) -> None:
        """Set or (with 0) remove a rate key's limit."""
        _configure(self.keys, key, per_second, burst, now)

    def blocked(self, now: float) -> tuple[set[str], set[str], float | None]:
        """(queues out of tokens, keys out of tokens, seconds until the first refill)."""
        queues = _still_empty(self.queues, self._empty_queues, now)
        keys = _still_empty(self.keys, self._empty_keys, now)
        waits = [self.queues[n].seconds_until_token(now) for n in queues]
        waits += [self.keys[k].seconds_until_token(now) for k in keys]
        return queues, keys, min(waits) if waits else None

    def take(self, queue: str, key: str, now: float) -> tuple[bool, bool]:
        """Spend a token for a dispatched task: (queue now empty, key now empty)."""
        queue_empty = key_empty = False
        if (bucket := self.queues.get(queue)) is not None:
            bucket.take(now)
            queue_empty = not bucket.available(now)
            if queue_empty:
                self._empty_queues.add(queue)
        if key and (bucket := self.keys.get(key)) is not None:
            bucket.take(now)
            key_empty = not bucket.available(now)
            if key_empty:
                self._empty_keys.add(key)
        return queue_empty, key_empty


def _still_empty(buckets: dict[str, TokenBucket], empty: set[str], now: float) -> set[str]:
    """The names in ``empty`` whose bucket is still out of tokens; the others leave it
    (refilled, or no longer limited)."""
    for name in list(empty):
        bucket = buckets.get(name)
        if bucket is None or bucket.available(now):
            empty.discard(name)
    return set(empty)


def _configure(
    buckets: dict[str, TokenBucket], name: str, per_second: float, burst: float, now: float
) -> None:
    if per_second <= 0:
        buckets.pop(name, None)
    else:
        buckets[name] = TokenBucket(per_second, max(1.0, burst), stamp=now)
