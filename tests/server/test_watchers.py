"""TaskWatchers on its own: wake-ups, and committed tasks handed to streams."""

from __future__ import annotations

import asyncio
from typing import Any

from dtq_server.models import TaskRecord, TaskState
from dtq_server.watchers import TaskWatchers


def _record(task_id: str, state: TaskState) -> Any:
    # Only identity matters here; a real TaskRecord has thirty-odd fields.
    return (task_id, state)


def test_a_notification_with_the_committed_task_hands_it_over_once() -> None:
    async def scenario() -> None:
        watchers = TaskWatchers()
        with watchers.subscribe("t1") as subscription:
            assert watchers.watched(["t1", "t2"]) == {"t1"}
            record: TaskRecord = _record("t1", TaskState.SUCCEEDED)
            watchers.notify(["t1"], {"t1": record})
            assert subscription.changed.is_set()
            assert subscription.take() is record
            assert subscription.take() is None  # read the store from now on

    asyncio.run(scenario())


def test_a_later_notification_without_the_task_drops_an_older_pushed_one() -> None:
    async def scenario() -> None:
        watchers = TaskWatchers()
        with watchers.subscribe("t1") as subscription:
            watchers.notify(["t1"], {"t1": _record("t1", TaskState.RUNNING)})
            watchers.notify(["t1"])  # e.g. a cancel: the stream must read the newer state
            assert subscription.changed.is_set()
            assert subscription.take() is None
        assert watchers.watched(["t1"]) == set()

    asyncio.run(scenario())
