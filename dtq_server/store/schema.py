"""The SQLite schema. ``PRAGMA user_version`` records which version a file has.

A new file gets ``SCHEMA`` (version 1) and then every migration in order, so
the path an upgraded database takes is the path every test database takes.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq                 INTEGER PRIMARY KEY,      -- submission order (FIFO)
    id                  TEXT    NOT NULL UNIQUE,
    type                TEXT    NOT NULL,
    queue               TEXT    NOT NULL,
    payload             BLOB    NOT NULL,
    content_type        TEXT    NOT NULL,
    state               INTEGER NOT NULL,         -- dtq_server.models.TaskState
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    failures            INTEGER NOT NULL DEFAULT 0,
    idempotency_key     TEXT    UNIQUE,
    spec_hash           BLOB    NOT NULL,
    retry_backoff_s     REAL,
    result              BLOB,
    result_content_type TEXT,
    error_type          TEXT,
    error_message       TEXT,
    error_traceback     TEXT,
    error_retryable     INTEGER,
    node_id             TEXT,
    session_id          TEXT,                     -- the lease holder while leased
    lease_expiries      INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    progress_percent    REAL,
    progress_message    TEXT,
    created_at          REAL    NOT NULL,         -- wall clock, seconds since the epoch
    updated_at          REAL    NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    next_attempt_at     REAL
);
CREATE INDEX IF NOT EXISTS tasks_queue_state ON tasks (queue, state);
CREATE INDEX IF NOT EXISTS tasks_state_seq ON tasks (state, seq);
"""

MIGRATIONS: tuple[str, ...] = (
    # 2: priorities, scheduled tasks, timeouts, retention, queue settings.
    """
    ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN run_at REAL;                -- not dispatched before (wall)
    ALTER TABLE tasks ADD COLUMN execution_timeout_s REAL;
    ALTER TABLE tasks ADD COLUMN start_by REAL;              -- schedule-to-start deadline (wall)
    ALTER TABLE tasks ADD COLUMN result_ttl_s REAL;
    ALTER TABLE tasks ADD COLUMN expires_at REAL;            -- terminal tasks: deleted after
    CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE IF NOT EXISTS queues (
        name        TEXT    PRIMARY KEY,
        paused      INTEGER NOT NULL DEFAULT 0,
        max_running INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 3: rate limits per queue and per rate key.
    """
    ALTER TABLE tasks ADD COLUMN rate_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE queues ADD COLUMN rate_limit REAL NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS rate_limits (
        key         TEXT    PRIMARY KEY,
        per_second  REAL    NOT NULL,
        burst       REAL    NOT NULL
    );
    """,
    # 4: periodic schedules.
    """
    CREATE TABLE IF NOT EXISTS schedules (
        name          TEXT    PRIMARY KEY,
        cron          TEXT,
        interval_s    REAL,
        time_zone     TEXT    NOT NULL,
        template      TEXT    NOT NULL,             -- JSON of the task spec
        paused        INTEGER NOT NULL DEFAULT 0,
        missed        INTEGER NOT NULL,
        next_fire_at  REAL    NOT NULL,
        last_fire_at  REAL,
        fired_count   INTEGER NOT NULL DEFAULT 0,
        created_at    REAL    NOT NULL
    );
    """,
    # 5: dependencies and groups.
    """
    ALTER TABLE tasks ADD COLUMN group_id TEXT;
    ALTER TABLE tasks ADD COLUMN depends_on TEXT NOT NULL DEFAULT '';  -- comma-separated ids
    ALTER TABLE tasks ADD COLUMN dependency_failure INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX IF NOT EXISTS tasks_group ON tasks (group_id) WHERE group_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS dependencies (
        task_id     TEXT NOT NULL,                  -- the waiting task
        depends_on  TEXT NOT NULL,                  -- an unfinished task it waits for
        PRIMARY KEY (depends_on, task_id)
    );
    CREATE INDEX IF NOT EXISTS dependencies_task ON dependencies (task_id);
    """,
    # 6: start-up reads unfinished tasks through tasks_state_seq (state = ?, seq > ?);
    # this index was never used and cost a write on every submit and every finish.
    """
    DROP INDEX IF EXISTS tasks_unfinished;
    """,
    # 7: every (queue, type) a node has declared, kept for strict mode (task_types.py).
    """
    CREATE TABLE IF NOT EXISTS task_types (
        queue       TEXT NOT NULL,
        type        TEXT NOT NULL,
        declared_at REAL NOT NULL,                  -- first declared (wall clock)
        PRIMARY KEY (queue, type)
    ) WITHOUT ROWID;
    """,
    # 8: who submitted each task (the token's name), for "own tasks" (dtq_server.scopes).
    """
    ALTER TABLE tasks ADD COLUMN submitted_by TEXT;
    """,
    # 9: a queue's maximum depth (unfinished tasks submits may bring it to).
    """
    ALTER TABLE queues ADD COLUMN max_depth INTEGER NOT NULL DEFAULT 0;
    """,
    # 10: application headers of a task (TaskSpec.headers), a JSON object; NULL: none.
    """
    ALTER TABLE tasks ADD COLUMN headers TEXT;
    """,
    # 11: finished tasks counted per queue and state as they finish (store/finished.py),
    # starting from the ones already kept.
    """
    CREATE TABLE IF NOT EXISTS finished_counts (
        queue   TEXT    NOT NULL,
        state   INTEGER NOT NULL,                   -- succeeded, failed or cancelled
        n       INTEGER NOT NULL,
        PRIMARY KEY (queue, state)
    ) WITHOUT ROWID;
    INSERT INTO finished_counts (queue, state, n)
        SELECT queue, state, count(*) FROM tasks WHERE state IN (4, 5, 6) GROUP BY queue, state;
    """,
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)

TASK_COLUMNS = (
    "id, seq, type, queue, payload, content_type, state, attempt, max_attempts, failures, "
    "idempotency_key, retry_backoff_s, result, result_content_type, error_type, error_message, "
    "error_traceback, error_retryable, node_id, session_id, lease_expiries, cancel_requested, "
    "progress_percent, progress_message, created_at, updated_at, started_at, finished_at, "
    "next_attempt_at, priority, run_at, execution_timeout_s, expires_at, rate_key, depends_on, "
    "group_id, submitted_by, headers"
)
