"""Firing schedules in numbers and in trouble: ticks due together share commits, a tick
whose key another task holds is skipped, a store outage is waited out, not spun on, a
cron's last tick fires and ends its schedule, one schedule's bug holds back no other."""

from __future__ import annotations

import functools
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from dtq_client import Client, FailedPrecondition, TaskSpec
from dtq_server import scheduler, schedules
from dtq_server.errors import StoreUnavailable
from dtq_server.scheduler import FIRE_BATCH
from dtq_server.schedules import MissedTicks, Schedule, next_tick, tick_key
from dtq_server.validation import SpecInput
from tests.harness import InProcessCoordinator, wait_until

EVERY_SECOND = "* * * * * *"  # six fields: seconds last


class FireCalls:
    """Records the coordinator's ``fire_schedules`` calls (and can fail them, as a
    store that is down does), wrapping the real store's method."""

    def __init__(self, coordinator: InProcessCoordinator) -> None:
        self.sizes: list[int] = []
        self.down = threading.Event()
        self._lock = threading.Lock()
        store = coordinator.server.coordinator.scheduler._store
        real = store.fire_schedules

        async def fire_schedules(firings: list[Any]) -> Any:
            with self._lock:
                self.sizes.append(len(firings))
            if self.down.is_set():
                raise StoreUnavailable("the store could not commit: disk I/O error")
            return await real(firings)

        coordinator.run(lambda: setattr(store, "fire_schedules", fire_schedules))

    def count(self) -> int:
        with self._lock:
            return len(self.sizes)


@pytest.fixture
def client(coordinator: InProcessCoordinator) -> Iterator[Client]:
    with Client(coordinator.address) as c:
        yield c


def tick_keys(client: Client, queue: str) -> list[str]:
    return [t.idempotency_key or "" for t in client.iter_tasks(queue=queue)]


def ticked(client: Client, queue: str, count: int) -> bool:
    return len(tick_keys(client, queue)) >= count


def test_schedules_due_together_fire_in_shared_commits(
    coordinator: InProcessCoordinator, client: Client
) -> None:
    """One commit per schedule made thousands of schedules ticking at the same second
    fire seconds late (and each wake-up looked at every schedule)."""
    calls = FireCalls(coordinator)
    count = FIRE_BATCH + 150
    for i in range(count):
        client.create_schedule(f"s{i}", TaskSpec("echo", queue="many"), cron=EVERY_SECOND)

    def every_one_fired() -> bool:
        return {k.split(":")[1] for k in tick_keys(client, "many")} == {
            f"s{i}" for i in range(count)
        }

    wait_until(every_one_fired, 15, what="a tick of every schedule")
    keys = tick_keys(client, "many")
    assert len(keys) == len(set(keys))  # a tick fires once
    assert max(calls.sizes) <= FIRE_BATCH
    # Creating them takes a fraction of a second: most share a tick, and its commits.
    assert max(calls.sizes) >= 50, calls.sizes
    assert calls.count() < count / 5, calls.sizes


def test_a_tick_whose_key_another_task_holds_is_skipped(
    coordinator: InProcessCoordinator, client: Client
) -> None:
    """A client's task holding a tick's idempotency key made the store refuse the fire:
    the scheduler's loop ended on the error, and no schedule ever fired again."""
    squatted = client.create_schedule("squatted", TaskSpec("echo", queue="sq"), cron=EVERY_SECOND)
    client.create_schedule("bystander", TaskSpec("echo", queue="by"), cron=EVERY_SECOND)
    assert squatted.next_fire_at is not None
    taken = squatted.next_fire_at.timestamp() + 2
    key = tick_key("squatted", taken)
    squatter = client.submit("other.work", 1, queue="elsewhere", idempotency_key=key)
    wait_until(lambda: len(tick_keys(client, "sq")) >= 5, 15, what="ticks past the taken one")
    wait_until(lambda: len(tick_keys(client, "by")) >= 5, 15, what="the bystander's ticks")
    fired = tick_keys(client, "sq")
    assert key not in fired  # skipped: the tick before it and the one after it fired
    assert {tick_key("squatted", taken - 1), tick_key("squatted", taken + 1)} <= set(fired)
    assert client.get(squatter.id).type == "other.work"  # the squatter's task is untouched


def test_a_store_outage_is_waited_out_not_spun_on(
    coordinator: InProcessCoordinator, client: Client
) -> None:
    """A due schedule whose fire failed stayed due, and the loop tried it again at once:
    a busy loop on the coordinator's event loop for as long as the store was down."""
    calls = FireCalls(coordinator)
    client.create_schedule("patient", TaskSpec("echo", queue="patient"), cron=EVERY_SECOND)
    wait_until(lambda: len(tick_keys(client, "patient")) >= 1, 10, what="a first tick")
    calls.down.set()
    failing_from = calls.count()
    wait_until(lambda: calls.count() >= failing_from + 3, 10, what="three failed fires")
    calls.down.clear()
    failed = calls.count() - failing_from
    assert failed <= 4, f"{failed} fires while the store was down: retried without pause"
    before = len(tick_keys(client, "patient"))
    wait_until(lambda: len(tick_keys(client, "patient")) >= before + 2, 10, what="ticks again")


