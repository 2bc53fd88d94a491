"""Plain domain types of the coordinator. Protobuf never reaches past the servicers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from dtq.frozen import frozen

Headers = tuple[tuple[str, str], ...]
"""A task's headers (``TaskSpec.headers``) as (key, value) pairs sorted by key: immutable,
and one spelling per set of headers for the digest and the store."""


class TaskState(IntEnum):
    """Task states; the values match ``dtq.v1.TaskState`` and are stored as integers."""

    QUEUED = 1
    LEASED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    WAITING = 7
    """Waiting for the tasks it depends on; not in memory, not dispatchable."""

    @property
    def is_terminal(self) -> bool:
        """True for states a task never leaves (until a client retries it)."""
        return self in _TERMINAL

    @property
    def is_leased(self) -> bool:
        """True while a node holds the task."""
        return self in (TaskState.LEASED, TaskState.RUNNING)


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class DependencyFailure(IntEnum):
    """What a task does when one of its dependencies fails (dtq.v1 values)."""

    FAIL = 1
    CANCEL = 2


class NodeState(IntEnum):
    """Node session states; the values match ``dtq.v1.NodeState``."""

    ACTIVE = 1
    DRAINING = 2
    DISCONNECTED = 3
    DEAD = 4
    LEFT = 5


@frozen
class Lease:
    """One dispatch of a task: the fencing token every node message carries."""

    task_id: str
    attempt: int


@frozen
class TaskError:
    """Why an attempt failed."""

    type: str
    message: str = ""
    traceback: str = ""
    retryable: bool = True


@frozen
class Progress:
    """Progress a handler reported."""

    percent: float
    message: str = ""


@frozen
class NewTask:
    """A validated submission, ready to be stored."""

    id: str
    type: str
    queue: str
    payload: bytes
    content_type: str
    max_attempts: int
    idempotency_key: str | None
    retry_backoff_s: float | None
    spec_hash: bytes
    """Digest of the spec, to tell a retried submit from a clashing one."""
    priority: int = 0
    run_at: float | None = None
    """Wall time before which the task is not dispatched."""
    execution_timeout_s: float | None = None
    schedule_to_start_s: float | None = None
    result_ttl_s: float | None = None
    rate_key: str = ""
    depends_on: tuple[str, ...] = ()
    on_dependency_failure: DependencyFailure = DependencyFailure.FAIL
    group_id: str | None = None
    submitted_by: str | None = None
    """The name of the token that submitted it (None without tokens)."""
    headers: Headers = ()
    """Application metadata handed to the handler; never interpreted here."""


@frozen
class TaskRecord:
    """A task as stored: what GetTask, ListTasks and WatchTask return."""

    id: str
    seq: int
    type: str
    queue: str
    payload: bytes
    content_type: str
    state: TaskState
    attempt: int
    max_attempts: int
    failures: int
    idempotency_key: str | None
    retry_backoff_s: float | None
    result: bytes | None
    result_content_type: str
    last_error: TaskError | None
    node_id: str | None
    session_id: str | None
    lease_expiries: int
    cancel_requested: bool
    progress: Progress | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float | None
    """Wall-clock times (seconds since the epoch) from the coordinator's clock."""
    priority: int = 0
    run_at: float | None = None
    execution_timeout_s: float | None = None
    expires_at: float | None = None
    rate_key: str = ""
    depends_on: tuple[str, ...] = ()
    group_id: str | None = None
    submitted_by: str | None = None
    headers: Headers = ()


@dataclass(slots=True, eq=False)
class ActiveTask:
    """The coordinator's in-memory view of a task that is not terminal.

    Holds no payload: the store reads payloads in the same commit that leases
    a batch, so a deep queue costs little memory.
    """

    id: str
    seq: int
    type: str
    queue: str
    state: TaskState
    attempt: int
    max_attempts: int
    failures: int
    lease_expiries: int
    retry_backoff_s: float | None
    cancel_requested: bool = False
    session_id: str | None = None
    node_id: str | None = None
    due_at: float | None = None
    """Monotonic time before which a retried or scheduled task is not dispatched."""
    priority: int = 0
    start_by: float | None = None
    """Monotonic deadline for a first start (schedule-to-start timeout)."""
    rate_key: str = ""


@frozen
class Assignment:
    """A leased task as sent to its node."""

    lease: Lease
    type: str
    queue: str
    payload: bytes
    content_type: str
    max_attempts: int
    created_at: float
    execution_timeout_s: float | None = None
    priority: int = 0
    headers: Headers = ()


@frozen
class Registration:
    """A node's RegisterNode, validated."""

    node_id: str
    hostname: str
    pid: int
    version: str
    task_types: frozenset[str]
    queues: frozenset[str]
    slots: int
    resume_session_id: str | None
    leases: tuple[Lease, ...] = ()
    prefetch: int = 0


@frozen
class QueueStats:
    """Task counts of one queue."""

    name: str
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    paused: bool = False
    max_running: int = 0
    rate_limit: float = 0.0
    waiting: int = 0
    max_depth: int = 0


@frozen
class QueueSettings:
    """A queue's durable settings (defaults for queues never configured)."""

    paused: bool = False
    max_running: int = 0
    """Global concurrency limit across all nodes; 0 means none."""
    rate_limit: float = 0.0
    """Dispatch rate limit in tasks per second; 0 means none."""
    max_depth: int = 0
    """Most unfinished tasks (queued, leased, running) submits may bring it to; 0: none."""


class QueuePlaces(Protocol):
    """Places in queues with a maximum depth, taken by an insert as the store runs it
    (:class:`dtq_server.depth.Places`)."""

    limits: Mapping[str, int]
    """Maximum depth per limited queue; new tasks in other queues are not counted."""

    def take(self, adding: Mapping[str, int]) -> None:
        """Take places for these new unfinished tasks per queue, or raise QueueFull
        taking none."""


@frozen
class RateLimit:
    """A rate key's durable token-bucket settings."""

    key: str
    per_second: float
    burst: float


@frozen
class TaskFilter:
    """ListTasks filters; None matches everything."""

    queue: str | None = None
    state: TaskState | None = None
    type: str | None = None
    headers: Headers = ()
    """ListTasks only: tasks carrying each of these (key, value) pairs."""


@frozen
class GroupStatus:
    """Counts of a group's members by state."""

    group_id: str
    task_ids: list[str]
    counts: dict[TaskState, int]
    queues: frozenset[str]
    """The queues its members are on (a scoped token sees a group within its queues only)."""
    submitters: frozenset[str | None]
    """Who submitted its members (a submitter sees its own groups only)."""


@dataclass(slots=True)
class DependencyEvents:
    """What a commit did to waiting tasks: reported after the commit, to update memory."""

    unblocked: list[ActiveTask] = field(default_factory=list)
    """Tasks whose last dependency succeeded: now QUEUED."""
    finished: list[str] = field(default_factory=list)
    """Tasks failed or cancelled because a dependency failed (cascaded)."""

    def __bool__(self) -> bool:
        return bool(self.unblocked or self.finished)


@frozen
class TaskPage:
    """One page of ListTasks."""

    tasks: list[TaskRecord] = field(default_factory=list)
    next_before_seq: int | None = None
