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
import heapq
import time
from collections.abc import Callable

import structlog

from dtq_server.config import ServerConfig
from dtq_server.errors import (
    CoordinatorError,
    IdempotencyKeyReused,
    InvalidArgument,
    ScheduleEnded,
    ScheduleNotFound,
    StoreUnavailable,
    shown,
)
from dtq_server.models import NewTask, TaskRecord
from dtq_server.schedules import (
    NAME_RE,
    Firing,
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
FIRE_BATCH = 200
"""Schedules fired in one commit at most: preparing them holds the event loop ~60 us each."""
FAILED_RETRY_S = 60.0
"""How soon a tick the store refused for itself (not for being down) is tried again."""
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
        self._due: list[tuple[float, str]] = []
        """A heap of (when to look, name): each held schedule's next tick, and retries."""
        self._changed = asyncio.Event()
        self.stopped = False
        """Set at shutdown: no more ticks fire (submits are refused too)."""

    async def load(self) -> None:
        """Read every schedule from the store (start-up)."""
        self._schedules, self._due = {}, []
        for schedule in await self._store.load_schedules():
            self._keep(schedule)

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
        first = next_tick(draft, now)
        if first is None:  # valid, but never matching a date ahead (``0 0 31 2 *``)
            raise InvalidArgument(
                [("schedule.cron", f"{shown(cron or '', 60)} has no tick in the next 50 years")]
            )
        draft = dataclasses.replace(draft, next_fire_at=first)
        schedule, created = await self._store.create_schedule(draft)
        held = self._schedules.get(name)
        if not created and held is not None:  # the same schedule again: its error stands
            schedule = dataclasses.replace(
                schedule, last_error=held.last_error, last_error_at=held.last_error_at
            )
        self._keep(schedule)
        self._changed.set()
        log.info("schedule.created" if created else "schedule.exists", schedule=name)
        return schedule, created

    def get(self, name: str) -> Schedule:
        """One schedule."""
        try:
            return self._schedules[name]
        except KeyError:
            raise ScheduleNotFound(name) from None

    def by_name(self) -> list[Schedule]:
        """Every schedule, by name."""
        return [self._schedules[n] for n in sorted(self._schedules)]

    async def set_paused(self, name: str, paused: bool) -> Schedule:
        """Pause, or resume from the next tick after now."""
        schedule = self.get(name)
        next_at = schedule.next_fire_at if paused else next_tick(schedule, time.time())
        if next_at is None:  # a cron whose last tick has passed (the schedule ended)
            raise ScheduleEnded(name)
        if not await self._store.set_schedule_paused(name, paused, next_at):
            raise ScheduleNotFound(name)
        updated = dataclasses.replace(
            schedule, paused=paused, next_fire_at=next_at, last_error=None, last_error_at=None
        )
        self._keep(updated)
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
            due = self._take_due(time.time())
            if due and not self.stopped:
                try:
                    await self._fire(due, time.time())
                except Exception:  # a bug must not stop every schedule for good
                    log.exception("schedule.fire_crashed", schedules=len(due))
                    for schedule in due:
                        self._look_at(time.time() + FAILED_RETRY_S, schedule.name)
                continue  # more may be due than one commit takes
            delay = self._due[0][0] - time.time() if self._due else MAX_SLEEP_S
            self._changed.clear()
            # asyncio.timeout, not wait_for: on 3.11, wait_for returns the event's
            # result when a cancel lands as the event is set, swallowing the cancel;
            # the coordinator's stop then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(MAX_SLEEP_S, delay))):
                    await self._changed.wait()

    def _keep(self, schedule: Schedule) -> None:
        """Hold ``schedule`` as it now is, and look at it again at its next tick.

        Entries of the heap are not removed when a schedule moves: one whose schedule
        is gone, paused or not due any more is dropped when it comes up.
        """
        self._schedules[schedule.name] = schedule
        if not schedule.paused:
            self._look_at(schedule.next_fire_at, schedule.name)

    def _look_at(self, when: float, name: str) -> None:
        if len(self._due) > 2 * len(self._schedules) + 1024:  # mostly stale entries
            self._due = [(s.next_fire_at, s.name) for s in self._schedules.values() if not s.paused]
            heapq.heapify(self._due)
        heapq.heappush(self._due, (when, name))

    def _take_due(self, now: float) -> list[Schedule]:
        """Up to :data:`FIRE_BATCH` schedules due by ``now``, each once, earliest first."""
        due: dict[str, Schedule] = {}
        while self._due and self._due[0][0] <= now and len(due) < FIRE_BATCH:
            _, name = heapq.heappop(self._due)
            schedule = self._schedules.get(name)
            if schedule is not None and not schedule.paused and schedule.next_fire_at <= now:
                due[name] = schedule
        return list(due.values())

    async def _fire(self, due: list[Schedule], now: float) -> None:
        """Fire ``due`` in one commit; if the store refuses one, each is fired alone."""
        firings: list[tuple[Schedule, Firing]] = []
        for schedule in due:
            try:
                firings.append((schedule, _firing(schedule, now, self._config)))
            except InvalidArgument as exc:  # validated at creation; limits may have changed
                self._retry_later(schedule, exc)
            except Exception:  # a bug in one schedule's timing must not hold back the rest
                log.exception("schedule.fire_crashed", schedule=schedule.name)
                self._look_at(time.time() + FAILED_RETRY_S, schedule.name)
        if not firings:
            return
        try:
            answers = await self._store.fire_schedules([f for _, f in firings])
        except StoreUnavailable as exc:
            for schedule, _ in firings:
                self._retry_later(schedule, exc)
            return
        except CoordinatorError:
            if len(firings) == 1:
                await self._fire_alone(*firings[0])
            else:
                for schedule, _ in firings:  # the others need not wait for the one refused
                    await self._fire([schedule], now)
            return
        await self._settle(firings, answers)

    async def _fire_alone(self, schedule: Schedule, firing: Firing) -> None:
        """Fire a schedule the store refused in a batch, skipping ticks whose key is taken."""
        while True:
            try:
                answers = await self._store.fire_schedules([firing])
            except IdempotencyKeyReused as exc:
                # Another task holds the tick's key (a client chose it, or a schedule of
                # the same name deleted before a clock jump back): that tick is skipped,
                # not retried for ever, and the schedule goes on.
                keep = [i for i, t in enumerate(firing.tasks) if t.idempotency_key != exc.key]
                if len(keep) == len(firing.tasks):  # not one of its ticks: cannot skip it
                    self._retry_later(schedule, exc)
                    return
                log.warning("schedule.tick_taken", schedule=schedule.name, task_id=exc.task_id)
                firing = dataclasses.replace(
                    firing,
                    ticks=[firing.ticks[i] for i in keep],
                    tasks=[firing.tasks[i] for i in keep],
                )
                continue
            except CoordinatorError as exc:
                self._retry_later(schedule, exc)
                return
            await self._settle([(schedule, firing)], answers)
            return

    async def _settle(
        self,
        firings: list[tuple[Schedule, Firing]],
        answers: list[list[tuple[TaskRecord, bool]] | None],
    ) -> None:
        """Hold the schedules as fired, put their tasks on the board, and read back any
        schedule the store had moved meanwhile."""
        behind: list[Schedule] = []
        created: list[NewTask] = []
        results: list[tuple[TaskRecord, bool]] = []
        for (schedule, firing), stored in zip(firings, answers, strict=True):
            if stored is None:
                behind.append(schedule)
                continue
            if self._schedules.get(schedule.name) is schedule:
                self._keep(
                    dataclasses.replace(
                        schedule,
                        paused=firing.ended,
                        next_fire_at=firing.next_at,
                        last_fire_at=max(firing.ticks, default=schedule.last_fire_at),
                        fired_count=schedule.fired_count + len(firing.ticks),
                        last_error=None,
                        last_error_at=None,
                    )
                )
            created += firing.tasks
            results += stored
            log.debug("schedule.fired", schedule=schedule.name, ticks=len(firing.ticks))
            if firing.ended:
                log.info("schedule.ended", schedule=schedule.name, fired=len(firing.ticks))
        if created:
            self._on_created(created, results)
        if behind:
            await self._read_back(behind)

    async def _read_back(self, behind: list[Schedule]) -> None:
        # Moved meanwhile (paused, deleted, fired), and what memory holds may be older
        # than the store (a CreateSchedule answered "exists" with the row as it was
        # before a fire committed): fired again from there, every round would fail the
        # same way, and the schedule would never tick again. Read them back.
        stored = {s.name: s for s in await self._store.load_schedules()}
        for schedule in behind:
            if schedule.name in stored:
                self._keep(stored[schedule.name])
            else:
                self._schedules.pop(schedule.name, None)

    def _retry_later(self, schedule: Schedule, exc: CoordinatorError) -> None:
        """Look at ``schedule`` again soon if the store was down, later if it refused it."""
        log.warning("schedule.fire_failed", schedule=schedule.name, error=str(exc))
        now = time.time()
        if self._schedules.get(schedule.name) is schedule:  # shown to clients until it fires
            # Not _keep: that looks at the schedule at its (passed) tick, i.e. at once.
            failed = dataclasses.replace(schedule, last_error=str(exc), last_error_at=now)
            self._schedules[schedule.name] = failed
        after_s = MAX_SLEEP_S if isinstance(exc, StoreUnavailable) else FAILED_RETRY_S
        self._look_at(now + after_s, schedule.name)


def _firing(schedule: Schedule, now: float, config: ServerConfig) -> Firing:
    """The due ticks of ``schedule`` and their tasks."""
    ticks, following = due_ticks(schedule, now)
    if following is None:  # its last ticks: it moves to paused, at the last of them
        following = max(ticks, default=schedule.next_fire_at)
        ended = True
    else:
        ended = False
    tasks = []
    for tick in ticks:
        spec = dataclasses.replace(schedule.template, idempotency_key=tick_key(schedule.name, tick))
        task = validate_spec(spec, "schedule.task", config, Violations())
        if task is None:
            raise InvalidArgument([("schedule.task", "no longer valid")])
        tasks.append(task)
    return Firing(schedule.name, schedule.next_fire_at, following, ticks, tasks, ended)
