"""Operations on many tasks at once: cancel by filter, retry dead letters, purge.

Each works on the in-memory board and the store together, in the order that
keeps them consistent: queued tasks leave the board before their cancel
commits (no dispatch round can lease them meanwhile) and return to it if the
commit fails; retried tasks join the board only once stored as queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from dtq_server.board import TaskBoard
from dtq_server.completion import run_to_completion
from dtq_server.dispatch import Dispatcher
from dtq_server.errors import InvalidArgument, StoreUnavailable
from dtq_server.models import ActiveTask, TaskFilter, TaskState
from dtq_server.sessions import NodeSessions
from dtq_server.store.base import Store
from dtq_server.updates import Transition
from dtq_server.validation import validate_task_id
from dtq_server.watchers import TaskWatchers

log = structlog.get_logger(__name__)
MAX_BULK = 10_000
SCAN_SLICE = 50_000
"""Board tasks a bulk cancel looks at between two turns of the event loop."""
WRITE_BATCH = 1_000
"""Tasks a bulk cancel or purge changes per write: the writer's other work (every
submit and result) waits for each, ~10 ms."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What RetryTasks did."""

    retried: int
    skipped: list[str]
    """Requested ids that were not FAILED or CANCELLED (or unknown)."""
    truncated: bool
    """A filter matched more than one call retries."""


