"""SQL for the tasks table: row mapping, and the write functions the store runs on its
group-commit thread (each inside the batch's transaction)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dtq_server.errors import IdempotencyKeyReused
from dtq_server.models import (
    ActiveTask,
    Assignment,
    DependencyEvents,
    Headers,
    Lease,
    NewTask,
    Progress,
    QueuePlaces,
    TaskError,
    TaskFilter,
    TaskRecord,
    TaskState,
)
from dtq_server.store import binding, dependencies, finished
from dtq_server.store.connection import Connection, chunked
from dtq_server.store.schema import TASK_COLUMNS
from dtq_server.updates import LeaseGrant, Transition
from dtq_server.validation import spec_field


def row_to_record(row: Sequence[Any]) -> TaskRecord:
    (
        task_id, seq, type_, queue, payload, content_type, state, attempt, max_attempts,
        failures, key, backoff, result, result_ct, err_type, err_msg, err_tb, err_retry,
        node_id, session_id, expiries, cancel_requested, p_percent, p_message, created_at,
        updated_at, started_at, finished_at, next_attempt_at, priority, run_at,
        execution_timeout_s, expires_at, rate_key, depends_on, group_id, submitted_by,
        headers,
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
        submitted_by=submitted_by,
        headers=headers_from_column(headers),
    )


def headers_to_column(headers: Headers) -> str | None:
    """A task's headers as stored: a JSON object (keys sorted), NULL when there are none."""
    return json.dumps(dict(headers), separators=(",", ":")) if headers else None


def headers_from_column(value: str | None) -> Headers:
    """The headers stored by :func:`headers_to_column`."""
    return tuple(sorted(json.loads(value).items())) if value else ()


_INSERT = (
    "INSERT INTO tasks (seq, id, type, queue, payload, content_type, state, attempt, "
    "node_id, session_id, max_attempts, "
    "idempotency_key, spec_hash, retry_backoff_s, created_at, updated_at, priority, "
    "run_at, next_attempt_at, execution_timeout_s, start_by, result_ttl_s, rate_key, "
    "group_id, depends_on, dependency_failure, finished_at, expires_at, error_type, "
    "error_message, error_traceback, error_retryable, submitted_by, headers) "
)
"""Followed by a VALUES clause with each row's NULLs written in (see binding)."""
_KEYS_PER_QUERY = 500


