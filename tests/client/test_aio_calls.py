"""The asyncio client's cluster, schedule and bulk calls, against a real coordinator.

They run the same plans as the blocking client's (tests/client/test_cluster.py,
test_schedules.py, test_lifecycle.py test those in depth); here each async
call is shown to reach the coordinator and bring back the real outcome.
Scenarios run as in test_aio.py: a fresh event loop each, bounded in time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from dtq_client import (
    AsyncClient,
    CancelCounts,
    Client,
    InvalidArgument,
    MissedTicks,
    NodeNotFound,
    NodeState,
    QueueFull,
    RateLimit,
    RetryResult,
    ScheduleExists,
    ScheduleNotFound,
    Task,
    TaskNotFound,
    TaskSpec,
    TaskState,
)

from .conftest import NOBODY, Cluster, demo_node
from .test_aio import connect, run

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

EVERY_SECOND = "* * * * * *"


async def eventually(probe: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """Await ``probe`` until it answers something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := await probe()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def in_state(client: AsyncClient, task_id: str, state: TaskState) -> Callable[[], Awaitable[bool]]:
    """A probe for :func:`eventually`: is the task in ``state``?"""

    async def probe() -> bool:
        return (await client.get(task_id)).state is state

    return probe


def test_async_client_has_every_call_of_client() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(Client) == public(AsyncClient)
    # submitter() is for `async with`: it returns the AsyncSubmitter, whose calls are awaited.
    for name in public(AsyncClient) - {"config", "from_config", "submitter"}:
        method = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


# --- the cluster ---------------------------------------------------------------------------


def test_nodes_bulk_cancel_of_a_running_task_and_drain(
    cluster: Cluster, queue: str, tmp_path: Path
) -> None:
    node_id = f"node-{queue}"

    async def scenario() -> None:
        async with connect(cluster.address) as client:
            listed = {n.node_id: n for n in await client.nodes()}
            assert listed[cluster.node_id].state is NodeState.ACTIVE
            mine = listed[node_id]
            assert (mine.state, mine.queues, mine.slots) == (NodeState.ACTIVE, (queue,), 1)
            assert mine.task_types == ("add", "echo", "fail", "sleep")

            # A running task is asked to stop, a queued one is cancelled at once.
            running = await client.submit("sleep", {"seconds": 30}, queue=queue)
            await eventually(in_state(client, running.id, TaskState.RUNNING), 10, "the task to run")
            queued = await client.submit("sleep", {"seconds": 30}, queue=queue)  # no free slot
            counts = await client.cancel_tasks(queue=queue, type="sleep")
            assert counts == CancelCounts(cancelled=1, cancel_requested=1)
            assert (await client.get(queued.id)).state is TaskState.CANCELLED
            assert (await client.wait(running.id, timeout_s=10)).state is TaskState.CANCELLED

            assert (await client.drain(node_id)).state is NodeState.DRAINING
            with pytest.raises(NodeNotFound):
                await client.drain("ghost")

    # No prefetch: the second task stays queued rather than buffered on the node.
    node = demo_node(cluster.address, tmp_path, node_id, queues=queue, threads=1, prefetch=0)
    with node as proc:
        run(scenario(), timeout_s=30)
        assert proc.wait(10) == 0, proc.log()  # drained: it finished and left

    async def after() -> None:
        async with connect(cluster.address) as client:
            assert node_id not in [n.node_id for n in await client.nodes()]
            [gone] = [n for n in await client.nodes(include_gone=True) if n.node_id == node_id]
            assert gone.state is NodeState.LEFT

    run(after())


