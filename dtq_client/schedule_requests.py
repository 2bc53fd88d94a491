"""Schedule calls' requests and answers, as plans both clients run.

One function per call of :class:`~dtq_client.schedules.ScheduleCalls` and
:class:`~dtq_client.schedules.AsyncScheduleCalls`: it checks the arguments,
builds the request and says how the answer is read; see :mod:`dtq_client.plans`.
"""

from __future__ import annotations

from dtq.v1 import schedule_service_pb2
from dtq_client import convert, retry
from dtq_client.models import MissedTicks, Page, Schedule, TaskSpec
from dtq_client.plans import Plan, no_answer


def create_schedule(
    name: str,
    task: TaskSpec,
    *,
    cron: str | None,
    interval_s: float | None,
    time_zone: str | None,
    missed_ticks: MissedTicks | str | None,
    paused: bool,
) -> Plan[Schedule]:
    """CreateSchedule (ValueError if both ``cron`` and ``interval_s`` are given)."""
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
    return Plan("schedules", "CreateSchedule", request, retry.SUBMIT_CODES, _schedule)


def get_schedule(name: str) -> Plan[Schedule]:
    """GetSchedule: the schedule called ``name``."""
    request = schedule_service_pb2.GetScheduleRequest(name=name)
    return Plan("schedules", "GetSchedule", request, retry.READ_CODES, _schedule)


def list_schedules_page(page_token: str, page_size: int = 0) -> Plan[Page[Schedule]]:
    """ListSchedules: a page of schedules by name, and the next page's token ("" if last;
    ``page_size`` 0: the coordinator's largest)."""
    request = schedule_service_pb2.ListSchedulesRequest(page_token=page_token, page_size=page_size)
    return Plan("schedules", "ListSchedules", request, retry.READ_CODES, _schedules_page)


def set_schedule_paused(name: str, paused: bool) -> Plan[Schedule]:
    """UpdateSchedule pausing or resuming a schedule."""
    request = schedule_service_pb2.UpdateScheduleRequest(name=name, paused=paused)
    return Plan("schedules", "UpdateSchedule", request, retry.READ_CODES, _schedule)


def delete_schedule(name: str) -> Plan[None]:
    """DeleteSchedule."""
    request = schedule_service_pb2.DeleteScheduleRequest(name=name)
    return Plan("schedules", "DeleteSchedule", request, retry.READ_CODES, no_answer)


def _schedule(
    response: schedule_service_pb2.CreateScheduleResponse
    | schedule_service_pb2.GetScheduleResponse
    | schedule_service_pb2.UpdateScheduleResponse,
) -> Schedule:
    return convert.schedule_from_proto(response.schedule)


def _schedules_page(
    response: schedule_service_pb2.ListSchedulesResponse,
) -> Page[Schedule]:
    schedules = tuple(convert.schedule_from_proto(s) for s in response.schedules)
    return Page(schedules, response.next_page_token)
