"""The PostgreSQL schema: the SQLite schema's tables (as of its version 10), in
PostgreSQL's types, plus the row that records the leader (``dtq_coordinator``).

Column names and meanings are those of :mod:`dtq_server.store.schema`, so the
same SQL runs on both. REAL becomes DOUBLE PRECISION (PostgreSQL's REAL has 24
bits: a wall-clock time would lose its milliseconds) and BLOB becomes BYTEA.
Every statement is idempotent: the leader runs them all when it takes the lead.
``SCHEMA`` is version 1 and stays so; a change to it is a new entry of
``MIGRATIONS``, which the leader applies in order, each in its own transaction
with the version it brings (as the SQLite store does).
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS dtq_coordinator (
    one            BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),   -- a single row
    schema_version INTEGER NOT NULL,
    leader_epoch   BIGINT  NOT NULL,          -- +1 each time a coordinator takes the lead
    leader         TEXT,                      -- host:pid of the leader
    leader_since   DOUBLE PRECISION,          -- wall clock, for operators
    probed_at      DOUBLE PRECISION           -- the write-health probe's last write
);
CREATE TABLE IF NOT EXISTS tasks (
    seq                 BIGINT  PRIMARY KEY,      -- submission order (FIFO)
    id                  TEXT    NOT NULL UNIQUE,
    type                TEXT    NOT NULL,
    queue               TEXT    NOT NULL,
    payload             BYTEA   NOT NULL,
    content_type        TEXT    NOT NULL,
    state               INTEGER NOT NULL,         -- dtq_server.models.TaskState
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    failures            INTEGER NOT NULL DEFAULT 0,
    idempotency_key     TEXT    UNIQUE,
    spec_hash           BYTEA   NOT NULL,
    retry_backoff_s     DOUBLE PRECISION,
    result              BYTEA,
    result_content_type TEXT,
    error_type          TEXT,
    error_message       TEXT,
    error_traceback     TEXT,
    error_retryable     INTEGER,
    node_id             TEXT,
    session_id          TEXT,
    lease_expiries      INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    progress_percent    DOUBLE PRECISION,
    progress_message    TEXT,
    created_at          DOUBLE PRECISION NOT NULL,
    updated_at          DOUBLE PRECISION NOT NULL,
    started_at          DOUBLE PRECISION,
    finished_at         DOUBLE PRECISION,
    next_attempt_at     DOUBLE PRECISION,
    priority            INTEGER NOT NULL DEFAULT 0,
    run_at              DOUBLE PRECISION,
    execution_timeout_s DOUBLE PRECISION,
    start_by            DOUBLE PRECISION,
    result_ttl_s        DOUBLE PRECISION,
    expires_at          DOUBLE PRECISION,
    rate_key            TEXT    NOT NULL DEFAULT '',
    group_id            TEXT,
    depends_on          TEXT    NOT NULL DEFAULT '',
    dependency_failure  INTEGER NOT NULL DEFAULT 1,
    submitted_by        TEXT,
    headers             TEXT                      -- JSON object; NULL: none
);
CREATE INDEX IF NOT EXISTS tasks_queue_state ON tasks (queue, state);
CREATE INDEX IF NOT EXISTS tasks_state_seq ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_group ON tasks (group_id) WHERE group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS queues (
    name        TEXT    PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0,
    max_running INTEGER NOT NULL DEFAULT 0,
    rate_limit  DOUBLE PRECISION NOT NULL DEFAULT 0,
    max_depth   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_limits (
    key         TEXT    PRIMARY KEY,
    per_second  DOUBLE PRECISION NOT NULL,
    burst       DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name          TEXT    PRIMARY KEY,
    cron          TEXT,
    interval_s    DOUBLE PRECISION,
    time_zone     TEXT    NOT NULL,
    template      TEXT    NOT NULL,
    paused        INTEGER NOT NULL DEFAULT 0,
    missed        INTEGER NOT NULL,
    next_fire_at  DOUBLE PRECISION NOT NULL,
    last_fire_at  DOUBLE PRECISION,
    fired_count   INTEGER NOT NULL DEFAULT 0,
    created_at    DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS dependencies (
    task_id     TEXT NOT NULL,
    depends_on  TEXT NOT NULL,
    PRIMARY KEY (depends_on, task_id)
);
CREATE INDEX IF NOT EXISTS dependencies_task ON dependencies (task_id);
CREATE TABLE IF NOT EXISTS task_types (
    queue       TEXT NOT NULL,
    type        TEXT NOT NULL,
    declared_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (queue, type)
);
-- SQLite's json_extract for the one path shape the store uses ('$."key"'), so the
-- header filter of ListTasks is the same SQL on both stores.
CREATE OR REPLACE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (doc::jsonb) ->> substr(path, 4, length(path) - 4) $$;
"""

MIGRATIONS: tuple[str, ...] = (
    # 2: finished tasks counted per queue and state as they finish (store/finished.py),
    # starting from the ones already kept.
    """
    CREATE TABLE IF NOT EXISTS finished_counts (
        queue   TEXT    NOT NULL,
        state   INTEGER NOT NULL,
        n       BIGINT  NOT NULL,
        PRIMARY KEY (queue, state)
    );
    INSERT INTO finished_counts (queue, state, n)
        SELECT queue, state, count(*) FROM tasks WHERE state IN (4, 5, 6) GROUP BY queue, state
    """,
)
"""Entry ``n`` takes a database from version ``n + 1`` to ``n + 2``."""
SCHEMA_VERSION = 1 + len(MIGRATIONS)
