"""The client's calls about periodic schedules (``dtq.v1.ScheduleService``).

:class:`ScheduleCalls` are :class:`~dtq_client.Client`'s, :class:`AsyncScheduleCalls`
:class:`~dtq_client.AsyncClient`'s: the same calls, each running the plan that
:mod:`dtq_client.schedule_requests` makes for it.
"""

from __future__ import annotations

from dtq_client import schedule_requests
from dtq_client.calls import AsyncCalls, Calls
from dtq_client.models import MissedTicks, Page, Schedule, TaskSpec


class ScheduleCalls(Calls):
    """Create, read, pause, resume and delete schedules: the :class:`~dtq_client.Client` methods.

    The coordinator fires a schedule's ticks itself: each tick submits one
    task, with the idempotency key ``schedule:NAME:TICK``, in the same commit
    that moves the schedule on, so a tick fires exactly once even across
    coordinator crashes. Ticks follow the coordinator's wall clock.
    """

    def create_schedule(
        self,
        name: str,
        task: TaskSpec,
        *,
        cron: str | None = None,
        interval_s: float | None = None,
        time_zone: str | None = None,
        missed_ticks: MissedTicks | str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Create a schedule submitting ``task`` at every tick, and return it.

        Give exactly one of ``cron`` (5 fields, or 6 with seconds last, read in
        ``time_zone``, UTC by default) and ``interval_s`` (a fixed period from
        now, 1 s to 366 days). ``missed_ticks`` says what to do with ticks
        that pass while the coordinator is down: skip them, run the latest
        once (the default) or run them all. ``task``'s idempotency key,
        ``run_at`` and ``delay_s`` are not used.

        Idempotent by name: creating the same schedule again returns the
        stored one; :class:`ScheduleExists` if a different one has the name.
        """
        plan = schedule_requests.create_schedule(
            name,
            task,
            cron=cron,
            interval_s=interval_s,
            time_zone=time_zone,
            missed_ticks=missed_ticks,
            paused=paused,
        )
        return self._run(plan)

    def get_schedule(self, name: str) -> Schedule:
        """The schedule called ``name``; :class:`ScheduleNotFound` if there is none."""
        return self._run(schedule_requests.get_schedule(name))

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, ordered by name (fetched a page at a time)."""
        return self._run_pages(schedule_requests.list_schedules_page)

    def schedules_page(self, page_token: str = "", page_size: int = 0) -> Page[Schedule]:
        """One page of :meth:`list_schedules` (``page_size`` 0: the coordinator's largest,
        1,000); pass the page's ``next_page_token`` for the next one."""
        return self._run(schedule_requests.list_schedules_page(page_token, page_size))

    def pause_schedule(self, name: str) -> Schedule:
        """Stop firing a schedule; the ticks that pass while it is paused are skipped."""
        return self._run(schedule_requests.set_schedule_paused(name, True))

    def resume_schedule(self, name: str) -> Schedule:
        """Resume a paused schedule from its next tick after now."""
        return self._run(schedule_requests.set_schedule_paused(name, False))

    def delete_schedule(self, name: str) -> None:
        """Delete the schedule ``name``; the tasks it already submitted stay.

        :class:`ScheduleNotFound` if there is none, including when a retry
        after a lost answer finds that the first attempt deleted it.
        """
        self._run(schedule_requests.delete_schedule(name))


class AsyncScheduleCalls(AsyncCalls):
    """The same calls for :class:`~dtq_client.AsyncClient`, each a coroutine."""

    async def create_schedule(
        self,
        name: str,
        task: TaskSpec,
        *,
        cron: str | None = None,
        interval_s: float | None = None,
        time_zone: str | None = None,
        missed_ticks: MissedTicks | str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """See :meth:`Client.create_schedule <dtq_client.Client.create_schedule>`."""
        plan = schedule_requests.create_schedule(
            name,
            task,
            cron=cron,
            interval_s=interval_s,
            time_zone=time_zone,
            missed_ticks=missed_ticks,
            paused=paused,
        )
        return await self._run(plan)

    async def get_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.get_schedule <dtq_client.Client.get_schedule>`."""
        return await self._run(schedule_requests.get_schedule(name))

    async def list_schedules(self) -> list[Schedule]:
        """See :meth:`Client.list_schedules <dtq_client.Client.list_schedules>`."""
        return await self._run_pages(schedule_requests.list_schedules_page)

    async def schedules_page(self, page_token: str = "", page_size: int = 0) -> Page[Schedule]:
        """See :meth:`Client.schedules_page <dtq_client.Client.schedules_page>`."""
        return await self._run(schedule_requests.list_schedules_page(page_token, page_size))

    async def pause_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.pause_schedule <dtq_client.Client.pause_schedule>`."""
        return await self._run(schedule_requests.set_schedule_paused(name, True))

    async def resume_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.resume_schedule <dtq_client.Client.resume_schedule>`."""
        return await self._run(schedule_requests.set_schedule_paused(name, False))

    async def delete_schedule(self, name: str) -> None:
        """See :meth:`Client.delete_schedule <dtq_client.Client.delete_schedule>`."""
        await self._run(schedule_requests.delete_schedule(name))
