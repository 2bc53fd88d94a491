"""SqliteStore on real files: group commit, fencing in SQL, start-up checks."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from dtq_server.errors import IdempotencyKeyReused
from dtq_server.models import TaskError, TaskFilter, TaskPage, TaskState
from dtq_server.store import listing
from dtq_server.store.sqlite import SqliteStore, StoreCorrupt
from dtq_server.updates import LeaseGrant, Transition
from dtq_server.validation import SpecInput, Violations, validate_spec
from tests.harness import server_config

pytestmark = pytest.mark.sqlite_only
CONFIG = server_config(Path("unused"))


def new_task(key: str = "", payload: bytes = b"{}", type_: str = "echo"):
    spec = SpecInput(type_, "", payload, "", 0, key, None)
    task = validate_spec(spec, "task", CONFIG, Violations())
    assert task is not None
    return task


def run(coro):
    return asyncio.run(coro)


async def opened(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    return store


def test_concurrent_inserts_share_commits_and_all_persist(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"

    async def scenario() -> None:
        store = await opened(path)
        results = await asyncio.gather(*(store.insert([new_task()]) for _ in range(200)))
        assert all(created for [(_, created)] in results)
        await store.close()

    run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 200
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_idempotency_clash_fails_only_its_own_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        [(first, _)] = await store.insert([new_task("k")])
        clash, other = await asyncio.gather(
            store.insert([new_task("k", payload=b"[1]")]),
            store.insert([new_task("other")]),
            return_exceptions=True,
        )
        assert isinstance(clash, IdempotencyKeyReused)
        assert clash.task_id == first.id
        assert isinstance(other, list)
        assert other[0][1] is True
        [(again, created)] = await store.insert([new_task("k")])
        assert (again.id, created) == (first.id, False)
        await store.close()

    run(scenario())


def test_transitions_are_fenced_by_attempt_and_state(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        [(task, _)] = await store.insert([new_task()])
        [assignment] = await store.lease([LeaseGrant(task.id, 1, "n1", "s1")])
        assert assignment.lease.attempt == 1
        # A second lease of the same attempt does not apply: the task is no longer queued.
        assert await store.lease([LeaseGrant(task.id, 1, "n2", "s2")]) == []
        held = (TaskState.LEASED, TaskState.RUNNING)
        stale = Transition(task.id, 2, held, state=TaskState.SUCCEEDED, result=b"x")
        current = Transition(task.id, 1, held, state=TaskState.SUCCEEDED, result=b"y")
        assert await store.apply([stale, current]) == [False, True]
        assert await store.apply([current]) == [False]  # not held any more
        record = await store.get(task.id)
        assert record is not None
        assert (record.state, record.result, record.session_id) == (TaskState.SUCCEEDED, b"y", "s1")
        assert record.finished_at is not None
        await store.close()

    run(scenario())


def test_a_batch_of_mixed_transitions_applies_each_as_if_alone(tmp_path: Path) -> None:
    """Leases and transitions go to SQLite a statement per shape, not per task: each
    row must still be fenced on its own attempt and state."""

    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        ids = [record.id for record, _ in await store.insert([new_task() for _ in range(6)])]
        stale_grant = LeaseGrant(ids[5], 2, "n1", "s1")  # stored attempt is 0, not 1
        grants = [LeaseGrant(i, 1, "n1", "s1") for i in ids[:5]] + [stale_grant]
        leased = await store.lease(grants)
        assert sorted((a.lease.task_id, a.lease.attempt) for a in leased) == sorted(
            (i, 1) for i in ids[:5]
        )
        assert {a.payload for a in leased} == {b"{}"}
        held = (TaskState.LEASED, TaskState.RUNNING)
        error = TaskError("Boom", "it broke", "tb", retryable=False)
        transitions = [
            Transition(ids[0], 1, held, state=TaskState.SUCCEEDED, result=b"a", started=True),
            Transition(ids[1], 1, held, state=TaskState.SUCCEEDED, result=b"b", started=True),
            Transition(ids[2], 1, held, state=TaskState.FAILED, error=error, failures=1),
            Transition(
                ids[3],
                1,
                held,
                state=TaskState.QUEUED,
                failures=1,
                clear_lease=True,
                next_attempt_at=1e10,
            ),
            Transition(ids[4], 2, held, state=TaskState.SUCCEEDED, result=b"stale"),
            Transition(ids[5], 0, held, state=TaskState.SUCCEEDED, result=b"not leased"),
        ]
        assert await store.apply(transitions) == [True, True, True, True, False, False]
        records = await store.get_many(ids)
        done = [records[i] for i in ids]
        assert [r.state for r in done] == [
            TaskState.SUCCEEDED, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.QUEUED,
            TaskState.LEASED, TaskState.QUEUED,
        ]  # fmt: skip
        assert (done[0].result, done[1].result) == (b"a", b"b")
        assert done[0].started_at is not None and done[0].finished_at is not None
        assert done[2].last_error == error and done[2].failures == 1
        assert done[2].started_at is None and done[2].expires_at is not None
        assert (done[3].session_id, done[3].failures, done[3].next_attempt_at) == (None, 1, 1e10)
        assert done[3].expires_at is None and done[3].finished_at is None
        assert (done[4].result, done[4].session_id) == (None, "s1")
        assert (done[5].result, done[5].attempt) == (None, 0)
        await store.close()

    run(scenario())


def test_leases_and_results_larger_than_one_statement(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        ids = [r.id for r, _ in await store.insert([new_task() for _ in range(5_000)], batch=True)]
        leased = await store.lease([LeaseGrant(i, 1, "n1", "s1") for i in ids])
        assert sorted(a.lease.task_id for a in leased) == sorted(ids)
        held = (TaskState.LEASED,)
        results = [Transition(i, 1, held, state=TaskState.SUCCEEDED, result=b"1") for i in ids]
        assert await store.apply(results) == [True] * len(ids)
        records = await store.get_many(ids)
        assert {r.state for r in records.values()} == {TaskState.SUCCEEDED}
        await store.close()

    run(scenario())


def test_load_active_returns_unfinished_tasks_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        records = [r for r, _ in await store.insert([new_task() for _ in range(3)])]
        await store.lease([LeaseGrant(records[1].id, 1, "n1", "s1")])
        held = (TaskState.LEASED, TaskState.RUNNING)
        await store.apply([Transition(records[1].id, 1, held, state=TaskState.RUNNING)])
        await store.apply(
            [Transition(records[2].id, 0, (TaskState.QUEUED,), state=TaskState.CANCELLED)]
        )
        active = await store.load_active()
        assert [(t.id, t.state, t.session_id) for t in active] == [
            (records[0].id, TaskState.QUEUED, None),
            (records[1].id, TaskState.RUNNING, "s1"),
        ]
        await store.close()

    run(scenario())


def test_a_queue_lists_newest_first_across_states_without_sorting_the_queue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"

    async def scenario() -> list[str]:
        store = await opened(path)
        ids = [r.id for r, _ in await store.insert([new_task() for _ in range(9)])]
        await store.lease([LeaseGrant(ids[i], 1, "n1", "s1") for i in (1, 4, 7)])
        queued = (TaskState.QUEUED,)
        await store.apply(
            [Transition(ids[i], 0, queued, state=TaskState.CANCELLED) for i in (2, 8)]
        )
        held = (TaskState.LEASED,)
        await store.apply([Transition(ids[4], 1, held, state=TaskState.SUCCEEDED, result=b"1")])
        queue = (await store.get(ids[0])).queue  # type: ignore[union-attr]
        listed: list[str] = []
        before: int | None = None
        while True:  # pages of two, every state mixed in
            page = await store.list_tasks(TaskFilter(queue=queue), 2, before, 1 << 20)
            listed += [t.id for t in page.tasks]
            if page.next_before_seq is None:
                break
            before = page.next_before_seq
        assert await store.list_tasks(TaskFilter(queue="other"), 2, None, 1 << 20) == TaskPage()
        await store.close()
        return listed

    assert run(scenario()) == ids_newest_first(path)


def test_a_page_costs_the_same_in_a_small_and_a_big_queue(tmp_path: Path) -> None:
    """Work counted in SQLite VM steps, not timed: a page of a queue used to sort the
    whole queue (~0.5 s a page at a million tasks)."""

    async def fill(path: Path, count: int) -> str:
        store = await opened(path)
        records = [r for r, _ in await store.insert([new_task() for _ in range(count)], batch=True)]
        await store.close()
        return records[0].queue

    def steps(path: Path, queue: str) -> dict[str, int]:
        filters = {
            "queue": TaskFilter(queue=queue),
            "queue and state": TaskFilter(queue=queue, state=TaskState.QUEUED),
            "state": TaskFilter(state=TaskState.QUEUED),
            "nothing": TaskFilter(),
        }
        counted = {}
        with sqlite3.connect(path) as conn:
            for name, task_filter in filters.items():
                counter = StepCounter()
                conn.set_progress_handler(counter, 100)
                conn.execute(*listing.page_sizes(task_filter, None, 100)).fetchall()
                conn.execute(*listing.page_rows(task_filter, None, 0, 100)).fetchall()
                counted[name] = counter.calls
        return counted

    small, big = tmp_path / "small.sqlite3", tmp_path / "big.sqlite3"
    small_steps = steps(small, run(fill(small, 1_000)))
    big_steps = steps(big, run(fill(big, 20_000)))
    for name, count in big_steps.items():
        assert count <= 2 * small_steps[name] + 10, (name, small_steps, big_steps)


def test_a_rare_type_s_page_costs_the_same_in_a_small_and_a_big_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in SQLite VM steps: without the window, a page of a type no task has read
    every task kept."""
    monkeypatch.setattr(listing, "SCAN_ROWS", 5_000)

    async def fill(path: Path, count: int) -> None:
        store = await opened(path)
        for start in range(0, count, 10_000):
            await store.insert([new_task() for _ in range(min(10_000, count - start))], batch=True)
        await store.close()

    def steps(path: Path) -> int:
        counter = StepCounter()
        with sqlite3.connect(path) as conn:
            conn.set_progress_handler(counter, 100)
            listing.read_page(conn, TaskFilter(type="rare"), 100, None, 1 << 20)
        return counter.calls

    small, big = tmp_path / "small.sqlite3", tmp_path / "big.sqlite3"
    run(fill(small, listing.SCAN_ROWS + 1_000))
    run(fill(big, 3 * listing.SCAN_ROWS))
    assert steps(big) <= 1.2 * steps(small) + 10, (steps(small), steps(big))


