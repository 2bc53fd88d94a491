"""What the SQLite and PostgreSQL stores share: every query and write, on a connection
either of them provides (:mod:`dtq_server.store.connection`).

A subclass opens the connections: ``_writer``, a :class:`GroupCommitWriter` (every
write method returns once its group commit is durable), and ``_open_reader``, the
reader thread's connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dtq_server.errors import StoreUnavailable
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
from dtq_server.store import dependencies, finished, listing, tasks_sql
from dtq_server.store import schedules as schedules_sql
from dtq_server.store.connection import Connection
from dtq_server.store.schema import TASK_COLUMNS
from dtq_server.store.writer import GroupCommitWriter
from dtq_server.updates import LeaseGrant, Transition

T = TypeVar("T")
ACTIVE_STATES = (TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING)
READERS = 4
"""Reader threads (and connections) per store."""
_NUL = "\x00"
"""In no stored id: PostgreSQL's text cannot hold it (and refuses it as a parameter)."""


class SqlStore:
    """The :class:`~dtq_server.store.base.Store` methods, over the connections a subclass
    opens: its ``_writer`` and ``_open_reader``."""

    _writer: GroupCommitWriter
    _result_ttl_s: float
    _db_errors: tuple[type[Exception], ...]
    """The exceptions by which the database says it failed."""
    _on_dependencies: Callable[[DependencyEvents], None] | None = None

    def __init__(self) -> None:
        # Reader threads, each with its own connection: reads never wait for a group
        # commit, and a slow read (a page of a type filter over millions of kept tasks)
        # does not hold up quick ones (GetTask, a watch's re-read, the next page).
        self._reader_pool = ThreadPoolExecutor(READERS, thread_name_prefix="dtq-store-reader")
        self._local = threading.local()
        self._readers: list[Connection] = []
        self._readers_lock = threading.Lock()

    def _open_reader(self) -> Connection:
        """A new connection for the reader thread."""
        raise NotImplementedError

    def _is_broken(self, conn: Connection) -> bool:
        """True if ``conn`` is gone for good and a new one must be opened."""
        return False

    async def _open_readers(self) -> None:
        """Open every reader thread and its connection now, not at the first reads that
        need them: the coordinator's open files stay what they were after start-up."""
        arrived = threading.Barrier(READERS)  # so that each open runs on its own thread

        def open_one() -> None:
            try:
                self._reader()
                arrived.wait(timeout=60)
            except BaseException:
                arrived.abort()
                raise

        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._reader_pool, open_one) for _ in range(READERS))
        )

    def _reader(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open_reader()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a reader thread's connection, off the event loop.

        A connection the database dropped (PostgreSQL restarted since the thread last
        read) is replaced and the read tried once more on the new one: the readers
        open at start-up, and each would otherwise fail one read after a restart.
        """

        def run() -> T:
            for last_try in (False, True):
                try:
                    return fn(self._reader())
                except self._db_errors as exc:
                    conn = getattr(self._local, "conn", None)
                    broken = conn is not None and self._is_broken(conn)
                    if conn is not None and broken:
                        conn.close()
                        self._local.conn = None  # the next read reconnects
                        with self._readers_lock:
                            self._readers.remove(conn)
                    if last_try or not broken:
                        raise StoreUnavailable(f"the store could not read: {exc}") from exc
            raise AssertionError("unreachable: the last try returns or raises")

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the readers."""
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._reader_pool.shutdown, wait=True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:  # no thread uses them any more
            conn.close()

    # -- writes ------------------------------------------------------------

    async def insert(
        self,
        tasks: list[NewTask],
        batch: bool = False,
        leased: Mapping[str, LeaseGrant] | None = None,
        places: QueuePlaces | None = None,
    ) -> list[tuple[TaskRecord, bool]]:
        ttl = self._result_ttl_s
        grants = leased or {}
        return await self._writer.run(
            lambda conn: tasks_sql.insert(conn, tasks, batch, ttl, grants, places)
        )

    async def lease(self, grants: list[LeaseGrant]) -> list[Assignment]:
        return await self._writer.run(lambda conn: tasks_sql.lease(conn, grants))

    async def apply(self, transitions: list[Transition]) -> list[bool]:
        applied, _ = await self.apply_and_read(transitions, ())
        return applied

    async def apply_and_read(
        self, transitions: list[Transition], read: Collection[str]
    ) -> tuple[list[bool], dict[str, TaskRecord]]:
        ttl = self._result_ttl_s
        events = DependencyEvents()

        def apply(conn: Connection) -> tuple[list[bool], dict[str, TaskRecord]]:
            applied = tasks_sql.apply(conn, transitions, ttl, events)
            return applied, tasks_sql.read(conn, read) if read else {}

        applied, records = await self._writer.run(apply)
        if events and self._on_dependencies is not None:
            self._on_dependencies(events)  # committed: memory may follow
        return applied, records

    def set_dependency_listener(self, listener: Callable[[DependencyEvents], None]) -> None:
        self._on_dependencies = listener

    async def group_status(self, group_id: str) -> GroupStatus | None:
        if _NUL in group_id:  # no group has it, and PostgreSQL refuses it as a parameter
            return None

        def status(conn: Connection) -> GroupStatus | None:
            rows = conn.execute(
                "SELECT id, state, queue, submitted_by FROM tasks WHERE group_id = ? ORDER BY seq",
                (group_id,),
            ).fetchall()
            if not rows:
                return None
            counts: dict[TaskState, int] = {}
            for _, state, _, _ in rows:
                counts[TaskState(state)] = counts.get(TaskState(state), 0) + 1
            queues = frozenset(r[2] for r in rows)
            submitters = frozenset(r[3] for r in rows)
            return GroupStatus(group_id, [r[0] for r in rows], counts, queues, submitters)

        return await self._read(status)

    async def retry(self, task_ids: list[str]) -> list[ActiveTask]:
        return await self._writer.run(lambda conn: tasks_sql.retry(conn, task_ids))

    async def delete(
        self, task_filter: TaskFilter, limit: int, after_seq: int = 0
    ) -> tuple[int, int]:
        where, params = tasks_sql.where(task_filter, from_seq=after_seq + 1)

        def delete(conn: Connection) -> tuple[int, int]:
            rows = conn.execute(
                f"DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks {where} ORDER BY seq "
                "LIMIT ?) RETURNING seq, queue, state",
                (*params, limit),
            ).fetchall()
            finished.add(conn, finished.removed(row[1:] for row in rows))
            return len(rows), max((seq for seq, _, _ in rows), default=after_seq)

        return await self._writer.run(delete)

    async def delete_expired(self, now: float, limit: int) -> int:
        def delete(conn: Connection) -> int:
            rows = conn.execute(
                "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks "
                "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?) RETURNING queue, state",
                (now, limit),
            ).fetchall()
            finished.add(conn, finished.removed(rows))
            return len(rows)

        return await self._writer.run(delete)

    async def save_queue(self, name: str, settings: QueueSettings) -> None:
        def save(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO queues (name, paused, max_running, rate_limit, max_depth) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, "
                "max_running = excluded.max_running, rate_limit = excluded.rate_limit, "
                "max_depth = excluded.max_depth",
                (
                    name,
                    int(settings.paused),
                    settings.max_running,
                    settings.rate_limit,
                    settings.max_depth,
                ),
            )

        await self._writer.run(save)

    async def load_queues(self) -> dict[str, QueueSettings]:
        def load(conn: Connection) -> dict[str, QueueSettings]:
            rows = conn.execute(
                "SELECT name, paused, max_running, rate_limit, max_depth FROM queues"
            )
            return {
                name: QueueSettings(bool(paused), limit, rate, depth)
                for name, paused, limit, rate, depth in rows
            }

        return await self._read(load)

    async def declare_task_types(self, keys: Collection[tuple[str, str]]) -> None:
        now = time.time()
        rows = [(queue, type_, now) for queue, type_ in keys]

        def declare(conn: Connection) -> None:
            conn.executemany(
                "INSERT INTO task_types (queue, type, declared_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )

        await self._writer.run(declare)

    async def load_task_types(self) -> set[tuple[str, str]]:
        def load(conn: Connection) -> set[tuple[str, str]]:
            rows = conn.execute("SELECT queue, type FROM task_types")
            return {(queue, type_) for queue, type_ in rows}

        return await self._read(load)

    # -- schedules -----------------------------------------------------------

    async def create_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        return await self._writer.run(lambda conn: schedules_sql.create(conn, schedule))

    async def load_schedules(self) -> list[Schedule]:
        return await self._read(schedules_sql.load_all)

    async def fire_schedules(
        self, firings: list[Firing]
    ) -> list[list[tuple[TaskRecord, bool]] | None]:
        def fire(conn: Connection) -> list[list[tuple[TaskRecord, bool]] | None]:
            # One commit for the tasks and the schedules' new positions: a tick is
            # never fired twice, nor lost, whatever moment the process dies.
            moved = [
                schedules_sql.advance(conn, f.name, f.expected_next, f.next_at, f.ticks, f.ended)
                for f in firings
            ]
            # One insert for every tick's task; no room check: a queue's max depth
            # refuses submits, not a schedule's ticks.
            tasks = [t for f, ok in zip(firings, moved, strict=True) if ok for t in f.tasks]
            stored = iter(tasks_sql.insert(conn, tasks, False, self._result_ttl_s, {}, None))
            return [
                [next(stored) for _ in f.tasks] if ok else None
                for f, ok in zip(firings, moved, strict=True)
            ]

        return await self._writer.run(fire)

    async def set_schedule_paused(self, name: str, paused: bool, next_at: float) -> bool:
        return await self._writer.run(
            lambda conn: schedules_sql.set_paused(conn, name, paused, next_at)
        )

    async def delete_schedule(self, name: str) -> bool:
        return await self._writer.run(lambda conn: schedules_sql.delete(conn, name))

    async def save_rate_limit(self, limit: RateLimit) -> None:
        def save(conn: Connection) -> None:
            if limit.per_second <= 0:
                conn.execute("DELETE FROM rate_limits WHERE key = ?", (limit.key,))
                return
            conn.execute(
                "INSERT INTO rate_limits (key, per_second, burst) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET per_second = excluded.per_second, "
                "burst = excluded.burst",
                (limit.key, limit.per_second, limit.burst),
            )

        await self._writer.run(save)

    async def load_rate_limits(self, after: str = "", limit: int = 0) -> list[RateLimit]:
        def load(conn: Connection) -> list[RateLimit]:
            rows = conn.execute(
                "SELECT key, per_second, burst FROM rate_limits WHERE key > ? ORDER BY key LIMIT ?",
                (after, limit or ALL_ROWS),
            )
            return [RateLimit(key, rate, burst) for key, rate, burst in rows]

        return await self._read(load)

    async def find_ids(self, task_filter: TaskFilter, limit: int) -> list[str]:
        where, params = tasks_sql.where(task_filter)

        def find(conn: Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT id FROM tasks {where} ORDER BY seq LIMIT ?", (*params, limit)
            )
            return [r[0] for r in rows]

        return await self._read(find)

    # -- reads -------------------------------------------------------------

    async def load_active(
        self, states: tuple[TaskState, ...] = ACTIVE_STATES, after_seq: int = 0, limit: int = -1
    ) -> list[ActiveTask]:
        marks = ", ".join(str(int(state)) for state in states)
        sql = (
            f"SELECT {dependencies.ACTIVE_COLUMNS} FROM tasks "
            f"WHERE state IN ({marks}) AND seq > ? ORDER BY seq"
        )
        params: tuple[int, ...] = (after_seq,)
        if limit >= 0:  # no LIMIT -1 in PostgreSQL
            sql += " LIMIT ?"
            params += (limit,)

        def load(conn: Connection) -> list[ActiveTask]:
            rows = conn.execute(sql, params)
            now_wall, now_mono = time.time(), time.monotonic()
            return [dependencies.active_from_row(r, now_wall, now_mono) for r in rows]

        return await self._read(load)

    async def get(self, task_id: str) -> TaskRecord | None:
        def get(conn: Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
            found = row.fetchone()
            return None if found is None else tasks_sql.row_to_record(found)

        return await self._read(get)

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        # Ids come from nodes too (outcomes of tasks no longer on the board), made up
        # ones among them: one holding a NUL names no task, and PostgreSQL refuses it
        # as a parameter, failing the read (and the node's stream with it).
        ids = [task_id for task_id in task_ids if _NUL not in task_id]
        return await self._read(lambda conn: tasks_sql.read(conn, ids)) if ids else {}

    async def list_tasks(
        self, task_filter: TaskFilter, limit: int, before_seq: int | None, max_bytes: int
    ) -> TaskPage:
        return await self._read(
            lambda conn: listing.read_page(conn, task_filter, limit, before_seq, max_bytes)
        )

    async def queue_stats(self, after: str = "", limit: int = 0) -> list[QueueStats]:
        def stats(conn: Connection) -> list[QueueStats]:
            counts: dict[str, dict[TaskState, int]] = {}
            most = limit or ALL_ROWS
            rows = conn.execute(finished.QUEUE_COUNTS, (after, most, after, most, most))
            for queue, state, n in rows:  # by name, in the database's order
                counts.setdefault(queue, {})[TaskState(state)] = n
            return [_queue_stats(name, c) for name, c in counts.items()]

        return await self._read(stats)

    async def queue_counts(self, name: str) -> QueueStats:
        def stats(conn: Connection) -> QueueStats:
            rows = conn.execute(finished.ONE_QUEUE_COUNTS, (name, name))
            return _queue_stats(name, {TaskState(state): n for state, n in rows})

        return await self._read(stats)


ALL_ROWS = 2**62
"""A LIMIT no store reaches: "no limit" in a statement that takes one."""


def _queue_stats(name: str, counts: dict[TaskState, int]) -> QueueStats:
    return QueueStats(
        name=name,
        queued=counts.get(TaskState.QUEUED, 0),
        running=counts.get(TaskState.LEASED, 0) + counts.get(TaskState.RUNNING, 0),
        succeeded=counts.get(TaskState.SUCCEEDED, 0),
        failed=counts.get(TaskState.FAILED, 0),
        cancelled=counts.get(TaskState.CANCELLED, 0),
        waiting=counts.get(TaskState.WAITING, 0),
    )
