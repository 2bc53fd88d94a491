"""Periodic schedules: timing rules (pure) and the ScheduleService on a real coordinator."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from dtq.v1 import schedule_service_pb2 as pb
from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from dtq_server.schedules import MissedTicks, Schedule, due_ticks, next_tick, tick_key
from dtq_server.validation import SpecInput
from tests.harness import InProcessCoordinator, wait_until

TEMPLATE = SpecInput("echo", "", b"{}", "", 0, "", None)
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def schedule(**fields: object) -> Schedule:
    values: dict[str, object] = {
        "name": "s", "cron": None, "interval_s": None, "time_zone": "", "template": TEMPLATE,
        "paused": False, "missed": MissedTicks.RUN_ONCE, "next_fire_at": T0,
        "last_fire_at": None, "fired_count": 0, "created_at": T0 - 0.5,
    }  # fmt: skip
    values.update(fields)
    return Schedule(**values)  # type: ignore[arg-type]


def test_cron_with_seconds_and_time_zone() -> None:
    every_second = schedule(cron="* * * * * *")
    assert next_tick(every_second, T0) == T0 + 1
    nine_paris = schedule(cron="0 9 * * *", time_zone="Europe/Paris")
    # 2026-01-01 09:00 in Paris is 08:00 UTC.
    assert next_tick(nine_paris, T0) == T0 + 8 * 3600


def test_interval_ticks_are_anchored_on_creation() -> None:
    every_10 = schedule(interval_s=10.0, created_at=T0)
    assert next_tick(every_10, T0) == T0 + 10
    assert next_tick(every_10, T0 + 25) == T0 + 30


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        (MissedTicks.RUN_ALL, [T0, T0 + 1, T0 + 2, T0 + 3]),
        (MissedTicks.RUN_ONCE, [T0 + 3]),
        (MissedTicks.SKIP, [T0 + 3]),
    ],
)
def test_missed_ticks_policies(policy: MissedTicks, fired: list[float]) -> None:
    down = schedule(cron="* * * * * *", missed=policy)
    ticks, following = due_ticks(down, now=T0 + 3.5)
    assert (ticks, following) == (fired, T0 + 4)
    # Every 10 s, down for 35 s: even the latest missed tick is 5 s old.
    slow = schedule(interval_s=10.0, created_at=T0 - 10, missed=policy)
    ticks, following = due_ticks(slow, now=T0 + 35)
    expected = {
        MissedTicks.RUN_ALL: [T0, T0 + 10, T0 + 20, T0 + 30],
        MissedTicks.RUN_ONCE: [T0 + 30],
        MissedTicks.SKIP: [],
    }[policy]
    assert (ticks, following) == (expected, T0 + 40)


def test_a_cron_without_a_tick_ahead_answers_none() -> None:
    """croniter raised for these (no date matches, or its year field has passed): a
    CreateSchedule answered INTERNAL, and a schedule reaching its last tick never
    fired it (the scheduler's round crashed on it every minute)."""
    assert next_tick(schedule(cron="0 0 31 2 *"), T0) is None  # no 31 February
    new_year_2026 = "0 0 1 1 * 0 2026"  # seconds, then year, last
    assert next_tick(schedule(cron=new_year_2026), T0 - 10) == T0
    assert next_tick(schedule(cron=new_year_2026), T0) is None
    # Its last tick is due: it fires, and nothing follows.
    assert due_ticks(schedule(cron=new_year_2026), now=T0 + 5) == ([T0], None)
    # The last seconds of 2025, missed: the policy picks among them, nothing follows.
    last_seconds = schedule(
        cron="* * * * * * 2025", next_fire_at=T0 - 3, missed=MissedTicks.RUN_ALL
    )
    assert due_ticks(last_seconds, now=T0 + 60) == ([T0 - 3, T0 - 2, T0 - 1], None)
    once = dataclasses.replace(last_seconds, missed=MissedTicks.RUN_ONCE)
    assert due_ticks(once, now=T0 + 60) == ([T0 - 1], None)
    skip = dataclasses.replace(last_seconds, missed=MissedTicks.SKIP)
    assert due_ticks(skip, now=T0 + 60) == ([], None)


def test_on_time_tick_fires_once() -> None:
    ticks, following = due_ticks(schedule(cron="* * * * * *"), now=T0 + 0.1)
    assert (ticks, following) == ([T0], T0 + 1)
    assert tick_key("s", T0) == "schedule:s:2026-01-01T00:00:00.000000Z"


def seconds(s: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def test_schedule_service_lifecycle(coordinator: InProcessCoordinator) -> None:
    with grpc.insecure_channel(coordinator.address) as channel:
        schedules, tasks = ScheduleServiceStub(channel), TaskServiceStub(channel)
        spec = pb.Schedule(
            name="tick", cron="* * * * * *",
            task=task_pb2.TaskSpec(
                type="echo", queue="ticks", priority=3, headers={"tenant": "acme"}
            ),
        )  # fmt: skip
        created = schedules.CreateSchedule(pb.CreateScheduleRequest(schedule=spec), timeout=10)
        assert created.created and created.schedule.next_fire_time.seconds > 0
        assert dict(created.schedule.task.headers) == {"tenant": "acme"}
        again = schedules.CreateSchedule(pb.CreateScheduleRequest(schedule=spec), timeout=10)
        assert not again.created
        spec.cron = "*/5 * * * *"
        with pytest.raises(grpc.RpcError) as info:
            schedules.CreateSchedule(pb.CreateScheduleRequest(schedule=spec), timeout=10)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS

        def fired() -> list[task_pb2.Task]:
            request = task_service_pb2.ListTasksRequest(queue="ticks")
            return list(tasks.ListTasks(request, timeout=10).tasks)

        wait_until(lambda: len(fired()) >= 2, 5, what="two ticks")
        assert all(t.idempotency_key.startswith("schedule:tick:") for t in fired())
        assert all(t.priority == 3 and dict(t.headers) == {"tenant": "acme"} for t in fired())
        paused = schedules.UpdateSchedule(
            pb.UpdateScheduleRequest(name="tick", paused=True), timeout=10
        ).schedule
        assert paused.paused
        count = len(fired())
        time.sleep(1.5)  # the scenario: time passes while paused
        assert len(fired()) <= count + 1  # at most a tick already in flight
        listed = schedules.ListSchedules(pb.ListSchedulesRequest(), timeout=10).schedules
        assert [s.name for s in listed] == ["tick"]
        assert listed[0].fired_count >= 2
        schedules.DeleteSchedule(pb.DeleteScheduleRequest(name="tick"), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            schedules.GetSchedule(pb.GetScheduleRequest(name="tick"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "bad name", "cron": "* * * * *"}, "schedule.name"),
        ({"name": "x", "cron": "not cron"}, "schedule.cron"),
        ({"name": "x", "cron": "0 0 31 2 *"}, "schedule.cron"),  # never: no 31 February
        ({"name": "x", "cron": "0 0 1 1 * 0 2020"}, "schedule.cron"),  # its year has passed
        ({"name": "x", "interval": seconds(0.1)}, "schedule.interval"),
        ({"name": "x"}, "schedule.timing"),
        ({"name": "x", "cron": "* * * * *", "time_zone": "Mars/Base"}, "schedule.time_zone"),
        # ZoneInfo raises OSError for these (INTERNAL, with a traceback, until checked):
        ({"name": "x", "cron": "* * * * *", "time_zone": "America"}, "schedule.time_zone"),
        ({"name": "x", "cron": "* * * * *", "time_zone": "x" * 300}, "schedule.time_zone"),
        ({"name": "x", "cron": "* * * * *", "time_zone": "Europe/Paris\x00"}, "schedule.time_zone"),
    ],
)
def test_bad_schedules_name_the_field(
    coordinator: InProcessCoordinator, fields: dict[str, object], field: str
) -> None:
    with grpc.insecure_channel(coordinator.address) as channel:
        spec = pb.Schedule(task=task_pb2.TaskSpec(type="echo"), **fields)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as info:
            ScheduleServiceStub(channel).CreateSchedule(
                pb.CreateScheduleRequest(schedule=spec), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")


def test_a_stop_that_lands_as_the_schedules_change_still_stops_the_scheduler(
    coordinator: InProcessCoordinator,
) -> None:
    """asyncio.wait_for on 3.11 returned the event's result when a cancel landed as the
    event was set, swallowing the cancel: the coordinator's stop then waited forever."""

    async def race() -> bool:
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == "dtq-scheduler"]
        coordinator.server.coordinator.scheduler._changed.set()  # as a create or pause does
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        return task.cancelled()

    assert coordinator.call(race())


def test_a_schedule_whose_memory_is_behind_the_store_keeps_ticking(
    coordinator: InProcessCoordinator,
) -> None:
    """Memory older than the store (a CreateSchedule answered "exists" with the row read
    before a fire committed) made every fire fail its fence, for ever."""
    with grpc.insecure_channel(coordinator.address) as channel:
        schedules, tasks = ScheduleServiceStub(channel), TaskServiceStub(channel)
        spec = pb.Schedule(name="behind", cron="* * * * * *", task=task_pb2.TaskSpec(
            type="echo", queue="behind"))  # fmt: skip
        schedules.CreateSchedule(pb.CreateScheduleRequest(schedule=spec), timeout=10)

        def fired() -> int:
            request = task_service_pb2.ListTasksRequest(queue="behind")
            return len(tasks.ListTasks(request, timeout=10).tasks)

        wait_until(lambda: fired() >= 1, 5, what="a first tick")
        scheduler = coordinator.server.coordinator.scheduler

        def set_behind() -> None:
            current = scheduler.get("behind")
            stale = dataclasses.replace(current, next_fire_at=current.next_fire_at - 1.0)
            scheduler._keep(stale)  # as the racing "exists" answer left it

        coordinator.run(set_behind)
        before = fired()
        wait_until(lambda: fired() >= before + 2, 5, what="two more ticks")
