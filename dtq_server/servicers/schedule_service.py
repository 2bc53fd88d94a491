"""ScheduleService: periodic tasks."""

from __future__ import annotations

import base64

from dtq.v1 import schedule_service_pb2 as pb
from dtq.v1 import schedule_service_pb2_grpc as pb_grpc
from dtq_server.coordinator import MAX_PAGE_BYTES, MAX_PAGE_SIZE
from dtq_server.errors import InvalidArgument
from dtq_server.scheduler import Scheduler
from dtq_server.schedules import MissedTicks
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
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument([("page_size", f"must be at most {MAX_PAGE_SIZE}")])
        after = _decode_token(request.page_token) if request.page_token else ""
        limit = request.page_size or MAX_PAGE_SIZE
        page = self._scheduler.page(after, limit + 1)  # one more: says whether more follow
        response = pb.ListSchedulesResponse()
        size = 0
        for schedule in page[:limit]:
            converted = schedule_to_proto(schedule)
            size += converted.ByteSize()
            if response.schedules and size > MAX_PAGE_BYTES:
                break  # it starts the next page
            response.schedules.append(converted)
        if len(response.schedules) < len(page):
            response.next_page_token = _encode_token(response.schedules[-1].name)
        return response

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


def _encode_token(last_name: str) -> str:
    return base64.urlsafe_b64encode(f"schedules:{last_name}".encode()).decode()


def _decode_token(token: str) -> str:
    try:
        kind, _, last_name = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    except (ValueError, UnicodeError):
        kind = ""
    if kind != "schedules" or not last_name:
        raise InvalidArgument([("page_token", "not a token from ListSchedules")])
    return last_name
