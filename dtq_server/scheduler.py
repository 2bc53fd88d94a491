"""Fires periodic schedules: one task per tick, exactly once, even across crashes.

Each firing is a single commit that inserts the tick's task (with the
idempotency key ``schedule:NAME:TICK``) and moves the schedule to its next
tick, fenced on the tick it was at. Ticks are wall-clock times, so a
coordinator that was down follows the schedule's missed-ticks policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable

import structlog

from dtq_server.config import ServerConfig
from dtq_server.errors import InvalidArgument, ScheduleNotFound, StoreUnavailable
from dtq_server.models import NewTask, TaskRecord
from dtq_server.schedules import (
    NAME_RE,
    MissedTicks,
    Schedule,
    check_timing,
    due_ticks,
    next_tick,
    tick_key,
)
from dtq_server.store.base import Store
from dtq_server.task_types import DeclaredTypes
from dtq_server.validation import SpecInput, Violations, check_name, validate_spec

log = structlog.get_logger(__name__)
MAX_SLEEP_S = 1.0
TasksCreated = Callable[[list[NewTask], list[tuple[TaskRecord, bool]]], None]


class Scheduler:
    """The coordinator's schedules, in memory and in the store."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        on_created: TasksCreated,
        task_types: DeclaredTypes,
    ) -> None:
        self._config = config
        self._store = store
        self._on_created = on_created
        self._task_types = task_types
        self._schedules: dict[str, Schedule] = {}
        self._changed = asyncio.Event()
        self.stopped = False
        """Set at shutdown: no more ticks fire (submits are refused too)."""

    async def load(self) -> None:
        """Read every schedule from the store (start-up)."""
        self._schedules = {s.name: s for s in await self._store.load_schedules()}

    async def create(
        self,
        name: str,
        cron: str | None,
        interval_s: float | None,
        time_zone: str,
        template: SpecInput,
        missed: MissedTicks,
        paused: bool,
    ) -> tuple[Schedule, bool]:
        """Create a schedule (idempotent by name and definition)."""
        v = Violations()
        check_name(v, "schedule.name", name, NAME_RE, "name")
        check_timing(v, cron, interval_s, time_zone)
        template = dataclasses.replace(template, idempotency_key="", run_at=None, delay_s=None)
        task = validate_spec(template, "schedule.task", self._config, v)
        v.raise_if_any()
        assert task is not None  # valid: no violation was raised
        self._task_types.check([task], lambda _: "schedule.task")
        now = time.time()
        draft = Schedule(
            name=name, cron=cron, interval_s=interval_s, time_zone=time_zone,
            template=template, paused=paused, missed=missed, next_fire_at=0.0,
            last_fire_at=None, fired_count=0, created_at=now,
        )  # fmt: skip
        draft = dataclasses.replace(draft, next_fire_at=next_tick(draft, now))
        schedule, created = await self._store.create_schedule(draft)
        self._schedules[name] = schedule
        self._changed.set()
        log.info("schedule.created" if created else "schedule.exists", schedule=name)
        return schedule, created

    def get(self, name: str) -> Schedule:
        """One schedule."""
        try:
            return self._schedules[name]
        except KeyError:
            raise ScheduleNotFound(name) from None

    def all(self) -> list[Schedule]:
        """Every schedule, by name."""
        return [self._schedules[n] for n in sorted(self._schedules)]

    async def set_paused(self, name: str, paused: bool) -> Schedule:
        """Pause, or resume from the next tick after now."""
        schedule = self.get(name)
        next_at = schedule.next_fire_at if paused else next_tick(schedule, time.time())
        if not await self._store.set_schedule_paused(name, paused, next_at):
            raise ScheduleNotFound(name)
        updated = dataclasses.replace(schedule, paused=paused, next_fire_at=next_at)
        self._schedules[name] = updated
        self._changed.set()
        log.info("schedule.paused" if paused else "schedule.resumed", schedule=name)
        return updated

    async def delete(self, name: str) -> None:
        """Delete a schedule."""
        self.get(name)
        await self._store.delete_schedule(name)
        self._schedules.pop(name, None)
        log.info("schedule.deleted", schedule=name)

    async def run(self) -> None:
        """Fire due ticks until cancelled."""
        while True:
            now = time.time()
            for name in list(self._schedules):
                if self.stopped:
                    break
                # Read it again: a pause or delete may have landed while another fired.
                schedule = self._schedules.get(name)
                if schedule is not None and not schedule.paused and schedule.next_fire_at <= now:
                    try:
                        await self._fire(schedule, now)
                    except StoreUnavailable as exc:
                        log.warning("schedule.fire_failed", schedule=schedule.name, error=str(exc))
            upcoming = [s.next_fire_at for s in self._schedules.values() if not s.paused]
            delay = min([MAX_SLEEP_S, *(t - time.time() for t in upcoming)])
            self._changed.clear()
            # asyncio.timeout, not wait_for: on 3.11, wait_for returns the event's
            # result when a cancel lands as the event is set, swallowing the cancel;
            # the coordinator's stop then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._changed.wait()

    async def _fire(self, schedule: Schedule, now: float) -> None:
        ticks, following = due_ticks(schedule, now)
        tasks = []
        for tick in ticks:
            spec = dataclasses.replace(
                schedule.template, idempotency_key=tick_key(schedule.name, tick)
            )
            task = validate_spec(spec, "schedule.task", self._config, Violations())
            if task is None:  # validated at creation; limits may have changed since
                raise InvalidArgument([("schedule.task", "no longer valid")])
            tasks.append(task)
        results = await self._store.fire_schedule(
            schedule.name, schedule.next_fire_at, following, ticks, tasks
        )
        if results is None:
            # Moved meanwhile (paused, deleted, fired), and what memory holds may be older
            # than the store (a CreateSchedule answered "exists" with the row as it was
            # before a fire committed): fired again from there, every round would fail the
            # same way, and the schedule would never tick again. Read it back.
            stored = {s.name: s for s in await self._store.load_schedules()}
            if schedule.name in stored:
                self._schedules[schedule.name] = stored[schedule.name]
            else:
                self._schedules.pop(schedule.name, None)
            return
        if self._schedules.get(schedule.name) is schedule:
            self._schedules[schedule.name] = dataclasses.replace(
                schedule,
                next_fire_at=following,
                last_fire_at=max(ticks) if ticks else schedule.last_fire_at,
                fired_count=schedule.fired_count + len(ticks),
            )
        self._on_created(tasks, results)
        log.debug("schedule.fired", schedule=schedule.name, ticks=len(ticks))