def insert(
    conn: Connection,
    tasks: list[NewTask],
    batch: bool,
    default_ttl_s: float,
    leased: Mapping[str, LeaseGrant],
    places: QueuePlaces | None,
) -> list[tuple[TaskRecord, bool]]:
    """Store new tasks (one ``executemany``); a known idempotency key returns its task.

    Before writing anything, ``places`` takes a place for each new unfinished
    task in a queue with a maximum depth, or raises QueueFull. Tasks found by
    their key add nothing, so a resubmit is answered even when its queue is full.

    A task granted in ``leased`` is stored leased (attempt 1, its node and
    session): it goes straight to an idle node, one commit instead of two.

    Rows get explicit, consecutive ``seq`` values after the current largest:
    what SQLite would pick, but known up front, so the whole batch goes to
    SQLite in one call instead of one ``execute`` (and one key lookup) per task.
    """
    now = time.time()
    known = _by_key(conn, [t.idempotency_key for t in tasks if t.idempotency_key is not None])
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]
    rows: list[tuple[Any, ...]] = []
    waiting: list[NewTask] = []
    out: list[tuple[TaskRecord, bool]] = []
    for index, t in enumerate(tasks):
        if t.idempotency_key is not None and t.idempotency_key in known:
            existing, spec_hash = known[t.idempotency_key]
            if spec_hash != t.spec_hash:
                raise IdempotencyKeyReused(t.idempotency_key, existing.id)
            out.append((existing, False))
            continue
        start_by = None
        if t.schedule_to_start_s is not None:
            start_by = (t.run_at or now) + t.schedule_to_start_s
        state = dependencies.initial_state(conn, t, spec_field(index, batch))
        error = None
        finished_at = expires_at = None
        if state.is_terminal:  # a dependency already failed
            error = TaskError("DEPENDENCY_FAILED", "a dependency had already failed", "", False)
            finished_at = now
            expires_at = now + (t.result_ttl_s or default_ttl_s)
        elif state is TaskState.WAITING:
            waiting.append(t)
        grant = leased.get(t.id)
        attempt, node_id, session_id = 0, None, None
        if grant is not None and state is TaskState.QUEUED:
            state, attempt = TaskState.LEASED, grant.attempt
            node_id, session_id = grant.node_id, grant.session_id
        seq += 1
        rows.append(
            (
                seq, t.id, t.type, t.queue, binding.blob(t.payload), t.content_type, int(state),
                attempt, node_id, session_id, t.max_attempts, t.idempotency_key,
                binding.blob(t.spec_hash),
                t.retry_backoff_s, now, now,
                t.priority, t.run_at, t.run_at, t.execution_timeout_s, start_by, t.result_ttl_s,
                t.rate_key, t.group_id, ",".join(t.depends_on), int(t.on_dependency_failure),
                finished_at, expires_at, error and error.type, error and error.message,
                error and "", error and 0, t.submitted_by, headers_to_column(t.headers),
            )
        )  # fmt: skip
        record = TaskRecord(
            id=t.id, seq=seq, type=t.type, queue=t.queue, payload=t.payload,
            content_type=t.content_type, state=state, attempt=attempt,
            max_attempts=t.max_attempts, failures=0, idempotency_key=t.idempotency_key,
            retry_backoff_s=t.retry_backoff_s, result=None, result_content_type="",
            last_error=error, node_id=node_id, session_id=session_id, lease_expiries=0,
            cancel_requested=False, progress=None,
            created_at=now, updated_at=now, started_at=None, finished_at=finished_at,
            next_attempt_at=t.run_at, priority=t.priority, run_at=t.run_at,
            execution_timeout_s=t.execution_timeout_s, expires_at=expires_at,
            rate_key=t.rate_key, depends_on=t.depends_on, group_id=t.group_id,
            submitted_by=t.submitted_by, headers=t.headers,
        )  # fmt: skip
        out.append((record, True))
    if places is not None:
        _take_places(out, places)
    for nulls, values in binding.by_nulls(rows).items():
        conn.executemany(_INSERT + binding.values_clause(nulls), values)
    for t in waiting:
        dependencies.add_edges(conn, t)
    finished.add(
        conn,
        Counter((r.queue, r.state) for r, created in out if created and r.state.is_terminal),
    )
    return out


def _take_places(out: list[tuple[TaskRecord, bool]], places: QueuePlaces) -> None:
    """Take a place for each unfinished task about to be created in a limited queue."""
    adding = Counter(
        record.queue
        for record, created in out
        if created
        and record.queue in places.limits
        and record.state in (TaskState.QUEUED, TaskState.LEASED)  # not WAITING, not failed
    )
    if adding:
        places.take(adding)


def _by_key(conn: Connection, keys: list[str]) -> dict[str, tuple[TaskRecord, bytes]]:
    """Stored tasks (and their spec hashes) by idempotency key, for the keys that exist."""
    found: dict[str, tuple[TaskRecord, bytes]] = {}
    for chunk in chunked(keys, _KEYS_PER_QUERY):
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {TASK_COLUMNS}, spec_hash FROM tasks WHERE idempotency_key IN ({marks})",
            chunk,
        ):
            record = row_to_record(row[:-1])
            assert record.idempotency_key is not None
            found[record.idempotency_key] = (record, bytes(row[-1]))
    return found


def read(conn: Connection, task_ids: Collection[str]) -> dict[str, TaskRecord]:
    """The tasks with these ids, by id (missing ones left out)."""
    marks = ", ".join("?" * len(task_ids))
    rows = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({marks})", [*task_ids])
    return {record.id: record for record in map(row_to_record, rows)}


def lease(conn: Connection, grants: list[LeaseGrant]) -> list[Assignment]:
    """Lease queued tasks (each only from the attempt before its grant's) and read
    what their nodes need.

    One UPDATE ... FROM VALUES per 500 grants, not one per grant: every statement
    gives up and retakes the interpreter lock, and with the event loop busy each
    retake waits for it. Per grant, a round of 67 leases took 5-7 ms under load
    instead of ~1 ms alone; as one statement it takes ~1-2 ms (see the commit).
    """
    now = time.time()
    out: list[Assignment] = []
    for chunk in chunked(grants, _GRANTS_PER_STATEMENT):
        values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        params: list[Any] = [int(TaskState.LEASED), now]
        for g in chunk:
            params += (g.task_id, g.attempt, g.node_id, g.session_id)
        params.append(int(TaskState.QUEUED))
        rows = conn.execute(
            "UPDATE tasks SET state = ?, attempt = g.column2, node_id = g.column3, "
            "session_id = g.column4, updated_at = ?, started_at = NULL, "
            "next_attempt_at = NULL, progress_percent = NULL, progress_message = NULL "
            f"FROM (VALUES {values}) AS g "
            "WHERE tasks.id = g.column1 AND tasks.state = ? AND tasks.attempt = g.column2 - 1 "
            "RETURNING tasks.id, tasks.attempt, type, queue, payload, content_type, "
            "max_attempts, created_at, execution_timeout_s, priority, headers",
            params,
        ).fetchall()
        out += [
            Assignment(
                lease=Lease(row[0], row[1]),
                type=row[2],
                queue=row[3],
                payload=bytes(row[4]),
                content_type=row[5],
                max_attempts=row[6],
                created_at=row[7],
                execution_timeout_s=row[8],
                priority=row[9],
                headers=headers_from_column(row[10]),
            )
            for row in rows
        ]
    return out


