"""Wakes WatchTask streams when their task changes.

A notification may carry the task as it was just committed (the node-update
path reads it back inside its own commit when someone watches): the stream
sends that without another trip to the store. Otherwise the stream re-reads
the task, so many changes between two reads collapse into one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from dtq_server.models import TaskRecord


class Subscription:
    """One stream's view of one task: a wake-up and, maybe, the committed task."""

    __slots__ = ("changed", "record")

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.record: TaskRecord | None = None
        """The task as last committed, when the notification carried it."""

    def take(self) -> TaskRecord | None:
        """The committed task the last notification carried (once), or None: read it."""
        record, self.record = self.record, None
        return record


class TaskWatchers:
    """task id -> subscriptions of the streams watching it."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[Subscription]:
        """A subscription to the task's changes, for the duration of the block."""
        subscription = Subscription()
        self._subscriptions.setdefault(task_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscriptions = self._subscriptions.get(task_id)
            if subscriptions is not None:
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscriptions[task_id]

    def watched(self, task_ids: Iterable[str]) -> set[str]:
        """Which of these tasks someone watches."""
        if not self._subscriptions:
            return set()
        return {task_id for task_id in task_ids if task_id in self._subscriptions}

    def notify(
        self, task_ids: Iterable[str], records: Mapping[str, TaskRecord] | None = None
    ) -> None:
        """The tasks changed (after commit); ``records`` holds some of them as committed."""
        if not self._subscriptions:
            return
        for task_id in task_ids:
            record = None if records is None else records.get(task_id)
            for subscription in self._subscriptions.get(task_id, ()):
                # Without a record the stream must read: an older pushed one is stale now.
                subscription.record = record
                subscription.changed.set()
