"""Periodic schedules through the client, against a real coordinator and worker node."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from dtq_client import (
    Client,
    ClientConfig,
    InvalidArgument,
    MissedTicks,
    RetryPolicy,
    ScheduleExists,
    ScheduleNotFound,
    Task,
    TaskSpec,
    TaskState,
)
from tests.harness import wait_until

from .conftest import NOBODY, Cluster

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, total_s=10.0)
EVERY_SECOND = "* * * * * *"
# Timestamps cross the wire to the nanosecond; computed ones may be off by float rounding.
CLOCK_SLACK_S = 0.01


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    config = ClientConfig(address=cluster.address, timeout_s=5.0, retry=FAST_RETRY)
    with Client.from_config(config) as client:
        yield client


@pytest.fixture
def names(client: Client) -> Iterator[Callable[[], str]]:
    """Fresh schedule names, each deleted after the test (so that none keeps firing)."""
    made: list[str] = []

    def new() -> str:
        made.append(f"s-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield new
    for name in made:
        with contextlib.suppress(ScheduleNotFound):
            client.delete_schedule(name)


def fired_by(client: Client, name: str, queue: str | None = None) -> Callable[[], list[Task]]:
    """The tasks schedule ``name`` submitted (to ``queue``), oldest first."""
    prefix = f"schedule:{name}:"

    def tasks() -> list[Task]:
        listed = client.list_tasks(queue=queue, limit=1_000)
        return [t for t in reversed(listed) if (t.idempotency_key or "").startswith(prefix)]

    return tasks


def test_a_per_second_cron_fires_until_paused_then_resumes_and_is_deleted(
    client: Client, names: Callable[[], str], queue: str
) -> None:
    name = names()
    spec = TaskSpec("echo", {"tick": True}, priority=3)
    created = client.create_schedule(name, spec, cron=EVERY_SECOND)
    assert (created.name, created.cron, created.interval_s, created.time_zone) == (
        name,
        EVERY_SECOND,
        None,
        None,
    )
    assert created.task == spec
    assert (created.paused, created.missed_ticks) == (False, MissedTicks.RUN_ONCE)  # the default
    assert created.created_at is not None and created.next_fire_at is not None
    assert timedelta(0) < created.next_fire_at - created.created_at <= timedelta(seconds=1)
    # Creating it again is a no-op; another definition under its name is refused.
    again = client.create_schedule(name, spec, cron=EVERY_SECOND)
    assert (again.created_at, again.task) == (created.created_at, spec)
    with pytest.raises(ScheduleExists):
        client.create_schedule(name, spec, cron="*/5 * * * *")

    fired = fired_by(client, name, "default")
    wait_until(lambda: len(fired()) >= 2, 5, what="two ticks")
    ticks = fired()
    keys = [t.idempotency_key for t in ticks]
    assert len(set(keys)) == len(keys)  # one task per tick
    assert {(t.type, t.priority) for t in ticks} == {("echo", 3)}
    done = client.wait(ticks[0].id, timeout_s=10)  # the shared node runs them
    assert (done.state, done.result_value()) == (TaskState.SUCCEEDED, {"tick": True})
    [listed] = [s for s in client.list_schedules() if s.name == name]
    assert listed.fired_count >= 2 and listed.last_fire_at is not None

    paused = client.pause_schedule(name)
    assert paused.paused and client.get_schedule(name).paused
    count = len(fired())
    # A witness schedule shows that ticks keep firing meanwhile, for two seconds' worth.
    witness = names()
    client.create_schedule(witness, TaskSpec(NOBODY, queue=queue), cron=EVERY_SECOND)
    wait_until(lambda: len(fired_by(client, witness, queue)()) >= 2, 5, what="witness ticks")
    assert len(fired()) == count

    resumed = client.resume_schedule(name)
    assert not resumed.paused
    wait_until(lambda: len(fired()) > count, 5, what="a tick after resuming")

    client.delete_schedule(name)
    with pytest.raises(ScheduleNotFound):
        client.get_schedule(name)
    assert name not in [s.name for s in client.list_schedules()]
    assert len(fired()) > count  # its tasks stay
    with pytest.raises(ScheduleNotFound):
        client.delete_schedule(name)


def test_interval_and_time_zone_schedules_keep_their_definition(
    client: Client, names: Callable[[], str], queue: str
) -> None:
    spec = TaskSpec(
        NOBODY,
        b"\x00\x01",
        content_type="application/octet-stream",
        queue=queue,
        max_attempts=2,
        rate_key="tenant-7",
        execution_timeout_s=30,
    )
    hourly = client.create_schedule(
        names(), spec, interval_s=3600, missed_ticks="run_all", paused=True
    )
    assert (hourly.interval_s, hourly.cron, hourly.paused) == (3600.0, None, True)
    assert (hourly.missed_ticks, hourly.fired_count, hourly.last_fire_at) == (
        MissedTicks.RUN_ALL,
        0,
        None,
    )
    assert hourly.task == spec
    assert hourly.next_fire_at is not None and hourly.created_at is not None
    ahead_s = (hourly.next_fire_at - hourly.created_at).total_seconds()
    assert ahead_s == pytest.approx(3600, abs=CLOCK_SLACK_S)  # anchored on its creation

    paris = client.create_schedule(
        names(),
        TaskSpec(NOBODY, queue=queue),
        cron="30 9 * * *",
        time_zone="Europe/Paris",
        missed_ticks=MissedTicks.SKIP,
    )
    assert (paris.time_zone, paris.missed_ticks) == ("Europe/Paris", MissedTicks.SKIP)
    assert paris.next_fire_at is not None
    local = paris.next_fire_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert client.get_schedule(paris.name) == paris


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        ({"cron": "every tuesday"}, "schedule.cron"),
        ({"interval_s": 0.5}, "schedule.interval"),
        ({}, "schedule.timing"),
        ({"cron": "* * * * *", "time_zone": "Mars/Olympus"}, "schedule.time_zone"),
    ],
)
def test_bad_schedules_name_the_field(
    client: Client, timing: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.create_schedule("bad", TaskSpec("echo"), **timing)  # type: ignore[arg-type]
    assert [f for f, _ in info.value.field_violations] == [field]


def test_a_schedule_needs_one_timing_and_an_existing_name(client: Client) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.create_schedule("x", TaskSpec("echo"), cron="* * * * *", interval_s=60)
    with pytest.raises(InvalidArgument) as info:
        client.create_schedule("bad name", TaskSpec("echo", queue="bad queue"), interval_s=60)
    fields = [f for f, _ in info.value.field_violations]
    assert fields == ["schedule.name", "schedule.task.queue"]
    for call in (client.get_schedule, client.pause_schedule, client.resume_schedule):
        with pytest.raises(ScheduleNotFound):
            call("no-such-schedule")