_GRANTS_PER_STATEMENT = 500


def apply(
    conn: Connection,
    transitions: list[Transition],
    default_ttl_s: float,
    events: DependencyEvents,
) -> list[bool]:
    now = time.time()
    # Most queues use no dependencies: one look at the table spares every
    # finished task the statements that settle its dependants.
    waiting = conn.execute("SELECT 1 FROM dependencies LIMIT 1").fetchone() is not None
    if len({t.task_id for t in transitions}) < len(transitions):
        # A task changed twice needs its changes in order: one statement per transition.
        return [_apply_one(conn, t, now, default_ttl_s, waiting, events) for t in transitions]
    # One statement per shape of change (a frame of results is one shape), not per
    # task, for the reason given in lease().
    shapes: dict[tuple[Any, ...], list[tuple[str, int, list[Any]]]] = defaultdict(list)
    ending = {t.task_id: t.state for t in transitions if t.state is not None}
    for t in transitions:
        changes = _changes(t, now)
        key = (
            tuple(changes),
            t.from_states,
            t.state is not None and t.state.is_terminal,
            t.started,
        )
        shapes[key].append((t.task_id, t.attempt, list(changes.values())))
    applied: set[str] = set()
    ended: finished.Changes = Counter()
    for (columns, from_states, terminal, started), rows in shapes.items():
        sets = [f"{column} = g.column{i}" for i, column in enumerate(columns, start=3)]
        extra: list[Any] = []
        if terminal:
            sets.append(_SET_EXPIRY)
            extra += [now, default_ttl_s]
        if started:
            sets.append(_SET_STARTED)
            extra.append(now)
        states = ", ".join(str(int(s)) for s in from_states)
        width = 2 + len(columns)
        per_statement = _MAX_PARAMETERS // width
        for chunk in chunked(rows, per_statement):
            values = ", ".join([f"({', '.join('?' * width)})"] * len(chunk))
            params = [*extra]
            for task_id, attempt, changed in chunk:
                params += (task_id, attempt, *changed)
            for task_id, queue in conn.execute(
                f"UPDATE tasks SET {', '.join(sets)} FROM (VALUES {values}) AS g "
                f"WHERE tasks.id = g.column1 AND tasks.attempt = g.column2 "
                f"AND tasks.state IN ({states}) RETURNING tasks.id, tasks.queue",
                params,
            ):
                applied.add(task_id)
                if terminal:
                    ended[queue, ending[task_id]] += 1
    finished.add(conn, ended)
    if waiting and ended:
        _settle_dependants(conn, transitions, applied, default_ttl_s, events)
    return [t.task_id in applied for t in transitions]


def _settle_dependants(
    conn: Connection,
    transitions: list[Transition],
    applied: set[str],
    default_ttl_s: float,
    events: DependencyEvents,
) -> None:
    """Settle what waits on the tasks a batch finished, in the batch's order.

    Only tasks in the dependency table need it (dependants, or a waiting task's own
    edges): one waiting task anywhere used to send every batch of outcomes down the
    statement-per-task path, and P1 fell by a quarter.
    """
    ids = [
        t.task_id
        for t in transitions
        if t.task_id in applied and t.state is not None and t.state.is_terminal
    ]
    involved: set[str] = set()
    for chunk in chunked(ids, _KEYS_PER_QUERY):
        marks = ", ".join("?" * len(chunk))
        involved.update(
            row[0]
            for row in conn.execute(
                f"SELECT depends_on FROM dependencies WHERE depends_on IN ({marks}) "
                f"UNION SELECT task_id FROM dependencies WHERE task_id IN ({marks})",
                [*chunk, *chunk],
            )
        )
    for t in transitions:
        if t.task_id in involved and t.state is not None:
            dependencies.resolve(conn, t.task_id, t.state, default_ttl_s, events)


