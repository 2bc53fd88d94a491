"""Periodic tasks: when a schedule ticks, and which ticks to fire after downtime.

The timing here is pure (wall-clock seconds in, wall-clock seconds out) and
unit-tested alone; :class:`~dtq_server.scheduler.Scheduler` does the firing.
Cron expressions are read by croniter, which supports a sixth (seconds) field,
a seventh (year) field and time zones; a cron schedule follows the
coordinator's wall clock by nature, so a wall-clock jump moves its ticks
(documented in the README). A valid expression may have no tick at all
(``0 0 31 2 *``) or a last one (a year field): :func:`next_tick` answers None
after the last, and a schedule that reaches it fires it and ends.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from dtq_server.models import NewTask
from dtq_server.validation import SpecInput, Violations

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86_400.0
MAX_CATCH_UP = 1000
ON_TIME_S = 1.0
"""A tick fired within this long of its time is on time, not missed."""
MAX_TIME_ZONE_CHARS = 64
"""Longer names are refused unread (the longest IANA name has 32 characters)."""


class MissedTicks(IntEnum):
    """What to do with ticks missed while the coordinator was down (dtq.v1 values)."""

    SKIP = 1
    RUN_ONCE = 2
    RUN_ALL = 3


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic task as stored."""

    name: str
    cron: str | None
    interval_s: float | None
    time_zone: str
    template: SpecInput
    paused: bool
    missed: MissedTicks
    next_fire_at: float
    last_fire_at: float | None
    fired_count: int
    created_at: float
    last_error: str | None = None
    """Why the last try to fire the due tick failed (memory only: cleared when a tick
    fires, and by anything that re-reads the schedule from the store)."""
    last_error_at: float | None = None

    def same_definition(self, other: Schedule) -> bool:
        """True if ``other`` defines the same schedule (ignores run-time state)."""
        return (self.cron, self.interval_s, self.time_zone, self.template, self.missed) == (
            other.cron,
            other.interval_s,
            other.time_zone,
            other.template,
            other.missed,
        )


@dataclass(frozen=True, slots=True)
class Firing:
    """A schedule's due ticks, stored in one commit with its move to the next tick."""

    name: str
    expected_next: float
    """The tick the schedule is at: the move is fenced on it (a pause or fire elsewhere wins)."""
    next_at: float
    ticks: list[float]
    tasks: list[NewTask]
    ended: bool = False
    """True when the schedule has no tick after these: it is paused as it moves."""


def check_timing(v: Violations, cron: str | None, interval_s: float | None, time_zone: str) -> None:
    """Record violations of a schedule's timing fields."""
    if (cron is None) == (interval_s is None):
        v.add("schedule.timing", "set exactly one of cron and interval")
    if cron is not None and (len(cron) > 200 or not croniter.is_valid(cron)):
        v.add("schedule.cron", f"{cron[:60]!r} is not a valid cron expression")
    if interval_s is not None and not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        v.add("schedule.interval", "must be between 1 s and 366 days")
    if time_zone and not _is_time_zone(time_zone):
        v.add("schedule.time_zone", f"{time_zone[:60]!r} is not an IANA time zone")


def _is_time_zone(name: str) -> bool:
    """True if ``name`` is a time zone key ZoneInfo can load."""
    if len(name) > MAX_TIME_ZONE_CHARS:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # A key may name a directory of the database ("America": IsADirectoryError),
        # or be too long for a file name: OSError, not ZoneInfoNotFoundError.
        return False
    return True


def next_tick(schedule: Schedule, after: float) -> float | None:
    """The first tick strictly after ``after`` (wall seconds); None if there is none
    (a cron expression whose last tick has passed, or that matches no date)."""
    if schedule.interval_s is not None:
        # Ticks are anchored on the creation time: created + k * interval.
        elapsed = after - schedule.created_at
        k = math.floor(elapsed / schedule.interval_s) + 1
        return schedule.created_at + max(1, k) * schedule.interval_s
    assert schedule.cron is not None
    return _cron_tick(schedule.cron, schedule.time_zone, after)


@functools.lru_cache(maxsize=4096)
def _cron_tick(cron: str, time_zone: str, after: float) -> float | None:
    # Remembered: schedules sharing an expression tick together, and each asks for
    # the tick after the same one; croniter takes ~40 us per answer and ~0.1 ms
    # more to parse the expression, which thousands of schedules feel.
    zone = ZoneInfo(time_zone) if time_zone else UTC
    base = datetime.fromtimestamp(after, zone)
    # A copy of the parsed expression keeps the iterator's position its own.
    try:
        result: datetime = copy.copy(_parsed(cron)).get_next(datetime, start_time=base)
    except CroniterBadDateError:  # no matching date in the 50 years croniter looks through
        return None
    return result.timestamp()


@functools.lru_cache(maxsize=1024)
def _parsed(cron: str) -> croniter:
    return croniter(cron)


def due_ticks(schedule: Schedule, now: float) -> tuple[list[float], float | None]:
    """(ticks to fire now, the next tick after them) for a schedule whose tick is due;
    None for the next tick if these are its last.

    Only the first due tick is "on time"; any later ones were missed (the
    coordinator was down or busy) and follow the schedule's missed-ticks policy.
    """
    ticks = [schedule.next_fire_at]
    following = next_tick(schedule, schedule.next_fire_at)
    while following is not None and following <= now and len(ticks) < MAX_CATCH_UP:
        ticks.append(following)
        following = next_tick(schedule, following)
    if following is not None and following <= now:  # more than MAX_CATCH_UP missed
        following = next_tick(schedule, now)  # jump ahead
    if schedule.missed is MissedTicks.RUN_ALL:
        return ticks, following
    if schedule.missed is MissedTicks.SKIP:
        return [t for t in ticks if now - t <= ON_TIME_S][-1:], following
    return [ticks[-1]], following


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of a tick's task: one task per (schedule, tick), ever."""
    stamp = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"schedule:{name}:{stamp}"
