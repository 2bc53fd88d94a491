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
from dtq_server.store.connection import Connection

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
    """``task_id`` just reached ``state``: settle every task waiting on it (cascading)."""
    now_wall, now_mono = time.time(), time.monotonic()
    # A waiting task cancelled directly no longer waits for anything.
    conn.execute("DELETE FROM dependencies WHERE task_id = ?", (task_id,))
    stack = [(task_id, state)]
    while stack:
        parent, parent_state = stack.pop()
        children = conn.execute(
            "SELECT d.task_id, t.dependency_failure FROM dependencies d "
            "JOIN tasks t ON t.id = d.task_id WHERE d.depends_on = ? AND t.state = ?",
            (parent, int(TaskState.WAITING)),
        ).fetchall()
        conn.execute("DELETE FROM dependencies WHERE depends_on = ?", (parent,))
        for child, policy in children:
            if parent_state is TaskState.SUCCEEDED:
                left = conn.execute(
                    "SELECT 1 FROM dependencies WHERE task_id = ? LIMIT 1", (child,)
                ).fetchone()
                if left is None:
                    row = conn.execute(
                        "UPDATE tasks SET state = ?, updated_at = ? WHERE id = ? AND state = ? "
                        f"RETURNING {ACTIVE_COLUMNS}",
                        (int(TaskState.QUEUED), now_wall, child, int(TaskState.WAITING)),
                    ).fetchone()
                    if row is not None:
                        events.unblocked.append(active_from_row(row, now_wall, now_mono))
                continue
            final = _on_failure(DependencyFailure(policy))
            ended = conn.execute(
                "UPDATE tasks SET state = ?, updated_at = ?, finished_at = ?, "
                "expires_at = ? + COALESCE(result_ttl_s, ?), error_type = 'DEPENDENCY_FAILED', "
                "error_message = ?, error_traceback = '', error_retryable = 0 "
                "WHERE id = ? AND state = ? RETURNING queue",
                (
                    int(final), now_wall, now_wall, now_wall, default_ttl_s,
                    f"dependency {parent} ended {parent_state.name.lower()}",
                    child, int(TaskState.WAITING),
                ),
            ).fetchone()  # fmt: skip
            if ended is not None:
                finished.add(conn, Counter({(ended[0], final): 1}))
            conn.execute("DELETE FROM dependencies WHERE task_id = ?", (child,))
            events.finished.append(child)
            stack.append((child, final))


def _on_failure(policy: DependencyFailure) -> TaskState:
    return TaskState.CANCELLED if policy is DependencyFailure.CANCEL else TaskState.FAILED
