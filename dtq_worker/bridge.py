"""The hand-off from worker threads to the node's asyncio loop.

Worker threads never touch the ledger or the stream: they post events here,
and the loop applies them in batches. Only the first event after a drain wakes
the loop (``call_soon_threadsafe``); the rest ride along, so ten thousand
outcomes a second cost far fewer than ten thousand wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

from dtq_worker.context import TaskContext
from dtq_worker.models import Lease, Outcome
from dtq_worker.runner import Job


class EventKind(Enum):
    """What happened on a worker thread."""

    STARTED = 1
    PROGRESS = 2
    FINISHED = 3


class Event(NamedTuple):
    """One thing a worker thread reports."""

    kind: EventKind
    lease: Lease
    outcome: Outcome | None = None


class LoopBridge:
    """Collects worker-thread events and applies them on the loop, many per wake-up.

    Implements :class:`dtq_worker.runner.Reporter`; thread-safe.
    """

    def __init__(self, apply: Callable[[list[Event]], None]) -> None:
        self._apply = apply
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._scheduled = False
        self._early: list[Callable[[], None]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events to ``loop`` from now on, starting with callbacks posted before."""
        with self._lock:
            self._loop = loop
            early, self._early = self._early, []
        for callback in early:
            loop.call_soon_threadsafe(callback)

    def started(self, job: Job) -> None:
        """A handler is about to run."""
        self._post(Event(EventKind.STARTED, job.lease))

    def finished(self, job: Job, outcome: Outcome) -> None:
        """A job ended on this node."""
        self._post(Event(EventKind.FINISHED, job.lease, outcome))

    def progress(self, context: TaskContext) -> None:
        """A handler left new progress in its context."""
        self._post(Event(EventKind.PROGRESS, context.lease))

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop (once bound); dropped if the loop is gone."""
        with self._lock:
            loop = self._loop
            if loop is None:
                self._early.append(callback)  # e.g. stop() before the node's loop runs
                return
        # A closed loop means the node has exited: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    def _post(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        self.call_soon(self._drain)

    def _drain(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            self._scheduled = False
        self._apply(events)
