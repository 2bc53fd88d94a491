"""Conversion of periodic schedules (``schedule_service.proto``)."""

from __future__ import annotations

from dtq.v1 import schedule_service_pb2
from dtq_client.convert.scalars import (
    duration_from_proto,
    optional_duration,
    time_from_proto,
    time_to_proto,
)
from dtq_client.convert.tasks import spec_from_proto, spec_to_proto
from dtq_client.errors import ProtocolError
from dtq_client.models import MissedTicks, Schedule

_MISSED_TICKS: dict[MissedTicks, schedule_service_pb2.MissedTicksPolicy] = {
    MissedTicks.SKIP: schedule_service_pb2.MISSED_TICKS_POLICY_SKIP,
    MissedTicks.RUN_ONCE: schedule_service_pb2.MISSED_TICKS_POLICY_RUN_ONCE,
    MissedTicks.RUN_ALL: schedule_service_pb2.MISSED_TICKS_POLICY_RUN_ALL,
}
_MISSED_TICKS_BACK: dict[int, MissedTicks] = {number: m for m, number in _MISSED_TICKS.items()}


def missed_ticks_to_proto(policy: MissedTicks | None) -> schedule_service_pb2.MissedTicksPolicy:
    """The wire enum for ``policy``; None is UNSPECIFIED (the coordinator's default, RUN_ONCE)."""
    if policy is None:
        return schedule_service_pb2.MISSED_TICKS_POLICY_UNSPECIFIED
    return _MISSED_TICKS[policy]


def missed_ticks_from_proto(number: int) -> MissedTicks | None:
    """The model enum for a wire value (UNSPECIFIED is None); unknown ones are a ProtocolError."""
    if number == schedule_service_pb2.MISSED_TICKS_POLICY_UNSPECIFIED:
        return None
    try:
        return _MISSED_TICKS_BACK[number]
    except KeyError as exc:
        raise ProtocolError(f"unknown missed-ticks policy {number}") from exc


def schedule_from_proto(message: schedule_service_pb2.Schedule) -> Schedule:
    """Model of a ``dtq.v1.Schedule``."""
    timing = message.WhichOneof("timing")
    return Schedule(
        name=message.name,
        task=spec_from_proto(message.task),
        cron=message.cron if timing == "cron" else None,
        interval_s=duration_from_proto(message, "interval") if timing == "interval" else None,
        time_zone=message.time_zone or None,
        paused=message.paused,
        missed_ticks=missed_ticks_from_proto(message.missed_ticks_policy),
        next_fire_at=time_from_proto(message, "next_fire_time"),
        last_fire_at=time_from_proto(message, "last_fire_time"),
        fired_count=message.fired_count,
        created_at=time_from_proto(message, "create_time"),
        last_error=message.last_error or None,
        last_error_at=time_from_proto(message, "last_error_time"),
    )


def schedule_to_proto(schedule: Schedule) -> schedule_service_pb2.Schedule:
    """``dtq.v1.Schedule`` of a model (what CreateSchedule sends, output fields included)."""
    message = schedule_service_pb2.Schedule(
        name=schedule.name,
        time_zone=schedule.time_zone or "",
        task=spec_to_proto(schedule.task),
        paused=schedule.paused,
        missed_ticks_policy=missed_ticks_to_proto(schedule.missed_ticks),
        next_fire_time=time_to_proto(schedule.next_fire_at),
        last_fire_time=time_to_proto(schedule.last_fire_at),
        fired_count=schedule.fired_count,
        create_time=time_to_proto(schedule.created_at),
        last_error=schedule.last_error or "",
        last_error_time=time_to_proto(schedule.last_error_at),
    )
    # The oneof keeps only the last of the two: Client.create_schedule refuses both at once.
    if schedule.cron is not None:
        message.cron = schedule.cron
    interval = optional_duration(schedule.interval_s, "interval_s")
    if interval is not None:
        message.interval.CopyFrom(interval)
    return message