_MAX_PARAMETERS = 30_000
"""Host parameters per statement (SQLite's limit is 32,766)."""
_SET_EXPIRY = "expires_at = ? + COALESCE(result_ttl_s, ?)"
"""Finished tasks are kept for their result TTL, then swept (params: now, default TTL)."""
_SET_STARTED = "started_at = COALESCE(started_at, ?)"
"""An outcome may carry the start (the node folded it in); a start committed just
before it is the truer time (param: now)."""


def _apply_one(
    conn: Connection,
    t: Transition,
    now: float,
    default_ttl_s: float,
    waiting: bool,
    events: DependencyEvents,
) -> bool:
    sets, params = assignments(t, now)
    if t.state is not None and t.state.is_terminal:
        sets.append(_SET_EXPIRY)
        params += [now, default_ttl_s]
    states = ", ".join(str(int(s)) for s in t.from_states)
    row = conn.execute(
        f"UPDATE tasks SET {', '.join(sets)} WHERE id = ? AND attempt = ? AND state IN ({states}) "
        "RETURNING queue",
        (*params, t.task_id, t.attempt),
    ).fetchone()
    if row is None:
        return False
    if t.state is not None and t.state.is_terminal:
        finished.add(conn, Counter({(row[0], t.state): 1}))
        if waiting:
            dependencies.resolve(conn, t.task_id, t.state, default_ttl_s, events)
    return True


def _changes(t: Transition, now: float) -> dict[str, Any]:
    """The columns a transition sets (besides started_at and expires_at)."""
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
        changes["result"] = binding.blob(t.result)
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
    if t.next_attempt_at is not None:
        changes["next_attempt_at"] = t.next_attempt_at
    return changes


def assignments(t: Transition, now: float) -> tuple[list[str], list[Any]]:
    """The SET clause of a transition: only the fields it changes."""
    changes = _changes(t, now)
    sets = [f"{column} = ?" for column in changes]
    values = list(changes.values())
    if t.started:
        sets.append(_SET_STARTED)
        values.append(now)
    return sets, values


def where(
    task_filter: TaskFilter, before_seq: int | None = None, from_seq: int | None = None
) -> tuple[str, list[Any]]:
    """A WHERE clause for a filter (empty when nothing is filtered), for tasks submitted
    before ``before_seq`` and no earlier than ``from_seq``."""
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
    if task_filter.queue is not None and task_filter.state is None:
        # Every state, spelled out: tasks_queue_state then yields each state's tasks in
        # seq order (its entries end with the rowid, seq), so SQLite reads a page from
        # each state and stops, instead of sorting the whole queue for every page
        # (~0.5 s a page at 1,000,000 tasks in one queue).
        clauses.append(f"state IN ({', '.join(str(int(state)) for state in TaskState)})")
    for key, value in task_filter.headers:  # keys are [A-Za-z0-9_.-]: safe between quotes
        clauses.append("json_extract(headers, ?) = ?")
        params += (f'$."{key}"', value)
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    if from_seq is not None:
        clauses.append("seq >= ?")
        params.append(from_seq)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def retry(conn: Connection, task_ids: list[str]) -> list[ActiveTask]:
    """Send finished-unsuccessfully tasks back to the queue with a fresh budget."""
    now = time.time()
    out: list[ActiveTask] = []
    ended: finished.Changes = Counter()
    for task_id in task_ids:
        was = conn.execute("SELECT queue, state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        row = conn.execute(
            "UPDATE tasks SET state = ?, failures = 0, lease_expiries = 0, cancel_requested = 0, "
            "session_id = NULL, finished_at = NULL, expires_at = NULL, next_attempt_at = NULL, "
            "run_at = NULL, start_by = NULL, updated_at = ? WHERE id = ? AND state IN (?, ?) "
            "RETURNING id, seq, type, queue, attempt, max_attempts, retry_backoff_s, priority, "
            "node_id, rate_key",
            (int(TaskState.QUEUED), now, task_id, int(TaskState.FAILED), int(TaskState.CANCELLED)),
        ).fetchone()
        if row is not None:
            ended[was[0], TaskState(was[1])] -= 1
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
    finished.add(conn, ended)
    return out
