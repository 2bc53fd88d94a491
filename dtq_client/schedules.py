"""The client's calls about periodic schedules (``dtq.v1.ScheduleService``)."""

from __future__ import annotations

from dtq.v1 import schedule_service_pb2
from dtq_client import convert, retry
from dtq_client.calls import Calls
from dtq_client.models import MissedTicks, Schedule, TaskSpec


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
        if cron is not None and interval_s is not None:
            raise ValueError("give cron or interval_s, not both")
        schedule = Schedule(
            name=name,
            task=task,
            cron=cron,
            interval_s=interval_s,
            time_zone=time_zone,
            paused=paused,
            missed_ticks=None if missed_ticks is None else MissedTicks(missed_ticks),
        )
        request = schedule_service_pb2.CreateScheduleRequest(
            schedule=convert.schedule_to_proto(schedule)
        )
        # Idempotent by name and definition, so a retry after a lost answer is harmless.
        response: schedule_service_pb2.CreateScheduleResponse = self._unary(
            self._schedules.CreateSchedule, request, retry.SUBMIT_CODES
        )
        return convert.schedule_from_proto(response.schedule)

    def get_schedule(self, name: str) -> Schedule:
        """The schedule called ``name``; :class:`ScheduleNotFound` if there is none."""
        request = schedule_service_pb2.GetScheduleRequest(name=name)
        response: schedule_service_pb2.GetScheduleResponse = self._unary(
            self._schedules.GetSchedule, request, retry.READ_CODES
        )
        return convert.schedule_from_proto(response.schedule)

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, ordered by name."""
        request = schedule_service_pb2.ListSchedulesRequest()
        response: schedule_service_pb2.ListSchedulesResponse = self._unary(
            self._schedules.ListSchedules, request, retry.READ_CODES
        )
        return [convert.schedule_from_proto(s) for s in response.schedules]

    def pause_schedule(self, name: str) -> Schedule:
        """Stop firing a schedule; the ticks that pass while it is paused are skipped."""
        return self._set_paused(name, True)

    def resume_schedule(self, name: str) -> Schedule:
        """Resume a paused schedule from its next tick after now."""
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> Schedule:
        request = schedule_service_pb2.UpdateScheduleRequest(name=name, paused=paused)
        response: schedule_service_pb2.UpdateScheduleResponse = self._unary(
            self._schedules.UpdateSchedule, request, retry.READ_CODES
        )
        return convert.schedule_from_proto(response.schedule)

    def delete_schedule(self, name: str) -> None:
        """Delete the schedule ``name``; the tasks it already submitted stay.

        :class:`ScheduleNotFound` if there is none, including when a retry
        after a lost answer finds that the first attempt deleted it.
        """
        request = schedule_service_pb2.DeleteScheduleRequest(name=name)
        self._unary(self._schedules.DeleteSchedule, request, retry.READ_CODES)
