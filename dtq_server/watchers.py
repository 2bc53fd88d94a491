"""Wakes WatchTask streams when their task changes.

Watchers re-read the task from the store when woken, so a notification carries
nothing and many changes between two reads collapse into one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class TaskWatchers:
    """task id -> events of the streams watching it."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the task changes, for the duration of the block."""
        event = asyncio.Event()
        self._events.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(task_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[task_id]

    def notify(self, task_ids: Iterable[str]) -> None:
        """The tasks changed (after commit)."""
        if not self._events:
            return
        for task_id in task_ids:
            for event in self._events.get(task_id, ()):
                event.set()
