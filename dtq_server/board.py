"""The in-memory board of unfinished tasks: what is ready, what waits for a retry.

The store is the durable record; the board is the coordinator's index over it,
rebuilt from the store at start-up. It never holds payloads.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from dtq_server.models import ActiveTask, TaskState

Key = tuple[str, str]
"""(queue, task type): the unit a node declares it can serve."""


class TaskBoard:
    """Unfinished tasks indexed for dispatch: FIFO per (queue, type), plus a retry timer heap."""

    def __init__(self) -> None:
        self.active: dict[str, ActiveTask] = {}
        self._ready: dict[Key, list[tuple[int, ActiveTask]]] = {}
        self._delayed: list[tuple[float, int, ActiveTask]] = []

    def track(self, task: ActiveTask, now: float) -> None:
        """Start tracking a task; a QUEUED one becomes ready (or waits until ``due_at``)."""
        self.active[task.id] = task
        if task.state is TaskState.QUEUED:
            self.make_ready(task, now)

    def make_ready(self, task: ActiveTask, now: float) -> None:
        """Queue ``task`` for dispatch, at once or when its retry delay ends."""
        task.state = TaskState.QUEUED
        if task.due_at is not None and task.due_at > now:
            heapq.heappush(self._delayed, (task.due_at, task.seq, task))
            return
        task.due_at = None
        heapq.heappush(self._ready.setdefault((task.queue, task.type), []), (task.seq, task))

    def forget(self, task: ActiveTask, state: TaskState) -> None:
        """The task reached a terminal state; stale heap entries are skipped lazily."""
        task.state = state
        self.active.pop(task.id, None)

    def promote_due(self, now: float) -> int:
        """Move retries whose delay has ended to the ready queues; returns how many."""
        moved = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, task = heapq.heappop(self._delayed)
            if task.state is TaskState.QUEUED and self.active.get(task.id) is task:
                task.due_at = None
                self.make_ready(task, now)
                moved += 1
        return moved

    def pop_ready(self, keys: Iterable[Key]) -> ActiveTask | None:
        """The oldest ready task among ``keys``, removed from the ready queues."""
        best: list[tuple[int, ActiveTask]] | None = None
        for key in keys:
            heap = self._ready.get(key)
            while heap and not self._is_ready(heap[0][1]):
                heapq.heappop(heap)
            if heap and (best is None or heap[0][0] < best[0][0]):
                best = heap
        if best is None:
            return None
        return heapq.heappop(best)[1]

    def ready_keys(self) -> set[Key]:
        """Keys that may have ready tasks (may include ones holding only stale entries)."""
        return {key for key, heap in self._ready.items() if heap}

    def _is_ready(self, task: ActiveTask) -> bool:
        return (
            task.state is TaskState.QUEUED
            and task.due_at is None
            and self.active.get(task.id) is task
        )
