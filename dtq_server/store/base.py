"""The interface every store implements (SQLite, PostgreSQL).

Every write method returns only after its transaction is durably committed;
concurrent writes may share one commit. Writes that change a task are fenced
(see :class:`~dtq_server.updates.Transition`), so a late write from an old
attempt can never overwrite a newer one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from dtq_server.models import (
    ActiveTask,
    Assignment,
    DependencyEvents,
    GroupStatus,
    NewTask,
    QueuePlaces,
    QueueSettings,
    QueueStats,
    RateLimit,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskState,
)
from dtq_server.schedules import Firing, Schedule
from dtq_server.updates import LeaseGrant, Transition


class StoreCorrupt(RuntimeError):
    """The database exists but is not a usable DTQ database; the coordinator will not start."""


class Store(Protocol):
    """Durable task storage."""

    async def open(self) -> None:
        """Open (creating if missing) and check the store; raise if it is unusable."""

    async def close(self) -> None:
        """Finish pending writes and close."""

    async def load_active(
        self,
        states: tuple[TaskState, ...] = ...,
        after_seq: int = 0,
        limit: int = -1,
    ) -> list[ActiveTask]:
        """Tasks in ``states`` (default: queued, leased, running) with ``seq > after_seq``,
        in submission order, at most ``limit`` (-1: all). For start-up, in chunks."""

    async def insert(
        self,
        tasks: list[NewTask],
        batch: bool = False,
        leased: Mapping[str, LeaseGrant] | None = None,
        places: QueuePlaces | None = None,
    ) -> list[tuple[TaskRecord, bool]]:
        """Store new tasks in one commit: all or none.

        A task whose idempotency key exists returns the existing task with
        ``created=False``; raises IdempotencyKeyReused if that task's spec differs.
        A task with unfinished dependencies is stored WAITING. A task with a
        grant in ``leased`` (by task id) is stored already leased as attempt 1.
        ``places`` takes a place for each new unfinished task in a queue with a
        maximum depth as the insert runs; if one has no room left it raises
        QueueFull and nothing is stored (see :mod:`dtq_server.depth`).
        """

    async def lease(self, grants: list[LeaseGrant]) -> list[Assignment]:
        """Lease queued tasks; returns the assignments of those still queued."""

    async def apply(self, transitions: list[Transition]) -> list[bool]:
        """Apply fenced transitions in one commit; says which applied."""

    async def apply_and_read(
        self, transitions: list[Transition], read: Collection[str]
    ) -> tuple[list[bool], dict[str, TaskRecord]]:
        """:meth:`apply`, and the tasks ``read`` as that commit left them (for watchers)."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """One task, or None."""

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        """These tasks by id, in one read (missing ones left out)."""

    async def list_tasks(
        self, task_filter: TaskFilter, limit: int, before_seq: int | None, max_bytes: int
    ) -> TaskPage:
        """Tasks matching the filter, newest first, older than ``before_seq``: at most
        ``limit`` of them, and no more once they hold ``max_bytes`` of payloads, results
        and errors (at least one, however large)."""

    async def queue_stats(self, after: str = "", limit: int = 0) -> list[QueueStats]:
        """Counts per state of the queues holding tasks or having settings, ordered by
        name (in the database's order): those named after ``after``, the first ``limit``
        of them (0: all)."""

    async def queue_counts(self, name: str) -> QueueStats:
        """One queue's counts per state (all zero if it holds no task)."""

    async def check_writable(self) -> None:
        """Raise StoreUnavailable unless a write can commit now."""

    async def retry(self, task_ids: list[str]) -> list[ActiveTask]:
        """Requeue FAILED/CANCELLED tasks with a fresh budget; returns those requeued."""

    async def delete(
        self, task_filter: TaskFilter, limit: int, after_seq: int = 0
    ) -> tuple[int, int]:
        """Delete up to ``limit`` tasks matching the filter submitted after ``after_seq``,
        oldest first; returns how many, and the ``seq`` to go on after."""

    async def delete_expired(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks whose retention ended before ``now``."""

    async def save_queue(self, name: str, settings: QueueSettings) -> None:
        """Store a queue's settings."""

    async def load_queues(self) -> dict[str, QueueSettings]:
        """Every queue's stored settings."""

    async def declare_task_types(self, keys: Collection[tuple[str, str]]) -> None:
        """Record (queue, type) pairs a node declared (known ones are left as they are)."""

    async def load_task_types(self) -> set[tuple[str, str]]:
        """Every (queue, type) pair ever declared."""

    async def find_ids(self, task_filter: TaskFilter, limit: int) -> list[str]:
        """Ids of tasks matching the filter, oldest first."""

    async def create_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        """Store a schedule, or return the identical one (ScheduleExists if it differs)."""

    async def load_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""

    async def fire_schedules(
        self, firings: list[Firing]
    ) -> list[list[tuple[TaskRecord, bool]] | None]:
        """Insert each firing's tasks and advance its schedule, all in one commit.

        One answer per firing: None (and nothing written for it) if its schedule is no
        longer at ``expected_next``.
        """

    async def set_schedule_paused(self, name: str, paused: bool, next_at: float) -> bool:
        """Pause or resume a schedule; False if it does not exist."""

    async def delete_schedule(self, name: str) -> bool:
        """Delete a schedule; False if it did not exist."""

    def set_dependency_listener(self, listener: Callable[[DependencyEvents], None]) -> None:
        """Called after a commit that unblocked or cascaded waiting tasks."""

    async def group_status(self, group_id: str) -> GroupStatus | None:
        """Counts of a group's members, or None for an unknown group."""

    async def save_rate_limit(self, limit: RateLimit) -> None:
        """Store (or, with per_second <= 0, delete) a rate key's limit."""

    async def load_rate_limits(self, after: str = "", limit: int = 0) -> list[RateLimit]:
        """The stored rate limits ordered by key (in the database's order): those keyed
        after ``after``, the first ``limit`` of them (0: all)."""
