"""What a handler knows about the task it runs, and how it talks back."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any

from dtq.frozen import frozen
from dtq_worker.errors import TaskCancelled
from dtq_worker.models import Lease, Progress

MAX_PROGRESS_MESSAGE_BYTES = 1024
"""``TaskProgress.message`` is at most 1 KiB."""


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never splitting a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


class ProgressCell:
    """The latest progress of one task, kept until the node collects it.

    Handlers may report thousands of times a second; only the latest value
    matters, so reports overwrite each other here and the node is notified
    once per collected value rather than once per report.
    """

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Progress | None = None

    def put(self, progress: Progress) -> bool:
        """Store ``progress``; True if the cell was empty (the node must be told)."""
        with self._lock:
            was_empty = self._value is None
            self._value = progress
        return was_empty

    def take(self) -> Progress | None:
        """The latest value, emptying the cell."""
        with self._lock:
            value, self._value = self._value, None
        return value


NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a task submitted without any (one read-only mapping shared by all)."""


def _no_headers() -> Mapping[str, str]:
    return NO_HEADERS


def read_only_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` as a handler gets them: a read-only view, or :data:`NO_HEADERS` if empty."""
    return MappingProxyType(headers) if headers else NO_HEADERS


def _ignore(_: TaskContext) -> None:
    """Progress sink of a context nobody listens to (tests, direct calls)."""


class CancelCell:
    """Whether a task was cancelled, with an Event to wait on, built only when wanted.

    A ``threading.Event`` (a Condition around a lock) takes ~2 µs to build,
    about a tenth of a node's whole work on a no-op task, and most tasks are
    never cancelled nor waited on: the event is built by the first ``wait`` or
    ``set``, under one lock shared by every cell (taken only then).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: threading.Event | None = None

    @property
    def event(self) -> threading.Event:
        """The event, built on first use."""
        event = self._event
        if event is None:
            with _NEW_EVENT:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        return event

    def is_set(self) -> bool:
        """True once the event was set (False while nobody built it)."""
        event = self._event
        return event is not None and event.is_set()


_NEW_EVENT = threading.Lock()


class Deadline:
    """A mutable slot for a context's deadline (the context itself is read-only)."""

    __slots__ = ("at",)

    def __init__(self, at: float | None = None) -> None:
        self.at = at


@frozen(eq=False)
class TaskContext:
    """The running attempt, as its handler sees it. Safe to share with threads it starts.

    Read-only: a type checker refuses assigning its fields (at run time it is a
    plain slotted dataclass, built once per task on the node's busiest thread).
    """

    task_id: str
    """The task's id."""
    attempt: int
    """This attempt's number, starting at 1."""
    max_attempts: int
    """The task's attempt budget."""
    type: str
    """The task type the handler is registered under."""
    queue: str
    """The queue the task came from."""
    content_type: str
    """Media type of the payload as submitted (empty means JSON)."""
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    """The task's headers as submitted (``TaskSpec.headers``): application metadata such as
    a correlation id, a tenant or W3C trace context (``traceparent``); empty if none.

    Read-only (setting a key raises ``TypeError``); ``dict(ctx.headers)`` makes a copy
    to change or to return as (JSON) result.
    """
    cancel_cell: CancelCell = field(default_factory=CancelCell, repr=False)
    """Holds :attr:`cancel_event`."""
    deadline_cell: Deadline = field(default_factory=Deadline, repr=False)
    """Holds the deadline, which is known only once the handler starts."""
    on_progress: Callable[[TaskContext], None] = field(default=_ignore, repr=False)
    """Told (once per collected value) that new progress is waiting; set by the node."""
    progress_cell: ProgressCell = field(default_factory=ProgressCell, repr=False)
    """Where reports wait for the node."""
    resources: Any = field(default=None, repr=False)
    """What the registry's lifespan yielded (``@registry.lifespan``), shared by every
    task this process runs; None without a lifespan."""

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the task is cancelled or no longer ours; ``cancel_event.wait(s)`` sleeps
        interruptibly."""
        return self.cancel_cell.event

    @property
    def deadline(self) -> float | None:
        """A ``time.monotonic()`` by which the handler must finish, or None (no limit).

        Set when the handler starts, from the task's execution timeout (or the
        node's ``--task-timeout``). When it passes, the context is cancelled and
        the attempt fails TIMED_OUT.
        """
        return self.deadline_cell.at

    def seconds_left(self) -> float | None:
        """Time until the deadline (never negative), or None without one."""
        at = self.deadline_cell.at
        return None if at is None else max(0.0, at - time.monotonic())

    @property
    def lease(self) -> Lease:
        """The lease this attempt runs under."""
        return Lease(self.task_id, self.attempt)

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled; the handler should stop soon."""
        return self.cancel_cell.is_set()

    @property
    def is_last_attempt(self) -> bool:
        """True when a retryable failure now would fail the task for good."""
        return self.attempt >= self.max_attempts

    def raise_if_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the task was cancelled."""
        if self.cancel_cell.is_set():
            raise TaskCancelled(f"task {self.task_id} was cancelled")

    def report_progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100; negative or NaN means unknown). Thread-safe and cheap.

        Reports are coalesced: the coordinator sees the latest value at most a
        few times a second, so calling this in a tight loop is fine. The message
        is cut to 1 KiB.
        """
        if math.isnan(percent):
            percent = -1.0
        progress = Progress(
            min(float(percent), 100.0), truncate_utf8(message, MAX_PROGRESS_MESSAGE_BYTES)
        )
        if self.progress_cell.put(progress):
            self.on_progress(self)

    def take_progress(self) -> Progress | None:
        """For the node: the latest unreported progress, if any."""
        return self.progress_cell.take()