class StepCounter:
    """A progress handler counting its calls (one per 100 SQLite VM steps here)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return 0  # go on


def ids_newest_first(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM tasks ORDER BY seq DESC")]


def test_a_slow_read_does_not_hold_up_the_others(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "db.sqlite3")
        [(task, _)] = await store.insert([new_task()])
        release = threading.Event()
        # A read that takes as long as the test says, like a page of a filter that
        # has to look at millions of rows.
        slow = asyncio.ensure_future(store._read(lambda conn: release.wait(10)))
        try:
            record = await asyncio.wait_for(store.get(task.id), 5)
            assert record is not None and record.id == task.id
        finally:
            release.set()
        assert await slow
        await store.close()

    run(scenario())


def test_refuses_a_file_that_is_not_a_dtq_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)

    async def scenario() -> None:
        with pytest.raises(StoreCorrupt):
            await opened(path)

    run(scenario())
    assert path.read_bytes() == b"this is not sqlite" * 100, "never re-initialised"


def test_refuses_a_truncated_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"

    async def fill() -> None:
        store = await opened(path)
        await store.insert([new_task(payload=b"x" * 2000) for _ in range(300)])
        await store.close()

    run(fill())
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    async def reopen() -> None:
        with pytest.raises(StoreCorrupt):
            await opened(path)

    run(reopen())
