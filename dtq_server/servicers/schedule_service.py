"""ScheduleService: periodic tasks."""

from __future__ import annotations

from dtq.v1 import schedule_service_pb2 as pb
from dtq.v1 import schedule_service_pb2_grpc as pb_grpc
from dtq_server.errors import InvalidArgument
from dtq_server.scheduler import Scheduler
from dtq_server.schedules import MissedTicks
from dtq_server.servicers import paging
from dtq_server.servicers.convert import schedule_to_proto, spec_from_proto
from dtq_server.servicers.errors import Context, unary_boundary


class ScheduleServicer(pb_grpc.ScheduleServiceServicer):
    """Converts requests, calls the scheduler, converts responses."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    @unary_boundary
    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        s = request.schedule
        if not s.HasField("task"):
            raise InvalidArgument([("schedule.task", "is required")])
        timing = s.WhichOneof("timing")
        try:
            missed = MissedTicks(s.missed_ticks_policy or MissedTicks.RUN_ONCE)
        except ValueError:
            raise InvalidArgument([("schedule.missed_ticks_policy", "unknown value")]) from None
        schedule, created = await self._scheduler.create(
            name=s.name,
            cron=s.cron if timing == "cron" else None,
            interval_s=s.interval.ToNanoseconds() / 1e9 if timing == "interval" else None,
            time_zone=s.time_zone,
            template=spec_from_proto(s.task),
            missed=missed,
            paused=s.paused,
        )
        return pb.CreateScheduleResponse(schedule=schedule_to_proto(schedule), created=created)

    @unary_boundary
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        return pb.GetScheduleResponse(schedule=schedule_to_proto(self._scheduler.get(request.name)))

    @unary_boundary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        # Paged: ten templates with payloads near the 1 MiB limit passed the 8 MiB a
        # message may hold, and the whole listing failed for good.
        schedules, token = paging.page(
            self._scheduler.by_name(),
            lambda s: [s.name],
            schedule_to_proto,
            request.page_size,
            request.page_token,
            "ListSchedules",
        )
        return pb.ListSchedulesResponse(schedules=schedules, next_page_token=token)

    @unary_boundary
    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Context
    ) -> pb.UpdateScheduleResponse:
        schedule = self._scheduler.get(request.name)
        if request.HasField("paused"):
            schedule = await self._scheduler.set_paused(request.name, request.paused)
        return pb.UpdateScheduleResponse(schedule=schedule_to_proto(schedule))

    @unary_boundary
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        await self._scheduler.delete(request.name)
        return pb.DeleteScheduleResponse()
