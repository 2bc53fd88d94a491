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
WITH RECURSIVE names(queue, k) AS (
    SELECT (SELECT min(queue) FROM tasks WHERE queue > ?), 1
    UNION ALL
    SELECT (SELECT min(queue) FROM tasks WHERE queue > names.queue), names.k + 1
    FROM names WHERE names.queue IS NOT NULL AND names.k < ?
),
listed(queue) AS (
    SELECT queue FROM (
        SELECT queue FROM names WHERE queue IS NOT NULL
        UNION
        SELECT name FROM (SELECT name FROM queues WHERE name > ? ORDER BY name LIMIT ?) AS q
    ) AS u ORDER BY queue LIMIT ?
)
SELECT listed.queue, s.state,
    (SELECT count(*) FROM tasks WHERE queue = listed.queue AND state = s.state)
FROM listed, ({_states(UNFINISHED_STATES)}) AS s
UNION ALL
SELECT f.queue, f.state, f.n FROM finished_counts f JOIN listed ON f.queue = listed.queue
WHERE f.n > 0
ORDER BY 1
"""
"""(queue, state, tasks) for the first queues named after a name that hold tasks or have
settings, ordered by name, in one statement (one snapshot); parameters: after, how many,
after, how many, how many. The queues with tasks are found in ``tasks_queue_state`` (each
next one with one index lookup), those with settings in ``queues``. The unfinished are
counted queue by queue in that index, the finished read from ``finished_counts``.

The order is the database's (PostgreSQL's may follow a locale), and so is that of a
page's token, ``name > ?``: the pages of a listing never skip or repeat a queue."""

ONE_QUEUE_COUNTS = f"""
SELECT s.state, (SELECT count(*) FROM tasks WHERE queue = ? AND state = s.state)
FROM ({_states(UNFINISHED_STATES)}) AS s
UNION ALL
SELECT state, n FROM finished_counts WHERE queue = ? AND n > 0
"""
"""(state, tasks) of one queue; parameters: the name, twice."""
