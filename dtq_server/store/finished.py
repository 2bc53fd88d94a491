"""Counts of finished tasks per queue and state, kept in the ``finished_counts`` table.

ListQueues, the metrics endpoint and the web UI (every two seconds) show each
queue's tasks by state. Finished tasks are kept for their result TTL (a week by
default), so counting them in ``tasks`` read every one of them on every call:
~60 ms per million kept, however few were unfinished. Instead, every write that
finishes a task, sends a finished one back to its queue (retry) or deletes one
(purge, the retention sweep) adds its change to this table in the same
transaction, and a count is one row. Unfinished tasks are still counted in
``tasks``: there are only as many of them as the queues hold.

The writes that change a task's state are few and all in ``tasks_sql``,
``dependencies`` and the store's deletes; a fenced transition only ever starts
from an unfinished state, so it finishes a task or leaves it unfinished.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from dtq_server.models import TaskState
from dtq_server.store.connection import Connection

UNFINISHED_STATES = tuple(state for state in TaskState if not state.is_terminal)

Changes = Counter[tuple[str, TaskState]]
"""(queue, finished state) -> how many tasks entered it (negative: left it)."""

_ADD = (
    "INSERT INTO finished_counts (queue, state, n) VALUES (?, ?, ?) "
    "ON CONFLICT (queue, state) DO UPDATE SET n = finished_counts.n + excluded.n"
)


def add(conn: Connection, changes: Changes) -> None:
    """Add ``changes`` to the counts (inside the write's transaction)."""
    rows = [(queue, int(state), n) for (queue, state), n in changes.items() if n]
    if rows:
        conn.executemany(_ADD, rows)


def removed(rows: Iterable[tuple[str, int]]) -> Changes:
    """The changes for deleting tasks given as (queue, state) rows."""
    changes: Changes = Counter()
    for queue, state in rows:
        if TaskState(state).is_terminal:
            changes[queue, TaskState(state)] -= 1
    return changes


def _states(states: Iterable[TaskState]) -> str:
    return " UNION ALL ".join(f"SELECT {int(state)} AS state" for state in states)


QUEUE_COUNTS = f"""
WITH RECURSIVE names(queue) AS (
    SELECT min(queue) FROM tasks
    UNION ALL
    SELECT (SELECT min(queue) FROM tasks WHERE queue > names.queue)
    FROM names WHERE names.queue IS NOT NULL
)
SELECT names.queue, s.state,
    (SELECT count(*) FROM tasks WHERE queue = names.queue AND state = s.state)
FROM names, ({_states(UNFINISHED_STATES)}) AS s
WHERE names.queue IS NOT NULL
UNION ALL
SELECT queue, state, n FROM finished_counts WHERE n > 0
"""
"""(queue, state, tasks) for every queue holding tasks, in one statement (one snapshot):
the unfinished counted in ``tasks_queue_state`` queue by queue (each distinct queue
found with one index lookup), the finished read from ``finished_counts``."""
