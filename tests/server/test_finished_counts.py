"""Queue counts (finished tasks are counted as they finish, store/finished.py) and
dependants settled, whatever the writes.

A randomized run of every write that changes a task's state (inserts with
dependencies, leases, outcomes, stale outcomes, cancels, retries, purges, the
retention sweep) on a real SQLite file and a real PostgreSQL database, checking
after each step that the store's per-queue counts equal a count of every row.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dtq_server.models import QueueStats, TaskError, TaskFilter, TaskRecord, TaskState
from dtq_server.store.base import Store
from dtq_server.store.postgres import PostgresStore
from dtq_server.store.sqlite import SqliteStore
from dtq_server.updates import LeaseGrant, Transition
from dtq_server.validation import SpecInput, Violations, validate_spec
from tests.harness import server_config

CONFIG = server_config(Path("unused"))
QUEUES = ("q0", "q1", "q2")
HELD = (TaskState.LEASED, TaskState.RUNNING)
FINISHED = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


Rows = Callable[[], list[tuple[str, str, TaskState, int]]]
"""(id, queue, state, attempt) of every task, read from the database directly."""


def sqlite_rows(path: Path) -> Rows:
    def read() -> list[tuple[str, str, TaskState, int]]:
        with sqlite3.connect(path) as conn:
            return _typed(conn.execute(ROWS).fetchall())

    return read


def postgres_rows(url: str) -> Rows:
    def read() -> list[tuple[str, str, TaskState, int]]:
        with psycopg.connect(url) as conn:
            return _typed(conn.execute(ROWS).fetchall())

    return read


ROWS = "SELECT id, queue, state, attempt FROM tasks ORDER BY seq"


def _typed(found: list[Any]) -> list[tuple[str, str, TaskState, int]]:
    return [(i, q, TaskState(s), a) for i, q, s, a in found]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Callable[[], Store], Rows]:
    """A new store each call (all on one database) and a reader of its rows."""
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        return (lambda: SqliteStore(path)), sqlite_rows(path)
    url = request.getfixturevalue("postgres_url")
    return (lambda: PostgresStore(url)), postgres_rows(url)


def counted_by_hand(rows: Rows) -> dict[str, QueueStats]:
    stats: dict[str, QueueStats] = {}
    for _, queue, state, _ in rows():
        s = stats.setdefault(queue, QueueStats(queue))
        field = {
            TaskState.QUEUED: "queued",
            TaskState.LEASED: "running",
            TaskState.RUNNING: "running",
            TaskState.WAITING: "waiting",
        }.get(state, state.name.lower())
        setattr(s, field, getattr(s, field) + 1)
    return stats


class Steps:
    """Random writes against one store; each picks its tasks from the file's rows."""

    def __init__(self, store: Store, rows: Rows, rng: random.Random) -> None:
        self.store, self.rows, self.rng = store, rows, rng

    def pick(self, states: tuple[TaskState, ...], most: int) -> list[tuple[str, str, int]]:
        found = [(i, q, a) for i, q, s, a in self.rows() if s in states]
        return self.rng.sample(found, min(len(found), self.rng.randint(1, most)))

    async def insert(self) -> None:
        ids = [i for i, _, _, _ in self.rows()]
        new = []
        for _ in range(self.rng.randint(1, 5)):
            parents = tuple(self.rng.sample(ids, min(len(ids), self.rng.randint(0, 2))))
            if self.rng.random() < 0.5:
                parents = ()
            spec = SpecInput(
                "t", self.rng.choice(QUEUES), b"{}", "", 0, "", None,
                depends_on=parents, on_dependency_failure=self.rng.choice((1, 2)),
            )  # fmt: skip
            task = validate_spec(spec, "task", CONFIG, Violations())
            assert task is not None
            new.append(task)
        await self.store.insert(new, batch=True)

    async def finish(self) -> None:
        picked = self.pick((TaskState.QUEUED,), 6)
        grants = [LeaseGrant(i, a + 1, "n1", "s1") for i, _, a in picked]
        leased = await self.store.lease(grants)
        error = TaskError("Boom", "no", "", retryable=False)
        outcomes = []
        for assignment in leased:
            lease = assignment.lease
            end = self.rng.choice((*FINISHED, TaskState.QUEUED, TaskState.RUNNING))
            result = b"1" if end is TaskState.SUCCEEDED else None
            failure = error if end is TaskState.FAILED else None
            attempt = lease.attempt - (1 if self.rng.random() < 0.2 else 0)  # some stale
            outcomes.append(
                Transition(
                    lease.task_id, attempt, HELD, state=end, result=result, error=failure,
                    clear_lease=True,
                )
            )  # fmt: skip
            if self.rng.random() < 0.2:  # the same task twice in one batch
                outcomes.append(Transition(lease.task_id, lease.attempt, HELD, state=end))
        await self.store.apply(outcomes)

    async def cancel(self) -> None:
        picked = self.pick((TaskState.QUEUED, TaskState.WAITING), 4)
        await self.store.apply(
            [
                Transition(i, a, (TaskState.QUEUED, TaskState.WAITING), state=TaskState.CANCELLED)
                for i, _, a in picked
            ]
        )

    async def retry(self) -> None:
        picked = self.pick((TaskState.FAILED, TaskState.CANCELLED, TaskState.QUEUED), 4)
        await self.store.retry([i for i, _, _ in picked])

    async def purge(self) -> None:
        queue = self.rng.choice((*QUEUES, None))
        state = self.rng.choice(FINISHED)
        after = self.rng.choice([0, 0, len(self.rows()) // 2])  # seq is about the position
        await self.store.delete(TaskFilter(queue=queue, state=state), self.rng.randint(1, 6), after)

    async def expire(self) -> None:
        await self.store.delete_expired(time.time() + 1e9, self.rng.randint(1, 4))


@pytest.mark.parametrize("seed", range(4))
def test_queue_counts_equal_a_count_of_every_row_after_any_write(
    store: tuple[Callable[[], Store], Rows], seed: int
) -> None:
    new_store, rows = store
    rng = random.Random(seed)

    async def scenario() -> None:
        store = new_store()
        await store.open()
        steps = Steps(store, rows, rng)
        actions = [steps.insert] * 3 + [steps.finish] * 3 + [
            steps.cancel, steps.retry, steps.purge, steps.expire
        ]  # fmt: skip
        seen: set[TaskState] = set()
        for _ in range(80):
            await rng.choice(actions)()
            by_store = {q.name: q for q in await store.queue_stats()}
            assert by_store == counted_by_hand(rows)
            assert_dependants_settled(await store.get_many([i for i, _, _, _ in rows()]))
            seen |= {state for _, _, state, _ in rows()}
        await store.close()
        assert seen == set(TaskState)  # the run reached every state

    asyncio.run(scenario())


def assert_dependants_settled(tasks: Mapping[str, TaskRecord]) -> None:
    """A waiting task waits for an unfinished task, and none of its tasks failed."""
    for task in tasks.values():
        parents = [tasks[i].state for i in task.depends_on if i in tasks]
        if task.state is TaskState.WAITING:
            assert any(not s.is_terminal for s in parents), task
            assert TaskState.FAILED not in parents and TaskState.CANCELLED not in parents, task


def test_the_migration_counts_the_finished_tasks_already_kept(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    rows = sqlite_rows(path)

    async def fill() -> None:
        store = SqliteStore(path)
        await store.open()
        steps = Steps(store, rows, random.Random(1))
        for _ in range(10):
            await steps.insert()
            await steps.finish()
        await store.close()

    async def reopened() -> dict[str, QueueStats]:
        store = SqliteStore(path)
        await store.open()
        try:
            return {q.name: q for q in await store.queue_stats()}
        finally:
            await store.close()

    asyncio.run(fill())
    # As a file from before the table: no table, version 10.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE finished_counts")
        conn.execute("PRAGMA user_version = 10")
    assert any(s in FINISHED for _, _, s, _ in rows())
    assert asyncio.run(reopened()) == counted_by_hand(rows)
