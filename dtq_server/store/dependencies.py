"""Task dependencies in SQL (write functions run inside a group-commit transaction).

A waiting task has one ``dependencies`` row per unfinished task it depends on.
When a task finishes, its dependents are resolved in the SAME transaction: a
success removes the edge (and queues a dependent with no edges left); a
failure or cancellation fails or cancels each dependent, which cascades down
the graph. So the graph is never half-updated, whatever moment the process dies.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from dtq_server.errors import InvalidArgument
from dtq_server.models import ActiveTask, DependencyEvents, DependencyFailure, NewTask, TaskState
from dtq_server.store import finished
from dtq_server.store.connection import Connection, chunked

_PER_STATEMENT = 500
"""Tasks a statement of the settling takes (ids in an IN list, rows in a VALUES list)."""
ACTIVE_COLUMNS = (
    "id, seq, type, queue, state, attempt, max_attempts, failures, lease_expiries, "
    "retry_backoff_s, cancel_requested, session_id, node_id, next_attempt_at, priority, "
    "start_by, rate_key"
)


def active_from_row(r: Any, now_wall: float, now_mono: float) -> ActiveTask:
    """An ActiveTask from an ``ACTIVE_COLUMNS`` row."""
    return ActiveTask(
        id=r[0], seq=r[1], type=r[2], queue=r[3], state=TaskState(r[4]), attempt=r[5],
        max_attempts=r[6], failures=r[7], lease_expiries=r[8], retry_backoff_s=r[9],
        cancel_requested=bool(r[10]), session_id=r[11], node_id=r[12],
        # Wall time is stored; monotonic time is what the coordinator waits on.
        due_at=None if r[13] is None else now_mono + max(0.0, r[13] - now_wall),
        priority=r[14],
        start_by=None if r[15] is None else now_mono + max(0.0, r[15] - now_wall),
        rate_key=r[16],
    )  # fmt: skip


def initial_state(conn: Connection, task: NewTask, field: str) -> TaskState:
    """QUEUED, WAITING, or (a dependency already failed) FAILED / CANCELLED."""
    if not task.depends_on:
        return TaskState.QUEUED
    marks = ",".join("?" * len(task.depends_on))
    found = dict(
        conn.execute(f"SELECT id, state FROM tasks WHERE id IN ({marks})", task.depends_on)
    )
    missing = [i for i, dep in enumerate(task.depends_on) if dep not in found]
    if missing:
        raise InvalidArgument(
            [(f"{field}.depends_on[{i}]", "no task with that id") for i in missing]
        )
    states = {TaskState(s) for s in found.values()}
    if states & {TaskState.FAILED, TaskState.CANCELLED}:
        return _on_failure(task.on_dependency_failure)
    if states == {TaskState.SUCCEEDED}:
        return TaskState.QUEUED
    return TaskState.WAITING


def add_edges(conn: Connection, task: NewTask) -> None:
    """Record the unfinished dependencies of a WAITING task."""
    conn.executemany(
        # CAST: PostgreSQL cannot type a bare parameter in a SELECT list.
        "INSERT INTO dependencies (task_id, depends_on) "
        "SELECT CAST(? AS TEXT), id FROM tasks WHERE id = ? AND state NOT IN (4, 5, 6) "
        "ON CONFLICT DO NOTHING",
        [(task.id, dep) for dep in task.depends_on],
    )


def resolve(
    conn: Connection,
    task_id: str,
    state: TaskState,
    default_ttl_s: float,
    events: DependencyEvents,
) -> None:
    """``task_id`` just reached ``state``: settle every task waiting on it (cascading).

    The graph is settled a level at a time, a few hundred tasks per statement: one
    statement or four per task took 3.8 s of the writer (every submit and result
    waited) to cascade a failure to 100,000 tasks waiting on one.
    """
    now_wall, now_mono = time.time(), time.monotonic()
    # A waiting task cancelled directly no longer waits for anything.
    conn.execute("DELETE FROM dependencies WHERE task_id = ?", (task_id,))
    level: list[tuple[str, TaskState]] = [(task_id, state)]
    while level:
        ended: list[tuple[str, TaskState]] = []
        for chunk in chunked(level, _PER_STATEMENT):
            parents = dict(chunk)
            marks = ", ".join("?" * len(parents))
            rows = conn.execute(
                "SELECT d.depends_on, d.task_id, t.dependency_failure FROM dependencies d "
                f"JOIN tasks t ON t.id = d.task_id WHERE d.depends_on IN ({marks}) "
                "AND t.state = ? ORDER BY t.seq",
                (*parents, int(TaskState.WAITING)),
            ).fetchall()
            conn.execute(f"DELETE FROM dependencies WHERE depends_on IN ({marks})", [*parents])
            freed: dict[str, None] = {}
            failing: dict[str, tuple[str, TaskState]] = {}  # child -> its first failed parent
            for parent, child, policy in rows:
                if parents[parent] is TaskState.SUCCEEDED:
                    freed[child] = None
                else:
                    failing.setdefault(child, (parent, _FINAL[policy]))
            # Failures first: a task one parent freed and another failed ends failed.
            ended += _end(conn, failing, parents, now_wall, default_ttl_s)
            _unblock(conn, [c for c in freed if c not in failing], now_wall, now_mono, events)
        events.finished += [child for child, _ in ended]
        level = ended


def _unblock(
    conn: Connection,
    children: list[str],
    now_wall: float,
    now_mono: float,
    events: DependencyEvents,
) -> None:
    """Queue the children that wait for nothing else any more."""
    for chunk in chunked(children, _PER_STATEMENT):
        marks = ", ".join("?" * len(chunk))
        still = {
            row[0]
            for row in conn.execute(
                f"SELECT DISTINCT task_id FROM dependencies WHERE task_id IN ({marks})", chunk
            )
        }
        free = [child for child in chunk if child not in still]
        if not free:
            continue
        marks = ", ".join("?" * len(free))
        rows = conn.execute(
            f"UPDATE tasks SET state = ?, updated_at = ? WHERE id IN ({marks}) AND state = ? "
            f"RETURNING {ACTIVE_COLUMNS}",
            (int(TaskState.QUEUED), now_wall, *free, int(TaskState.WAITING)),
        ).fetchall()
        rows.sort(key=lambda r: r[1])  # in submission order
        events.unblocked += [active_from_row(r, now_wall, now_mono) for r in rows]


def _end(
    conn: Connection,
    failing: dict[str, tuple[str, TaskState]],
    parents: dict[str, TaskState],
    now_wall: float,
    default_ttl_s: float,
) -> list[tuple[str, TaskState]]:
    """Fail or cancel waiting children, each as its policy says, naming the parent that
    ended it; returns those it ended, with their final states."""
    ended: list[tuple[str, TaskState]] = []
    for chunk in chunked(list(failing.items()), _PER_STATEMENT):
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        params: list[Any] = [now_wall, now_wall, now_wall, default_ttl_s]
        for child, (parent, final) in chunk:
            reason = f"dependency {parent} ended {parents[parent].name.lower()}"
            params += (child, int(final), reason)
        params.append(int(TaskState.WAITING))
        rows = conn.execute(
            "UPDATE tasks SET state = g.column2, updated_at = ?, finished_at = ?, "
            "expires_at = ? + COALESCE(result_ttl_s, ?), error_type = 'DEPENDENCY_FAILED', "
            "error_message = g.column3, error_traceback = '', error_retryable = 0 "
            f"FROM (VALUES {values}) AS g WHERE tasks.id = g.column1 AND tasks.state = ? "
            "RETURNING tasks.id, tasks.queue",
            params,
        ).fetchall()
        children = [child for child, _ in chunk]
        marks = ", ".join("?" * len(children))
        conn.execute(f"DELETE FROM dependencies WHERE task_id IN ({marks})", children)
        finished.add(conn, Counter((queue, failing[task_id][1]) for task_id, queue in rows))
        ended += [(task_id, failing[task_id][1]) for task_id, _ in rows]
    return ended


def _on_failure(policy: DependencyFailure) -> TaskState:
    return TaskState.CANCELLED if policy is DependencyFailure.CANCEL else TaskState.FAILED


_FINAL = {int(policy): _on_failure(policy) for policy in DependencyFailure}
"""A dependant's final state by its stored ``dependency_failure``."""
