"""What a chaos run leaves behind, read back: witness lines, coordinator events, SQLite rows.

- The *witness* (tests/handlers.py) has one line per handler execution:
  task id, attempt, node id, pid and ``time.monotonic()`` (``span`` tasks add
  an ``end`` line, which is not an execution of its own).
- The coordinator's *event log* is its ``--log-format json`` output: one JSON
  object per line; ``lease.granted`` / ``lease.ended`` / ``lease.lost`` carry a
  ``mono`` timestamp (the coordinator's ``time.monotonic()``, which on Linux is
  the same clock the harness and the witness read).
- The *store* is read directly: the SQLite file with ``sqlite3`` (WAL mode lets
  a reader look while the coordinator writes), a PostgreSQL database (a
  ``postgresql://`` URL) with psycopg; its ``tasks`` table has the same columns.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from dtq_server.models import TaskState

DB_NAME = "dtq.sqlite3"
DB_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")


@dataclass(frozen=True)
class Execution:
    """One witness line: a handler ran (task_id, attempt) on node_id at ts."""

    task_id: str
    attempt: int
    node_id: str
    pid: int
    ts: float


def witness_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Every witness line so far, parsed (a torn last line from a killed node is skipped)."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_witness(path: Path) -> list[Execution]:
    """Every execution recorded so far."""
    return [
        Execution(raw["task_id"], raw["attempt"], raw["node_id"], raw["pid"], raw["ts"])
        for raw in witness_lines(path)
        if raw.get("event") != "end"  # the second line of a ``span`` execution
    ]


def duplicates(executions: Iterable[Execution]) -> int:
    """Sum over tasks of (executions - 1): runs beyond the first."""
    per_task = Counter(e.task_id for e in executions)
    return sum(n - 1 for n in per_task.values())


def read_events(*logs: Path, kinds: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """JSON events from coordinator logs, in file order; other lines are skipped."""
    events = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by kill -9
            if kinds is None or event.get("event") in kinds:
                events.append(event)
    return events


@dataclass(frozen=True)
class TaskRow:
    """The columns of ``tasks`` the checker needs."""

    id: str
    state: TaskState
    attempt: int
    max_attempts: int
    failures: int
    lease_expiries: int
    idempotency_key: str | None
    result: bytes | None
    error_type: str | None
    node_id: str | None

    def result_json(self) -> Any:
        """The result decoded as JSON, or None."""
        return json.loads(self.result) if self.result else None


TASK_COLUMNS = (
    "SELECT id, state, attempt, max_attempts, failures, lease_expiries, "
    "idempotency_key, result, error_type, node_id FROM tasks"
)

Store = Path | str
"""Where the tasks are: the SQLite file, or the URL of a PostgreSQL database."""


def is_postgres(db: Store) -> bool:
    """True if ``db`` is a PostgreSQL URL rather than a file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def read_tasks(db: Store) -> dict[str, TaskRow]:
    """Every task in the SQLite file ``db`` (or the PostgreSQL database at that URL), by id."""
    rows: list[Any]
    if is_postgres(db):
        with psycopg.connect(str(db), connect_timeout=10) as pg:
            rows = pg.execute(TASK_COLUMNS).fetchall()
    else:
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
            rows = conn.execute(TASK_COLUMNS).fetchall()
    return {
        r[0]: TaskRow(r[0], TaskState(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
        for r in rows
    }


def integrity_check(db: Path) -> str:
    """``PRAGMA integrity_check`` of ``db``: "ok" when the file is sound."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "\n".join(str(r[0]) for r in rows)


def snapshot_db(data_dir: Path, into: Path) -> Path:
    """Copy the database with its -wal and -shm (after a crash, before a restart)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, into / name)
    return into / DB_NAME


def in_flight(db: Store) -> set[str]:
    """Ids of the tasks a snapshot (or a live database) shows LEASED or RUNNING."""
    held = (TaskState.LEASED, TaskState.RUNNING)
    return {t.id for t in read_tasks(db).values() if t.state in held}
