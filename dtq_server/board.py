"""The in-memory board of unfinished tasks: what is ready, what waits for a retry.

The store is the durable record; the board is the coordinator's index over it,
rebuilt from the store at start-up. It never holds payloads.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Container, Iterable

from dtq_server.models import ActiveTask, TaskState
from dtq_server.ready import Rank, ReadyPicker, ReadyQueue

Key = tuple[str, str]
"""(queue, task type): the unit a node declares it can serve."""

JOINED = -(2**62)
"""Where the turn numbers of queues joining the line start (see ``TaskBoard.turns``)."""


class TaskBoard:
    """Unfinished tasks indexed for dispatch: the queues in turn, by priority then FIFO
    within a queue, plus timer heaps for retries/scheduled tasks and for
    schedule-to-start deadlines."""

    def __init__(self) -> None:
        self.active: dict[str, ActiveTask] = {}
        self._unfinished: Counter[str] = Counter()  # active tasks per queue, for max depth
        self.turns: dict[str, int] = {}
        """queue -> its place in line among queues with tasks (smallest goes first).

        Round robin over the queues a node serves, the least recently served first,
        so a backlog in one does not hold back another's tasks (as kombu's Redis
        transport and rq's RoundRobinWorker serve queues). A queue that gets a
        ready task with none unfinished has not been served lately: it goes ahead
        of every queue that has, behind those that came before it (numbers from
        ``JOINED``, below every served one). Each time one of its tasks is taken it
        goes to the back. Kept while the queue has unfinished tasks, so one that
        keeps a task running does not jump the line with each new one; a queue's
        number only grows during a dispatch round, which ReadyPicker's lazy heap
        relies on."""
        self._joined = itertools.count(JOINED)
        self._served = itertools.count()
        self._ready: dict[Key, ReadyQueue] = {}
        self._aside: list[ReadyQueue] = []  # those that set rate keys aside this round
        # By due time, then as the ready queues rank: tasks due together become ready
        # in chunks (promote_due), the higher priorities and older tasks first.
        self._delayed: list[tuple[float, int, int, int, ActiveTask]] = []
        self._start_deadlines: list[tuple[float, int, ActiveTask]] = []
        self._pushes = itertools.count()

    def track(self, task: ActiveTask, now: float) -> None:
        """Start tracking a task; a QUEUED one becomes ready (or waits until ``due_at``)."""
        if self.active.get(task.id) is None:
            self._unfinished[task.queue] += 1
        self.active[task.id] = task
        if task.start_by is not None:
            heapq.heappush(self._start_deadlines, (task.start_by, next(self._pushes), task))
        if task.state is TaskState.QUEUED:
            self.make_ready(task, now)

    def make_ready(self, task: ActiveTask, now: float) -> None:
        """Queue ``task`` for dispatch, at once or when its retry delay ends."""
        task.state = TaskState.QUEUED
        if task.due_at is not None and task.due_at > now:
            entry = (task.due_at, -task.priority, task.seq, next(self._pushes), task)
            heapq.heappush(self._delayed, entry)
            return
        task.due_at = None
        rank: Rank = (-task.priority, task.seq, next(self._pushes))
        if task.queue not in self.turns:
            self.turns[task.queue] = next(self._joined)
        key = (task.queue, task.type)
        ready = self._ready.get(key)
        if ready is None:
            ready = self._ready[key] = ReadyQueue(self.active, self._aside)
        ready.push(rank, task)

    def forget(self, task: ActiveTask, state: TaskState) -> None:
        """The task reached a terminal state; its ready queue drops its entry (lazily)."""
        was_ready = task.state is TaskState.QUEUED and task.due_at is None
        task.state = state
        if self.active.pop(task.id, None) is not None:
            self._unfinished[task.queue] -= 1
            if not self._unfinished[task.queue]:
                # Queues named per job or per request come and go: keep none at zero.
                del self._unfinished[task.queue]
                self.turns.pop(task.queue, None)
            if was_ready and (ready := self._ready.get((task.queue, task.type))) is not None:
                ready.went_stale()

    def restore(self, tasks: Iterable[ActiveTask], now: float) -> None:
        """Put back queued tasks forgotten for a cancel or a failing whose commit failed:
        queued again, ready as before, their schedule-to-start deadline watched (tracking
        them as they were, cancelled, left them on the board but never dispatched)."""
        for task in tasks:
            task.state = TaskState.QUEUED
            self.track(task, now)

    def held(self, key: Key) -> int:
        """Entries the ready queue of ``key`` holds, stale ones included."""
        ready = self._ready.get(key)
        return 0 if ready is None else len(ready)

    def unfinished(self, queue: str) -> int:
        """Tasks of ``queue`` on the board: queued (ready or delayed), leased or running."""
        return self._unfinished[queue]

    def promote_due(self, now: float, limit: int) -> int:
        """Move up to ``limit`` tasks whose delay has ended (retries, ``run_at``) to the
        ready queues; returns how many."""
        moved = 0
        while self._delayed and self._delayed[0][0] <= now and moved < limit:
            task = heapq.heappop(self._delayed)[-1]
            if task.state is TaskState.QUEUED and self.active.get(task.id) is task:
                task.due_at = None
                self.make_ready(task, now)
                moved += 1
        return moved

    def pop_ready(self, keys: Iterable[Key], blocked: Container[str] = ()) -> ActiveTask | None:
        """The next ready task among ``keys`` whose rate key is not ``blocked``, removed
        from the ready queues (a round of one pick: see :class:`ReadyPicker`)."""
        try:
            return ReadyPicker(self, set(keys), blocked).pop()
        finally:
            self.end_round()

    def first(self, key: Key, blocked: Container[str]) -> Rank | None:
        """The rank of the first ready task of ``key`` whose rate key is not ``blocked``
        (None: none); see :meth:`ReadyQueue.first`."""
        ready = self._ready.get(key)
        return None if ready is None else ready.first(blocked)

    def pop_first(self, key: Key, blocked: Container[str]) -> tuple[ActiveTask, Rank | None]:
        """Remove and return the task :meth:`first` found for ``key``, and the rank of the
        next one (as :meth:`first` would say). Its queue goes to the back of the line."""
        self.turns[key[0]] = next(self._served)
        return self._ready[key].pop(blocked)

    def end_round(self) -> None:
        """A dispatch round is over: rate keys it found out of tokens count again."""
        for ready in self._aside:
            ready.end_round()
        self._aside.clear()

    def missed_start(self, now: float, limit: int) -> list[ActiveTask]:
        """Up to ``limit`` queued tasks whose schedule-to-start deadline passed before any
        node started them (no longer watched: :meth:`restore` watches them again)."""
        missed: dict[str, ActiveTask] = {}  # a restored task may be watched twice
        while self._start_deadlines and self._start_deadlines[0][0] <= now and len(missed) < limit:
            _, _, task = heapq.heappop(self._start_deadlines)
            if (
                task.start_by is not None
                and task.state is TaskState.QUEUED
                and self.active.get(task.id) is task
            ):
                missed[task.id] = task
        return list(missed.values())

    def ready_keys(self) -> set[Key]:
        """Keys that may have ready tasks (may include ones holding only stale entries)."""
        empty = [key for key, ready in self._ready.items() if not ready]
        for key in empty:
            del self._ready[key]
        return set(self._ready)
