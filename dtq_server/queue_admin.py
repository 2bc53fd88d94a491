"""Queue settings and rate limits: pause, global concurrency, token buckets (AdminService).

Every change is stored before it is applied to the dispatcher, so it survives
a restart; the dispatcher is kicked so a lifted limit takes effect at once.
"""

from __future__ import annotations

import dataclasses
import time

import structlog

from dtq_server.dispatch import Dispatcher
from dtq_server.models import QueueSettings, QueueStats, RateLimit
from dtq_server.ratelimit import default_burst
from dtq_server.store.base import Store
from dtq_server.validation import QUEUE_RE, Violations, check_name

log = structlog.get_logger(__name__)
MAX_QUEUE_LIMIT = 100_000
MAX_DEPTH = 100_000_000
MAX_RATE = 100_000.0
MAX_RATE_KEY = 200


class QueueAdmin:
    """Reads and changes per-queue settings and rate-key limits."""

    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    async def queues(self, after: str = "", limit: int = 0) -> list[QueueStats]:
        """Task counts and settings of the queues with tasks or settings, ordered by name:
        those named after ``after``, the first ``limit`` of them (0: all)."""
        return [self._with_settings(q) for q in await self.store.queue_stats(after, limit)]

    async def queue(self, name: str) -> QueueStats:
        """One queue's task counts and settings."""
        return self._with_settings(await self.store.queue_counts(name))

    def _with_settings(self, stats: QueueStats) -> QueueStats:
        settings = self.dispatcher.queue_settings.get(stats.name, QueueSettings())
        return dataclasses.replace(
            stats,
            paused=settings.paused,
            max_running=settings.max_running,
            rate_limit=settings.rate_limit,
            max_depth=settings.max_depth,
        )

    async def update_queue(
        self,
        name: str,
        paused: bool | None,
        max_running: int | None,
        rate_limit: float | None = None,
        max_depth: int | None = None,
    ) -> QueueStats:
        """Pause/resume a queue, set its global concurrency, rate limit or depth (durably)."""
        v = Violations()
        check_name(v, "name", name, QUEUE_RE, "queue")
        if max_running is not None and not 0 <= max_running <= MAX_QUEUE_LIMIT:
            v.add("max_running", f"must be 0-{MAX_QUEUE_LIMIT}")
        if rate_limit is not None and not 0 <= rate_limit <= MAX_RATE:
            v.add("rate_limit", f"must be 0-{MAX_RATE:g} tasks per second")
        if max_depth is not None and not 0 <= max_depth <= MAX_DEPTH:
            v.add("max_depth", f"must be 0-{MAX_DEPTH:,} unfinished tasks")
        v.raise_if_any()
        current = self.dispatcher.queue_settings.get(name, QueueSettings())
        updated = QueueSettings(
            paused=current.paused if paused is None else paused,
            max_running=current.max_running if max_running is None else max_running,
            rate_limit=current.rate_limit if rate_limit is None else rate_limit,
            max_depth=current.max_depth if max_depth is None else max_depth,
        )
        await self.store.save_queue(name, updated)
        self.dispatcher.queue_settings[name] = updated
        if updated.rate_limit != current.rate_limit:
            self.dispatcher.limiter.configure_queue(name, updated.rate_limit, time.monotonic())
        self.dispatcher.kick()
        log.info(
            "queue.updated",
            queue=name,
            paused=updated.paused,
            max_running=updated.max_running,
            rate_limit=updated.rate_limit,
            max_depth=updated.max_depth,
        )
        return await self.queue(name)

    async def set_rate_limit(self, key: str, per_second: float, burst: int) -> RateLimit | None:
        """Set (or with 0 remove) a rate key's token bucket, durably."""
        v = Violations()
        if not 1 <= len(key) <= MAX_RATE_KEY or not key.isprintable():
            v.add("key", f"must be 1-{MAX_RATE_KEY} printable characters")
        if not 0 <= per_second <= MAX_RATE:
            v.add("per_second", f"must be 0-{MAX_RATE:g}")
        if not 0 <= burst <= MAX_RATE:
            v.add("burst", f"must be 0-{MAX_RATE:g}")
        v.raise_if_any()
        limit = RateLimit(key, per_second, float(burst) if burst else default_burst(per_second))
        await self.store.save_rate_limit(limit)
        self.dispatcher.limiter.configure_key(key, per_second, limit.burst, time.monotonic())
        self.dispatcher.kick()
        log.info("rate_limit.set", key=key, per_second=per_second, burst=limit.burst)
        return limit if per_second > 0 else None

    async def rate_limits(self, after: str = "", limit: int = 0) -> list[RateLimit]:
        """The configured rate-key limits ordered by key: those keyed after ``after``,
        the first ``limit`` of them (0: all)."""
        return await self.store.load_rate_limits(after, limit)
