"""Issue acceptance: a cron schedule ticking every second for 30 s, with two coordinator
restarts (kill -9) in between, fires each tick exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from dtq.v1 import schedule_service_pb2 as pb
from dtq.v1 import task_pb2, task_service_pb2
from dtq.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from dtq.v1.task_service_pb2_grpc import TaskServiceStub
from tests.harness import start_server, wait_until


def tick_times(address: str) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        stub = TaskServiceStub(channel)
        keys, token = [], ""
        while True:
            page = stub.ListTasks(
                task_service_pb2.ListTasksRequest(queue="ticks", page_size=1000, page_token=token),
                timeout=10,
            )
            keys += [t.idempotency_key for t in page.tasks]
            token = page.next_page_token
            if not token:
                break
    stamps = [key.removeprefix("schedule:every-second:") for key in keys]
    return [datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() for s in stamps]


def reached(deadline: float) -> Callable[[], bool]:
    """A predicate: the wall clock passed ``deadline``."""
    return lambda: time.time() >= deadline


@pytest.mark.timeout(120)
def test_every_second_for_30_s_across_two_kills_fires_each_tick_once(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        with grpc.insecure_channel(server.address) as channel:
            ScheduleServiceStub(channel).CreateSchedule(
                pb.CreateScheduleRequest(
                    schedule=pb.Schedule(
                        name="every-second",
                        cron="* * * * * *",
                        task=task_pb2.TaskSpec(type="echo", queue="ticks"),
                        missed_ticks_policy=pb.MISSED_TICKS_POLICY_RUN_ALL,
                    )
                ),
                timeout=10,
            )
        started = time.time()
        for restart in (1, 2):
            deadline = started + 10 * restart
            wait_until(reached(deadline), 15, interval_s=0.1)
            server.kill9()
            server = start_server(
                tmp_path / "data", name=f"restart-{restart}", listen=server.address
            )
        wait_until(lambda: time.time() - started >= 31, 15, interval_s=0.1)
        with grpc.insecure_channel(server.address) as channel:
            ScheduleServiceStub(channel).UpdateSchedule(
                pb.UpdateScheduleRequest(name="every-second", paused=True), timeout=10
            )
        ticks = tick_times(server.address)
    finally:
        server.stop()
    counts = Counter(ticks)
    assert max(counts.values()) == 1, "no tick fired twice"
    first, last = min(ticks), max(ticks)
    expected = {first + i for i in range(round(last - first) + 1)}
    assert set(ticks) == expected, f"missing ticks: {sorted(expected - set(ticks))}"
    assert len(ticks) >= 30
