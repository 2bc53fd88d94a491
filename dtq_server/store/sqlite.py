"""The embedded default store: SQLite in WAL mode, ``synchronous=FULL``, group commit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from dtq_server.errors import StoreUnavailable
from dtq_server.models import (
    ActiveTask,
    Assignment,
    DependencyEvents,
    GroupStatus,
    NewTask,
    QueueRoom,
    QueueSettings,
    QueueStats,
    RateLimit,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskState,
)
from dtq_server.schedules import Schedule
from dtq_server.store import dependencies, tasks_sql
from dtq_server.store import schedules as schedules_sql
from dtq_server.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TASK_COLUMNS
from dtq_server.store.writer import GroupCommitWriter
from dtq_server.updates import LeaseGrant, Transition

T = TypeVar("T")
log = structlog.get_logger(__name__)
BUSY_TIMEOUT_MS = 2000
ACTIVE_STATES = (TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING)
PROBE_BYTES = 1024 * 1024
"""Size of the write-health probe: the default largest payload."""


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StoreCorrupt(RuntimeError):
    """The database file exists but is not a usable DTQ database."""


class SqliteStore:
    """A :class:`~dtq_server.store.base.Store` on one SQLite file.

    Writes go through a :class:`GroupCommitWriter` thread; reads run on a
    separate reader thread (WAL lets them proceed during writes). Nothing here
    blocks the event loop.
    """

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        on_commit_result: Callable[[bool], None] | None = None,
        result_ttl_s: float = 7 * 86_400.0,
    ) -> None:
        self._path = path
        self._result_ttl_s = result_ttl_s
        self._on_dependencies: Callable[[DependencyEvents], None] | None = None
        self._synchronous = synchronous
        self._writer = GroupCommitWriter(
            self._connect_writer, on_commit_result, precheck=self._still_there
        )
        self._identity: tuple[int, int] | None = None
        """(st_dev, st_ino) of the database file the writer opened."""
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="dtq-store-reader")
        self._local = threading.local()

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            conn = self._open_checked()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self._path} is not a usable database: {exc}") from exc
        self._identity = _file_identity(self._path)
        return conn

    def _still_there(self) -> None:
        """Refuse to commit when the database file was removed, moved or replaced.

        SQLite keeps writing to an open file after its path is gone: everything
        acknowledged from then on would be missing at the next start
        (RELIABILITY D3). One ``stat`` per group commit; the store recovers on its
        own once the file is back where it was.
        """
        if _file_identity(self._path) != self._identity:
            raise sqlite3.OperationalError(f"{self._path} was removed or replaced")

    def _open_checked(self) -> sqlite3.Connection:
        """Open the write connection; create the schema only in a new, empty file."""
        existed = self._path.exists() and self._path.stat().st_size > 0
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreCorrupt(f"{self._path}: could not enable WAL (journal mode {mode})")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if existed and version == 0:
                raise StoreCorrupt(f"{self._path} exists but is not a DTQ database")
            if version > SCHEMA_VERSION:
                raise StoreCorrupt(
                    f"{self._path} has schema version {version}; this DTQ knows {SCHEMA_VERSION}"
                )
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreCorrupt(f"{self._path} failed its integrity check: {check}")
            if version == 0:
                conn.executescript(SCHEMA)
                version = 1
            for number, migration in enumerate(MIGRATIONS[version - 1 :], start=version + 1):
                conn.executescript(f"BEGIN; {migration}; PRAGMA user_version = {number}; COMMIT;")
                log.info("store.migrated", version=number)
        except BaseException:
            conn.close()
            raise
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"the store could not read: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._writer.start)

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)

        def close_reader() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()

        await asyncio.get_running_loop().run_in_executor(self._reader_pool, close_reader)
        self._reader_pool.shutdown(wait=True)

    # -- writes ------------------------------------------------------------

    async def insert(
        self,
        tasks: list[NewTask],
        batch: bool = False,
        leased: Mapping[str, LeaseGrant] | None = None,
        room: Mapping[str, QueueRoom] | None = None,
    ) -> list[tuple[TaskRecord, bool]]:
        ttl = self._result_ttl_s
        grants = leased or {}
        return await self._writer.run(
            lambda conn: tasks_sql.insert(conn, tasks, batch, ttl, grants, room or {})
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

        def apply(conn: sqlite3.Connection) -> tuple[list[bool], dict[str, TaskRecord]]:
            applied = tasks_sql.apply(conn, transitions, ttl, events)
            return applied, tasks_sql.read(conn, read) if read else {}

        applied, records = await self._writer.run(apply)
        if events and self._on_dependencies is not None:
            self._on_dependencies(events)  # committed: memory may follow
        return applied, records

    def set_dependency_listener(self, listener: Callable[[DependencyEvents], None]) -> None:
        self._on_dependencies = listener

    async def group_status(self, group_id: str) -> GroupStatus | None:
        def status(conn: sqlite3.Connection) -> GroupStatus | None:
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

    async def delete(self, task_filter: TaskFilter) -> int:
        where, params = tasks_sql.where(task_filter)

        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM tasks {where}", params).rowcount

        return await self._writer.run(delete)

    async def delete_expired(self, now: float, limit: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks "
                "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                (now, limit),
            ).rowcount

        return await self._writer.run(delete)

    async def save_queue(self, name: str, settings: QueueSettings) -> None:
        def save(conn: sqlite3.Connection) -> None:
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
        def load(conn: sqlite3.Connection) -> dict[str, QueueSettings]:
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

        def declare(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO task_types (queue, type, declared_at) VALUES (?, ?, ?)",
                rows,
            )

        await self._writer.run(declare)

    async def load_task_types(self) -> set[tuple[str, str]]:
        def load(conn: sqlite3.Connection) -> set[tuple[str, str]]:
            rows = conn.execute("SELECT queue, type FROM task_types")
            return {(queue, type_) for queue, type_ in rows}

        return await self._read(load)

    # -- schedules -----------------------------------------------------------

    async def create_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        return await self._writer.run(lambda conn: schedules_sql.create(conn, schedule))

    async def load_schedules(self) -> list[Schedule]:
        return await self._read(schedules_sql.load_all)

    async def fire_schedule(
        self,
        name: str,
        expected_next: float,
        next_at: float,
        ticks: list[float],
        tasks: list[NewTask],
    ) -> list[tuple[TaskRecord, bool]] | None:
        def fire(conn: sqlite3.Connection) -> list[tuple[TaskRecord, bool]] | None:
            # One commit for the tasks and the schedule's new position: a tick is
            # never fired twice, nor lost, whatever moment the process dies.
            if not schedules_sql.advance(conn, name, expected_next, next_at, ticks):
                return None
            # No room check: a queue's max depth refuses submits, not the schedule's ticks.
            return tasks_sql.insert(conn, tasks, False, self._result_ttl_s, {}, {})

        return await self._writer.run(fire)

    async def set_schedule_paused(self, name: str, paused: bool, next_at: float) -> bool:
        return await self._writer.run(
            lambda conn: schedules_sql.set_paused(conn, name, paused, next_at)
        )

    async def delete_schedule(self, name: str) -> bool:
        return await self._writer.run(lambda conn: schedules_sql.delete(conn, name))

    async def save_rate_limit(self, limit: RateLimit) -> None:
        def save(conn: sqlite3.Connection) -> None:
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

    async def load_rate_limits(self) -> list[RateLimit]:
        def load(conn: sqlite3.Connection) -> list[RateLimit]:
            rows = conn.execute("SELECT key, per_second, burst FROM rate_limits ORDER BY key")
            return [RateLimit(key, rate, burst) for key, rate, burst in rows]

        return await self._read(load)

    async def find_ids(self, task_filter: TaskFilter, limit: int) -> list[str]:
        where, params = tasks_sql.where(task_filter)

        def find(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT id FROM tasks {where} ORDER BY seq LIMIT ?", (*params, limit)
            )
            return [r[0] for r in rows]

        return await self._read(find)

    async def check_writable(self) -> None:
        # A commit that changes nothing writes nothing, and succeeds on a full disk.
        # The probe writes (and drops again, in the same transaction) a largest-payload
        # blob, so it commits only when a full-size submit could (RELIABILITY D1).
        def probe(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE dtq_store_probe (data BLOB)")
            conn.execute("INSERT INTO dtq_store_probe VALUES (zeroblob(?))", (PROBE_BYTES,))
            conn.execute("DROP TABLE dtq_store_probe")

        await self._writer.run(probe)

    # -- reads -------------------------------------------------------------

    async def load_active(
        self, states: tuple[TaskState, ...] = ACTIVE_STATES, after_seq: int = 0, limit: int = -1
    ) -> list[ActiveTask]:
        marks = ", ".join(str(int(state)) for state in states)
        sql = (
            f"SELECT {dependencies.ACTIVE_COLUMNS} FROM tasks "
            f"WHERE state IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?"
        )

        def load(conn: sqlite3.Connection) -> list[ActiveTask]:
            rows = conn.execute(sql, (after_seq, limit))
            now_wall, now_mono = time.time(), time.monotonic()
            return [dependencies.active_from_row(r, now_wall, now_mono) for r in rows]

        return await self._read(load)

    async def get(self, task_id: str) -> TaskRecord | None:
        def get(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
            found = row.fetchone()
            return None if found is None else tasks_sql.row_to_record(found)

        return await self._read(get)

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskRecord]:
        ids = list(task_ids)
        return await self._read(lambda conn: tasks_sql.read(conn, ids)) if ids else {}

    async def list_tasks(
        self, task_filter: TaskFilter, limit: int, before_seq: int | None
    ) -> TaskPage:
        where, params = tasks_sql.where(task_filter, before_seq)
        sql = f"SELECT {TASK_COLUMNS} FROM tasks {where} ORDER BY seq DESC LIMIT ?"

        def list_(conn: sqlite3.Connection) -> TaskPage:
            rows = conn.execute(sql, (*params, limit + 1)).fetchall()
            records = [tasks_sql.row_to_record(r) for r in rows[:limit]]
            more = len(rows) > limit
            return TaskPage(records, records[-1].seq if more and records else None)

        return await self._read(list_)

    async def queue_stats(self) -> list[QueueStats]:
        def stats(conn: sqlite3.Connection) -> list[QueueStats]:
            counts: dict[str, dict[TaskState, int]] = {}
            for queue, state, n in conn.execute(
                "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state"
            ):
                counts.setdefault(queue, {})[TaskState(state)] = n
            return [
                QueueStats(
                    name=name,
                    queued=c.get(TaskState.QUEUED, 0),
                    running=c.get(TaskState.LEASED, 0) + c.get(TaskState.RUNNING, 0),
                    succeeded=c.get(TaskState.SUCCEEDED, 0),
                    failed=c.get(TaskState.FAILED, 0),
                    cancelled=c.get(TaskState.CANCELLED, 0),
                    waiting=c.get(TaskState.WAITING, 0),
                )
                for name, c in sorted(counts.items())
            ]

        return await self._read(stats)