def test_each_queue_setting_is_reflected_by_queues(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            await client.submit(NOBODY, queue=queue)

            async def listed() -> tuple[object, ...]:
                [stats] = [q for q in await client.queues() if q.name == queue]
                return (stats.paused, stats.max_running, stats.rate_limit, stats.max_depth)

            assert (await client.pause_queue(queue)).paused
            assert await listed() == (True, 0, 0.0, 0)
            assert not (await client.resume_queue(queue)).paused
            assert (await client.set_queue_limit(queue, 3)).max_running == 3
            assert (await client.set_queue_rate_limit(queue, 2.5)).rate_limit == 2.5
            stats = await client.set_queue_max_depth(queue, 1)
            assert (stats.max_depth, stats.queued) == (1, 1)
            assert await listed() == (False, 3, 2.5, 1)
            with pytest.raises(QueueFull):  # the one queued task fills it
                await client.submit(NOBODY, queue=queue)
            for update in (client.set_queue_limit, client.set_queue_max_depth):
                await update(queue, 0)
            await client.set_queue_rate_limit(queue, 0)
            assert await listed() == (False, 0, 0.0, 0)
            with pytest.raises(InvalidArgument) as info:
                await client.set_queue_limit("bad queue", 100_001)
            assert [field for field, _ in info.value.field_violations] == ["name", "max_running"]
            for update, name in ((client.set_queue_limit, "max_running"),
                                 (client.set_queue_max_depth, "max_depth")):  # fmt: skip
                with pytest.raises(ValueError, match=f"{name} must be 0 to 4,294,967,295"):
                    await update(queue, 2**32)  # more than the request can carry

    run(scenario())


def test_rate_limits_are_set_listed_and_deleted(cluster: Cluster) -> None:
    key = f"tenant-{uuid.uuid4().hex[:12]}"
    other = f"{key}-b"

    async def mine(client: AsyncClient) -> list[RateLimit]:
        return [limit for limit in await client.rate_limits() if limit.key.startswith(key)]

    async def scenario() -> None:
        async with connect(cluster.address) as client:
            try:
                assert await client.set_rate_limit(key, 2.5, burst=3) == RateLimit(key, 2.5, 3)
                assert await client.set_rate_limit(other, 10) == RateLimit(other, 10.0, 10)
                assert await mine(client) == [RateLimit(key, 2.5, 3), RateLimit(other, 10.0, 10)]
                await client.delete_rate_limit(other)
                assert await mine(client) == [RateLimit(key, 2.5, 3)]
                await client.delete_rate_limit(other)  # nothing to delete: not an error
                with pytest.raises(ValueError, match="delete_rate_limit"):
                    await client.set_rate_limit(key, 0)
                with pytest.raises(InvalidArgument) as info:
                    await client.set_rate_limit("", -1)
                assert [field for field, _ in info.value.field_violations] == ["key", "per_second"]
            finally:
                await client.delete_rate_limit(key)
                await client.delete_rate_limit(other)
            assert await mine(client) == []
            assert await client.health() == "SERVING"

    run(scenario())


# --- schedules -----------------------------------------------------------------------------


def test_schedules_are_created_read_paused_resumed_and_deleted(
    cluster: Cluster, queue: str
) -> None:
    name = f"s-{uuid.uuid4().hex[:12]}"
    spec = TaskSpec(NOBODY, {"tick": True}, queue=queue)
    prefix = f"schedule:{name}:"

    async def scenario() -> None:
        async with connect(cluster.address) as client:

            async def fired() -> list[Task]:
                listed = await client.list_tasks(queue=queue, limit=1_000)
                return [t for t in listed if (t.idempotency_key or "").startswith(prefix)]

            count = 0
            try:
                created = await client.create_schedule(
                    name, spec, cron=EVERY_SECOND, missed_ticks="skip"
                )
                assert (created.name, created.cron, created.task) == (name, EVERY_SECOND, spec)
                assert (created.paused, created.missed_ticks) == (False, MissedTicks.SKIP)
                again = await client.create_schedule(
                    name, spec, cron=EVERY_SECOND, missed_ticks="skip"
                )
                assert again.created_at == created.created_at  # idempotent by definition
                with pytest.raises(ScheduleExists):
                    await client.create_schedule(name, spec, interval_s=60)
                assert (await client.get_schedule(name)).created_at == created.created_at
                assert name in [s.name for s in await client.list_schedules()]
                ticks = await eventually(fired, 5, "a tick")
                assert ticks[0].payload_value() == {"tick": True}

                assert (await client.pause_schedule(name)).paused
                assert (await client.get_schedule(name)).paused
                count = len(await fired())
                resumed = await client.resume_schedule(name)
                assert not resumed.paused and not (await client.get_schedule(name)).paused

                async def fired_again() -> bool:
                    return len(await fired()) > count

                await eventually(fired_again, 5, "a tick after resuming")
            finally:
                await client.delete_schedule(name)
            with pytest.raises(ScheduleNotFound):
                await client.get_schedule(name)
            assert name not in [s.name for s in await client.list_schedules()]
            assert len(await fired()) > count  # its tasks stay
            for call in (client.delete_schedule, client.pause_schedule, client.resume_schedule):
                with pytest.raises(ScheduleNotFound):
                    await call(name)
            with pytest.raises(ValueError, match="not both"):
                await client.create_schedule(name, spec, cron=EVERY_SECOND, interval_s=60)
            with pytest.raises(InvalidArgument) as info:
                await client.create_schedule("bad name", spec, interval_s=60)
            assert [field for field, _ in info.value.field_violations] == ["schedule.name"]

    run(scenario())


# --- bulk cancel, retry, purge -------------------------------------------------------------


def test_cancel_tasks_retry_and_purge_change_the_tasks_states(cluster: Cluster, queue: str) -> None:
    async def scenario() -> None:
        async with connect(cluster.address) as client:
            dead = await client.submit(NOBODY, queue=queue, schedule_to_start_timeout_s=0.1)
            await eventually(in_state(client, dead.id, TaskState.FAILED), 10, "the dead letter")
            dropped = [await client.submit(NOBODY, queue=queue) for _ in range(3)]
            other = await client.submit("other.type", queue=queue)
            assert await client.cancel_tasks(queue=queue, type=NOBODY) == (3, 0)
            assert {(await client.get(t.id)).state for t in dropped} == {TaskState.CANCELLED}
            assert (await client.get(other.id)).state is TaskState.QUEUED

            assert await client.retry(queue=queue) == RetryResult(retried=1)  # FAILED by default
            assert (await client.get(dead.id)).state is TaskState.QUEUED
            skipped = (other.id, dead.id)  # not failed or cancelled
            retried = await client.retry([dropped[0].id, *skipped])
            assert retried == RetryResult(retried=1, skipped_task_ids=skipped)
            assert (await client.get(dropped[0].id)).state is TaskState.QUEUED
            by_filter = await client.retry(queue=queue, type=NOBODY, state=TaskState.CANCELLED)
            assert by_filter == RetryResult(retried=2)
            assert {(await client.get(t.id)).state for t in dropped} == {TaskState.QUEUED}

            assert await client.cancel_tasks(queue=queue, state="queued") == (5, 0)
            assert await client.purge("succeeded", queue=queue) == 0
            assert await client.purge(TaskState.CANCELLED, queue=queue, type=NOBODY) == 4
            assert [t.id for t in await client.list_tasks(queue=queue)] == [other.id]
            with pytest.raises(TaskNotFound):
                await client.get(dead.id)

    run(scenario())


def test_bulk_calls_check_their_arguments(cluster: Cluster, queue: str) -> None:
    some_id = "0b6c3b4e-2f1c-4c35-9a57-6a4f3e1d2c10"

    async def scenario() -> None:
        async with connect(cluster.address) as client:
            with pytest.raises(ValueError, match="not both"):
                await client.retry([some_id], queue=queue)
            with pytest.raises(TypeError):
                await client.retry(some_id)
            with pytest.raises(InvalidArgument):
                await client.retry()
            with pytest.raises(InvalidArgument) as info:
                await client.retry(["abc"])
            assert [field for field, _ in info.value.field_violations] == ["task_ids[0]"]
            with pytest.raises(InvalidArgument) as info:
                await client.cancel_tasks()
            assert [field for field, _ in info.value.field_violations] == ["queue"]
            with pytest.raises(InvalidArgument) as info:
                await client.purge("queued", queue=queue)
            assert [field for field, _ in info.value.field_violations] == ["state"]

    run(scenario())