def test_a_crons_last_tick_fires_and_ends_its_schedule(
    make_coordinator: Callable[..., InProcessCoordinator],
) -> None:
    """A cron with a year field has a last tick. croniter raised for the tick after it:
    the tick never fired, and the scheduler's round crashed on it every minute, holding
    back every schedule due in the same round."""
    coordinator = make_coordinator()
    with Client(coordinator.address) as client:
        last = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
        once = f"{last.minute} {last.hour} {last.day} {last.month} * {last.second} {last.year}"
        client.create_schedule("once", TaskSpec("echo", queue="once"), cron=once)
        client.create_schedule("bystander", TaskSpec("echo", queue="by"), cron=EVERY_SECOND)
        wait_until(lambda: client.get_schedule("once").paused, 10, what="the schedule to end")
        ended = client.get_schedule("once")
        assert (ended.fired_count, ended.last_fire_at) == (1, last)
        assert tick_keys(client, "once") == [tick_key("once", last.timestamp())]
        with pytest.raises(FailedPrecondition) as refused:
            client.resume_schedule("once")
        assert refused.value.reason == "SCHEDULE_ENDED"
        assert "no tick in the next 50 years" in str(refused.value)
        by_then = len(tick_keys(client, "by"))
        wait_until(lambda: len(tick_keys(client, "by")) >= by_then + 2, 10, what="the bystander")
    coordinator.stop()

    again = make_coordinator()  # the same files: it ended for good
    with Client(again.address) as client:
        assert client.get_schedule("once").paused
        assert client.get_schedule("once").fired_count == 1
        assert len(tick_keys(client, "once")) == 1


def test_a_schedule_whose_timing_fails_holds_back_no_other(
    coordinator: InProcessCoordinator, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schedules due together are fired together: one whose ticks could not be worked
    out made the whole round fail, and every schedule in it waited a minute."""
    real = schedules.due_ticks

    def due_ticks(schedule: Schedule, now: float) -> tuple[list[float], float | None]:
        if schedule.name.startswith("broken"):
            raise RuntimeError("a bug in the timing of one schedule")
        return real(schedule, now)

    monkeypatch.setattr(scheduler, "due_ticks", due_ticks)  # the coordinator is in-process
    for name in ("broken", "fine-1", "fine-2"):
        client.create_schedule(name, TaskSpec("echo", queue=name), cron=EVERY_SECOND)
    for name in ("fine-1", "fine-2"):
        wait_until(functools.partial(ticked, client, name, 3), 10, what=f"{name}'s ticks")
    assert tick_keys(client, "broken") == []


@pytest.mark.parametrize("seed", range(3))
def test_remembered_cron_ticks_are_croniters(seed: int) -> None:
    """next_tick keeps parsed expressions and past answers; they must be croniter's."""
    rng = random.Random(seed)
    expressions = ["* * * * * */5", "30 6 * * *", "*/7 3-5 * * 1-5", "0 0 29 2 *", "0 2 * * 0"]
    zones = ["", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]
    for _ in range(500):
        cron, zone = rng.choice(expressions), rng.choice(zones)
        on_a_minute = float(rng.randrange(1_600_000_000, 1_900_000_000, 60))
        after = rng.choice([rng.uniform(1.6e9, 1.9e9), on_a_minute])
        template = SpecInput("echo", "", b"{}", "", 0, "", None)
        s = Schedule(
            name="s", cron=cron, interval_s=None, time_zone=zone, template=template,
            paused=False, missed=MissedTicks.RUN_ONCE, next_fire_at=after,
            last_fire_at=None, fired_count=0, created_at=after,
        )  # fmt: skip
        base = datetime.fromtimestamp(after, ZoneInfo(zone) if zone else UTC)
        expected = croniter(cron, base).get_next(datetime).timestamp()
        assert next_tick(s, after) == expected, (cron, zone, after)
        assert next_tick(s, after) == expected  # asked again: the remembered answer


def test_a_tick_that_cannot_fire_says_why_until_one_does(
    coordinator: InProcessCoordinator, client: Client
) -> None:
    """A schedule the coordinator could not fire (the store down; a task its template
    depends on gone, below) failed every try with only a warning in the coordinator's
    log: clients saw a next tick in the past and no reason."""
    calls = FireCalls(coordinator)
    calls.down.set()
    client.create_schedule("reports", TaskSpec("echo", queue="reports"), cron=EVERY_SECOND)
    failing: str = wait_until(
        lambda: client.get_schedule("reports").last_error or "", 10, what="the failure shown"
    )
    assert "could not commit" in failing
    shown = client.get_schedule("reports")
    assert shown.fired_count == 0
    assert shown.last_error_at is not None
    assert [s.last_error for s in client.list_schedules()] == [failing]
    client.create_schedule("reports", TaskSpec("echo", queue="reports"), cron=EVERY_SECOND)
    assert client.get_schedule("reports").last_error == failing  # the same again: it stands
    calls.down.clear()  # the next try fires
    wait_until(lambda: client.get_schedule("reports").fired_count > 0, 10, what="a tick")
    fired = client.get_schedule("reports")
    assert (fired.last_error, fired.last_error_at) == (None, None)


def test_a_template_whose_dependency_is_gone_says_so(client: Client) -> None:
    gone = str(uuid.uuid4())  # a task purged since, say
    spec = TaskSpec("echo", queue="orphans", depends_on=[gone])
    client.create_schedule("orphaned", spec, cron=EVERY_SECOND)
    failing: str = wait_until(
        lambda: client.get_schedule("orphaned").last_error or "", 10, what="the failure shown"
    )
    assert failing == "task.depends_on[0]: no task with that id"
    assert client.pause_schedule("orphaned").last_error is None  # paused: nothing to fire
    assert client.get_schedule("orphaned").fired_count == 0