class BulkOperations:
    """CancelTasks, RetryTasks and PurgeTasks."""

    def __init__(
        self,
        store: Store,
        board: TaskBoard,
        dispatcher: Dispatcher,
        sessions: NodeSessions,
        watchers: TaskWatchers,
        loaded: asyncio.Event,
    ) -> None:
        self.store = store
        self.board = board
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.watchers = watchers
        self._loaded = loaded
        """Set once start-up has put every queued task on the board."""

    async def cancel_many(self, task_filter: TaskFilter) -> tuple[int, int]:
        """Cancel unfinished tasks matching a filter: (cancelled, cancel_requested)."""
        return await run_to_completion(self._cancel_many(task_filter))

    async def _cancel_many(self, task_filter: TaskFilter) -> tuple[int, int]:
        if task_filter.queue is None and task_filter.type is None:
            raise InvalidArgument([("queue", "give a queue or a type (or both)")])
        if task_filter.state is not None and task_filter.state.is_terminal:
            raise InvalidArgument([("state", "must be waiting, queued, leased or running")])
        await self._loaded.wait()
        # A chunk at a time, each committed on its own and the event loop free between
        # them: cancelling a queue of 900,000 tasks in one go held the loop for ~2 s and
        # the store's writer (every submit and result) for ~13.
        matching = await self._on_board(task_filter)
        cancelled = requested = 0
        if task_filter.state in (None, TaskState.WAITING):
            # Waiting tasks first: cancelling a queued dependency first would cascade to
            # them by their failure policy instead of cancelling them.
            cancelled += await self._cancel_waiting(task_filter)
        for start in range(0, len(matching), WRITE_BATCH):
            chunk_cancelled, chunk_requested = await self._cancel_chunk(
                matching[start : start + WRITE_BATCH], task_filter
            )
            cancelled += chunk_cancelled
            requested += chunk_requested
        log.info("tasks.cancel_many", cancelled=cancelled, cancel_requested=requested)
        return cancelled, requested

    async def _on_board(self, task_filter: TaskFilter) -> list[ActiveTask]:
        """The board's tasks of the filter's queue and type, looked at in slices."""
        tasks = list(self.board.active.values())
        matching: list[ActiveTask] = []
        for start in range(0, len(tasks), SCAN_SLICE):
            matching += [
                t
                for t in tasks[start : start + SCAN_SLICE]
                if (task_filter.queue is None or t.queue == task_filter.queue)
                and (task_filter.type is None or t.type == task_filter.type)
            ]
            await asyncio.sleep(0)  # let the loop serve between slices
        return matching

    async def _cancel_waiting(self, task_filter: TaskFilter) -> int:
        """Cancel the waiting tasks of the filter (they live in the store, not the board)."""
        waiting_filter = dataclasses.replace(task_filter, state=TaskState.WAITING)
        cancelled = 0
        while waiting := await self.store.find_ids(waiting_filter, WRITE_BATCH):
            applied = await self.store.apply(
                [
                    Transition(task_id, 0, (TaskState.WAITING,), state=TaskState.CANCELLED)
                    for task_id in waiting
                ]
            )
            self.watchers.notify(waiting)
            cancelled += sum(applied)
            if len(waiting) < WRITE_BATCH or not any(applied):
                break
        return cancelled

    async def _cancel_chunk(
        self, chunk: list[ActiveTask], task_filter: TaskFilter
    ) -> tuple[int, int]:
        """Cancel a chunk's queued tasks and ask nodes to stop its running ones, by the
        states they are in now (earlier chunks' commits gave dispatch rounds time)."""
        current = [
            t
            for t in chunk
            if self.board.active.get(t.id) is t
            and (task_filter.state is None or t.state is task_filter.state)
        ]
        queued = [t for t in current if t.state is TaskState.QUEUED]
        running = [t for t in current if t.state.is_leased and not t.cancel_requested]
        for task in queued:  # off the board first: no dispatch round may lease them now
            self.board.forget(task, TaskState.CANCELLED)
        cancels = [
            Transition(t.id, t.attempt, (TaskState.QUEUED,), state=TaskState.CANCELLED)
            for t in queued
        ]
        requests = [
            Transition(
                t.id, t.attempt, (TaskState.LEASED, TaskState.RUNNING), cancel_requested=True
            )
            for t in running
        ]
        try:
            applied = await self.store.apply(cancels + requests)
        except StoreUnavailable:
            self.board.restore(queued, time.monotonic())
            raise
        for task, ok in zip(running, applied[len(cancels) :], strict=True):
            if ok:
                task.cancel_requested = True
                self.sessions.request_cancel(task)
        self.watchers.notify(t.id for t in current)
        return sum(applied[: len(cancels)]), len(running)

    async def retry(self, task_ids: list[str], task_filter: TaskFilter) -> RetryOutcome:
        """Send FAILED (or CANCELLED) tasks back to their queue with a fresh attempt budget."""
        return await run_to_completion(self._retry(task_ids, task_filter))

    async def _retry(self, task_ids: list[str], task_filter: TaskFilter) -> RetryOutcome:
        has_filter = task_filter.queue is not None or task_filter.type is not None
        if task_ids and (has_filter or task_filter.state is not None):
            raise InvalidArgument([("task_ids", "give task ids or a filter, not both")])
        truncated = False
        if task_ids:
            if len(task_ids) > MAX_BULK:
                raise InvalidArgument([("task_ids", f"at most {MAX_BULK}")])
            ids = [validate_task_id(t, f"task_ids[{i}]") for i, t in enumerate(task_ids)]
        else:
            if not has_filter:
                raise InvalidArgument([("queue", "give task ids, a queue or a type")])
            state = task_filter.state or TaskState.FAILED
            if state not in (TaskState.FAILED, TaskState.CANCELLED):
                raise InvalidArgument([("state", "must be failed or cancelled")])
            ids = await self.store.find_ids(
                dataclasses.replace(task_filter, state=state), MAX_BULK + 1
            )
            truncated = len(ids) > MAX_BULK
            ids = ids[:MAX_BULK]
        await self._loaded.wait()
        revived = await self.store.retry(ids)
        now = time.monotonic()
        for task in revived:
            self.board.track(task, now)
        self.watchers.notify(t.id for t in revived)
        self.dispatcher.kick()
        done = {t.id for t in revived}
        log.info("tasks.retried", count=len(revived), truncated=truncated)
        return RetryOutcome(len(revived), [i for i in ids if i not in done], truncated)

    async def purge(self, task_filter: TaskFilter) -> int:
        """Delete finished tasks matching a filter (state required)."""
        return await run_to_completion(self._purge(task_filter))

    async def _purge(self, task_filter: TaskFilter) -> int:
        if task_filter.state is None or not task_filter.state.is_terminal:
            raise InvalidArgument([("state", "must be succeeded, failed or cancelled")])
        deleted = last = 0
        # A chunk per write: one DELETE of a million rows held the store's writer (every
        # submit and result) for ~5 s. Each chunk starts after the last one's last task,
        # not at the first task of the state again (with a type filter, that would look
        # again at every task of other types that the chunks before passed over).
        while True:
            count, last = await self.store.delete(task_filter, WRITE_BATCH, last)
            deleted += count
            if count < WRITE_BATCH:
                break
        log.info("tasks.purged", deleted=deleted, queue=task_filter.queue, type=task_filter.type)
        return deleted
