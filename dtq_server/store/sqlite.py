"""The embedded default store: SQLite in WAL mode, ``synchronous=FULL``, group commit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from dtq_server.errors import IdempotencyKeyReused, StoreUnavailable
from dtq_server.models import (
    ActiveTask,
    Assignment,
    DependencyEvents,
    GroupStatus,
    Lease,
    NewTask,
    Progress,
    QueueSettings,
    QueueStats,
    RateLimit,
    TaskError,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskState,
)
from dtq_server.schedules import Schedule
from dtq_server.store import dependencies
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


def _row_to_record(row: Sequence[Any]) -> TaskRecord:
    (
        task_id, seq, type_, queue, payload, content_type, state, attempt, max_attempts,
        failures, key, backoff, result, result_ct, err_type, err_msg, err_tb, err_retry,
        node_id, session_id, expiries, cancel_requested, p_percent, p_message, created_at,
        updated_at, started_at, finished_at, next_attempt_at, priority, run_at,
        execution_timeout_s, expires_at, rate_key, depends_on, group_id,
    ) = row  # fmt: skip
    return TaskRecord(
        id=task_id,
        seq=seq,
        type=type_,
        queue=queue,
        payload=bytes(payload),
        content_type=content_type,
        state=TaskState(state),
        attempt=attempt,
        max_attempts=max_attempts,
        failures=failures,
        idempotency_key=key,
        retry_backoff_s=backoff,
        result=None if result is None else bytes(result),
        result_content_type=result_ct or "",
        last_error=None
        if err_type is None
        else TaskError(err_type, err_msg or "", err_tb or "", bool(err_retry)),
        node_id=node_id,
        session_id=session_id,
        lease_expiries=expiries,
        cancel_requested=bool(cancel_requested),
        progress=None if p_percent is None else Progress(p_percent, p_message or ""),
        created_at=created_at,
        updated_at=updated_at,
        started_at=started_at,
        finished_at=finished_at,
        next_attempt_at=next_attempt_at,
        priority=priority,
        run_at=run_at,
        execution_timeout_s=execution_timeout_s,
        expires_at=expires_at,
        rate_key=rate_key,
        depends_on=tuple(depends_on.split(",")) if depends_on else (),
        group_id=group_id,
    )


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
        self, tasks: list[NewTask], batch: bool = False
    ) -> list[tuple[TaskRecord, bool]]:
        ttl = self._result_ttl_s
        return await self._writer.run(lambda conn: _insert(conn, tasks, batch, ttl))

    async def lease(self, grants: list[LeaseGrant]) -> list[Assignment]:
        return await self._writer.run(lambda conn: _lease(conn, grants))

    async def apply(self, transitions: list[Transition]) -> list[bool]:
        ttl = self._result_ttl_s
        events = DependencyEvents()
        applied = await self._writer.run(lambda conn: _apply(conn, transitions, ttl, events))
        if events and self._on_dependencies is not None:
            self._on_dependencies(events)  # committed: memory may follow
        return applied

    def set_dependency_listener(self, listener: Callable[[DependencyEvents], None]) -> None:
        self._on_dependencies = listener

    async def group_status(self, group_id: str) -> GroupStatus | None:
        def status(conn: sqlite3.Connection) -> GroupStatus | None:
            rows = conn.execute(
                "SELECT id, state FROM tasks WHERE group_id = ? ORDER BY seq", (group_id,)
            ).fetchall()
            if not rows:
                return None
            counts: dict[TaskState, int] = {}
            for _, state in rows:
                counts[TaskState(state)] = counts.get(TaskState(state), 0) + 1
            return GroupStatus(group_id, [r[0] for r in rows], counts)

        return await self._read(status)

    async def retry(self, task_ids: list[str]) -> list[ActiveTask]:
        return await self._writer.run(lambda conn: _retry(conn, task_ids))

    async def delete(self, task_filter: TaskFilter) -> int:
        where, params = _where(task_filter)

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
                "INSERT INTO queues (name, paused, max_running, rate_limit) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, "
                "max_running = excluded.max_running, rate_limit = excluded.rate_limit",
                (name, int(settings.paused), settings.max_running, settings.rate_limit),
            )

        await self._writer.run(save)

    async def load_queues(self) -> dict[str, QueueSettings]:
        def load(conn: sqlite3.Connection) -> dict[str, QueueSettings]:
            rows = conn.execute("SELECT name, paused, max_running, rate_limit FROM queues")
            return {
                name: QueueSettings(bool(paused), limit, rate) for name, paused, limit, rate in rows
            }

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
            return _insert(conn, tasks, False, self._result_ttl_s)

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
        where, params = _where(task_filter)

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
            return None if found is None else _row_to_record(found)

        return await self._read(get)

    async def list_tasks(
        self, task_filter: TaskFilter, limit: int, before_seq: int | None
    ) -> TaskPage:
        where, params = _where(task_filter, before_seq)
        sql = f"SELECT {TASK_COLUMNS} FROM tasks {where} ORDER BY seq DESC LIMIT ?"

        def list_(conn: sqlite3.Connection) -> TaskPage:
            rows = conn.execute(sql, (*params, limit + 1)).fetchall()
            records = [_row_to_record(r) for r in rows[:limit]]
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


# -- write functions (run on the writer thread, inside a transaction) ---------


def _insert(
    conn: sqlite3.Connection, tasks: list[NewTask], batch: bool, default_ttl_s: float
) -> list[tuple[TaskRecord, bool]]:
    now = time.time()
    out: list[tuple[TaskRecord, bool]] = []
    for index, t in enumerate(tasks):
        start_by = None
        if t.schedule_to_start_s is not None:
            start_by = (t.run_at or now) + t.schedule_to_start_s
        if t.idempotency_key is not None:
            found = conn.execute(
                f"SELECT {TASK_COLUMNS}, spec_hash FROM tasks WHERE idempotency_key = ?",
                (t.idempotency_key,),
            ).fetchone()
            if found is not None:
                existing = _row_to_record(found[:-1])
                if bytes(found[-1]) != t.spec_hash:
                    raise IdempotencyKeyReused(t.idempotency_key, existing.id)
                out.append((existing, False))
                continue
        state = dependencies.initial_state(conn, t, f"tasks[{index}]" if batch else "task")
        error = None
        finished_at = expires_at = None
        if state.is_terminal:  # a dependency already failed
            error = TaskError("DEPENDENCY_FAILED", "a dependency had already failed", "", False)
            finished_at = now
            expires_at = now + (t.result_ttl_s or default_ttl_s)
        cur = conn.execute(
            "INSERT INTO tasks (id, type, queue, payload, content_type, state, max_attempts, "
            "idempotency_key, spec_hash, retry_backoff_s, created_at, updated_at, priority, "
            "run_at, next_attempt_at, execution_timeout_s, start_by, result_ttl_s, rate_key, "
            "group_id, depends_on, dependency_failure, finished_at, expires_at, error_type, "
            "error_message, error_traceback, error_retryable) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)",
            (
                t.id, t.type, t.queue, t.payload, t.content_type, int(state),
                t.max_attempts, t.idempotency_key, t.spec_hash, t.retry_backoff_s, now, now,
                t.priority, t.run_at, t.run_at, t.execution_timeout_s, start_by, t.result_ttl_s,
                t.rate_key, t.group_id, ",".join(t.depends_on), int(t.on_dependency_failure),
                finished_at, expires_at, error and error.type, error and error.message,
                error and "", error and 0,
            ),
        )  # fmt: skip
        if state is TaskState.WAITING:
            dependencies.add_edges(conn, t)
        seq = cur.lastrowid
        assert seq is not None
        record = TaskRecord(
            id=t.id, seq=seq, type=t.type, queue=t.queue, payload=t.payload,
            content_type=t.content_type, state=state, attempt=0, max_attempts=t.max_attempts,
            failures=0, idempotency_key=t.idempotency_key, retry_backoff_s=t.retry_backoff_s,
            result=None, result_content_type="", last_error=error, node_id=None,
            session_id=None, lease_expiries=0, cancel_requested=False, progress=None,
            created_at=now, updated_at=now, started_at=None, finished_at=finished_at,
            next_attempt_at=t.run_at, priority=t.priority, run_at=t.run_at,
            execution_timeout_s=t.execution_timeout_s, expires_at=expires_at,
            rate_key=t.rate_key, depends_on=t.depends_on, group_id=t.group_id,
        )  # fmt: skip
        out.append((record, True))
    return out


def _lease(conn: sqlite3.Connection, grants: list[LeaseGrant]) -> list[Assignment]:
    now = time.time()
    out: list[Assignment] = []
    for g in grants:
        row = conn.execute(
            "UPDATE tasks SET state = ?, attempt = ?, node_id = ?, session_id = ?, "
            "updated_at = ?, started_at = NULL, next_attempt_at = NULL, "
            "progress_percent = NULL, progress_message = NULL "
            "WHERE id = ? AND state = ? AND attempt = ? "
            "RETURNING type, queue, payload, content_type, max_attempts, created_at, "
            "execution_timeout_s, priority",
            (
                int(TaskState.LEASED),
                g.attempt,
                g.node_id,
                g.session_id,
                now,
                g.task_id,
                int(TaskState.QUEUED),
                g.attempt - 1,
            ),
        ).fetchone()
        if row is not None:
            out.append(
                Assignment(
                    lease=Lease(g.task_id, g.attempt),
                    type=row[0],
                    queue=row[1],
                    payload=bytes(row[2]),
                    content_type=row[3],
                    max_attempts=row[4],
                    created_at=row[5],
                    execution_timeout_s=row[6],
                    priority=row[7],
                )
            )
    return out


def _apply(
    conn: sqlite3.Connection,
    transitions: list[Transition],
    default_ttl_s: float,
    events: DependencyEvents,
) -> list[bool]:
    now = time.time()
    applied: list[bool] = []
    for t in transitions:
        sets, params = _assignments(t, now)
        if t.state is not None and t.state.is_terminal:
            # Finished tasks are kept for their result TTL, then swept.
            sets.append("expires_at = ? + COALESCE(result_ttl_s, ?)")
            params += [now, default_ttl_s]
        states = ", ".join(str(int(s)) for s in t.from_states)
        cur = conn.execute(
            f"UPDATE tasks SET {', '.join(sets)} "
            f"WHERE id = ? AND attempt = ? AND state IN ({states})",
            (*params, t.task_id, t.attempt),
        )
        applied.append(cur.rowcount == 1)
        if cur.rowcount == 1 and t.state is not None and t.state.is_terminal:
            dependencies.resolve(conn, t.task_id, t.state, default_ttl_s, events)
    return applied


def _assignments(t: Transition, now: float) -> tuple[list[str], list[Any]]:
    """The SET clause of a transition: only the fields it changes."""
    changes: dict[str, Any] = {"updated_at": now}
    if t.state is not None:
        changes["state"] = int(t.state)
        if t.state.is_terminal:
            changes["finished_at"] = now
    if t.failures is not None:
        changes["failures"] = t.failures
    if t.lease_expiries is not None:
        changes["lease_expiries"] = t.lease_expiries
    if t.result is not None:
        changes["result"] = t.result
        changes["result_content_type"] = t.result_content_type or ""
    if t.error is not None:
        changes["error_type"] = t.error.type
        changes["error_message"] = t.error.message
        changes["error_traceback"] = t.error.traceback
        changes["error_retryable"] = int(t.error.retryable)
    if t.progress is not None:
        changes["progress_percent"] = t.progress.percent
        changes["progress_message"] = t.progress.message
    if t.cancel_requested is not None:
        changes["cancel_requested"] = int(t.cancel_requested)
    if t.clear_lease:
        changes["session_id"] = None
    if t.started:
        changes["started_at"] = now
    if t.next_attempt_at is not None:
        changes["next_attempt_at"] = t.next_attempt_at
    return [f"{column} = ?" for column in changes], list(changes.values())


def _where(task_filter: TaskFilter, before_seq: int | None = None) -> tuple[str, list[Any]]:
    """A WHERE clause for a filter (empty when nothing is filtered)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("queue", task_filter.queue),
        ("type", task_filter.type),
        ("state", None if task_filter.state is None else int(task_filter.state)),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _retry(conn: sqlite3.Connection, task_ids: list[str]) -> list[ActiveTask]:
    """Send finished-unsuccessfully tasks back to the queue with a fresh budget."""
    now = time.time()
    out: list[ActiveTask] = []
    for task_id in task_ids:
        row = conn.execute(
            "UPDATE tasks SET state = ?, failures = 0, lease_expiries = 0, cancel_requested = 0, "
            "session_id = NULL, finished_at = NULL, expires_at = NULL, next_attempt_at = NULL, "
            "run_at = NULL, start_by = NULL, updated_at = ? WHERE id = ? AND state IN (?, ?) "
            "RETURNING id, seq, type, queue, attempt, max_attempts, retry_backoff_s, priority, "
            "node_id, rate_key",
            (int(TaskState.QUEUED), now, task_id, int(TaskState.FAILED), int(TaskState.CANCELLED)),
        ).fetchone()
        if row is not None:
            out.append(
                ActiveTask(
                    id=row[0],
                    seq=row[1],
                    type=row[2],
                    queue=row[3],
                    state=TaskState.QUEUED,
                    attempt=row[4],
                    max_attempts=row[5],
                    failures=0,
                    lease_expiries=0,
                    retry_backoff_s=row[6],
                    priority=row[7],
                    node_id=row[8],
                    rate_key=row[9],
                )
            )
    return out
