"""ListTasks pages: newest first, bounded in bytes and in the rows a page looks at.

A page is read in two steps, sizes first and then only the rows that fit in
the caller's byte budget, so a page of large tasks never holds every payload in
memory at once. A ``type`` or ``headers`` filter has no index to
answer it: such a page looks at one window of :data:`SCAN_ROWS` tasks in
submission order and, if it comes back short (or empty), leads on below the
window, so a page costs the same however many tasks are kept.
"""

from __future__ import annotations

from typing import Any

from dtq_server.models import TaskFilter, TaskPage
from dtq_server.store import tasks_sql
from dtq_server.store.connection import Connection
from dtq_server.store.schema import TASK_COLUMNS

SCAN_ROWS = 100_000
"""How far back in submission order one page looks when a type or header filter decides
which tasks match (a rare type made a page read every task kept, ~0.1 s per million,
past a client's deadline on a big enough store)."""

ROW_BYTES = (
    "512 + length(payload) + COALESCE(length(result), 0) + COALESCE(length(error_message), 0) "
    "+ COALESCE(length(error_traceback), 0) + COALESCE(length(headers), 0) "
    "+ COALESCE(length(depends_on), 0)"
)
"""About how many bytes a task's row takes in a message (text counted in characters)."""


def read_page(
    conn: Connection, task_filter: TaskFilter, limit: int, before_seq: int | None, max_bytes: int
) -> TaskPage:
    """Up to ``limit`` tasks matching ``task_filter`` submitted before ``before_seq``,
    newest first, holding about ``max_bytes`` at most (at least one task)."""
    below = window_floor(conn, before_seq) if scans(task_filter) else None
    sizes = conn.execute(*page_sizes(task_filter, before_seq, limit, below)).fetchall()
    take = fitting([size for _, size in sizes[:limit]], max_bytes)
    if take == 0:
        return TaskPage([], below)
    last = sizes[take - 1][0]
    rows = conn.execute(*page_rows(task_filter, before_seq, last, take))
    records = [tasks_sql.row_to_record(r) for r in rows]
    # Tasks submitted between the two reads push older ones down: past `last`
    # or not, the page ends at its own last task and the token leads on from it.
    more = len(sizes) > take or (bool(records) and records[-1].seq > last)
    if not records:  # purged between the two reads
        return TaskPage([], last if more else below)
    return TaskPage(records, records[-1].seq if more else below)


def scans(task_filter: TaskFilter) -> bool:
    """True if a page of ``task_filter`` looks at each task for a match (type, headers)."""
    return task_filter.type is not None or bool(task_filter.headers)


def window_floor(conn: Connection, before_seq: int | None) -> int | None:
    """The lowest seq a scanning page looks at (:data:`SCAN_ROWS` below its start), or
    None when that window reaches the oldest task kept."""
    # Two subqueries: each is one step down an end of the index; MAX and MIN in one
    # SELECT would make SQLite read every row.
    newest, oldest = conn.execute(
        "SELECT (SELECT MAX(seq) FROM tasks), (SELECT MIN(seq) FROM tasks)"
    ).fetchone()
    if newest is None:
        return None
    start = newest + 1 if before_seq is None else before_seq
    floor = start - SCAN_ROWS
    return floor if floor > oldest else None


def page_sizes(
    task_filter: TaskFilter, before_seq: int | None, limit: int, from_seq: int | None = None
) -> tuple[str, list[Any]]:
    """A page's first read: ``seq`` and :data:`ROW_BYTES` of up to ``limit + 1`` matching
    tasks, newest first (the extra one says whether more follow), submitted no earlier
    than ``from_seq``."""
    clause, params = tasks_sql.where(task_filter, before_seq, from_seq)
    return (
        f"SELECT seq, {ROW_BYTES} FROM tasks {clause} ORDER BY seq DESC LIMIT ?",
        [*params, limit + 1],
    )


def page_rows(
    task_filter: TaskFilter, before_seq: int | None, last_seq: int, take: int
) -> tuple[str, list[Any]]:
    """A page's second read: the ``take`` newest matching tasks down to ``last_seq``."""
    clause, params = tasks_sql.where(task_filter, before_seq, from_seq=last_seq)
    return f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY seq DESC LIMIT ?", [*params, take]


def fitting(sizes: list[int], max_bytes: int) -> int:
    """How many of ``sizes``, from the first, add up to at most ``max_bytes`` (at least one)."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > max_bytes:
            return max(count, 1)
    return len(sizes)
