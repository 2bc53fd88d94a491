"""The plain objects the client returns and accepts; no protobuf beyond this edge.

Every model is a frozen dataclass (:class:`CancelCounts`, a pair of counts, is a
named tuple); states are ``StrEnum`` s whose values are the lower-case state
names (``TaskState.RUNNING == "running"``). Timestamps are timezone-aware UTC
``datetime`` s, or None when the coordinator did not set them; durations are
float seconds named ``*_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from dtq_client import payloads


class TaskState(StrEnum):
    """Where a task is in its lifecycle: queued -> leased -> running -> terminal."""

    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, failed and cancelled, which never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class NodeState(StrEnum):
    """A worker node's session state in the coordinator's registry."""

    ACTIVE = "active"
    DRAINING = "draining"
    DISCONNECTED = "disconnected"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True)
class TaskError:
    """Why a task attempt failed."""

    type: str
    """Error class (``ValueError``) or coordinator reason (``LEASE_EXPIRED``)."""
    message: str = ""
    traceback: str = ""
    retryable: bool = False
    """False when retrying cannot help, so the task failed at once."""


@dataclass(frozen=True)
class Progress:
    """Progress a handler reported for the running attempt."""

    percent: float | None = None
    """0-100, or None when the handler did not say."""
    message: str = ""


@dataclass(frozen=True)
class Lease:
    """One dispatch of a task: its id and attempt number."""

    task_id: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task as the coordinator stores it."""

    id: str
    type: str
    queue: str
    state: TaskState
    attempt: int = 0
    """Number of the current or last dispatch; 0 before the first one."""
    max_attempts: int = 0
    failures: int = 0
    """Attempts that ended in a retryable handler failure."""
    idempotency_key: str | None = None
    payload: bytes = b""
    content_type: str = payloads.JSON
    result: bytes | None = None
    """The handler's encoded result, set once the task succeeded."""
    result_content_type: str = ""
    last_error: TaskError | None = None
    node_id: str | None = None
    """Node holding the current lease, or that ran the last attempt."""
    lease_expiries: int = 0
    cancel_requested: bool = False
    progress: Progress | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    priority: int = 0
    """Higher runs first within a queue."""
    scheduled_at: datetime | None = None
    """The time before which the task is not dispatched (from ``run_at`` or ``delay_s``)."""
    execution_timeout_s: float | None = None
    """How long one attempt may run; None means no limit."""
    expires_at: datetime | None = None
    """When the finished task will be deleted by the coordinator's retention sweep."""
    rate_key: str | None = None
    """The rate key whose limit the task shares (see ``TaskSpec.rate_key``)."""

    @property
    def is_terminal(self) -> bool:
        """True once the task succeeded, failed or was cancelled."""
        return self.state.is_terminal

    def payload_value(self) -> object:
        """The input, JSON-decoded when its content type is JSON, else the raw bytes."""
        return payloads.decode(self.payload, self.content_type)

    def result_value(self) -> object:
        """The result, decoded like :meth:`payload_value`; None when there is none."""
        if self.result is None:
            return None
        return payloads.decode(self.result, self.result_content_type)


@dataclass(frozen=True)
class TaskSpec:
    """What to run: one entry of :meth:`dtq_client.Client.submit_many`.

    ``payload`` is any JSON-serialisable value, or ``bytes`` sent as-is. None
    fields take the coordinator's defaults; a None ``idempotency_key`` gets a
    generated one at submit time so retries never create a second task. The
    coordinator checks the values (ranges, ``run_at`` xor ``delay_s``) and
    refuses a bad spec with :class:`~dtq_client.InvalidArgument` naming the field.
    """

    type: str
    payload: object = None
    content_type: str | None = None
    queue: str | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    retry_backoff_s: float | None = None
    """First retry delay; later retries double it."""
    priority: int = 0
    """-1000 to 1000; higher runs first within a queue, equal ones in submission order."""
    run_at: datetime | None = None
    """Do not dispatch before this time; a naive ``datetime`` is local time. Not with delay_s."""
    delay_s: float | None = None
    """Do not dispatch before this many seconds from now. Not with ``run_at``."""
    execution_timeout_s: float | None = None
    """How long one attempt may run before it fails ``TIMED_OUT`` (retryable); None: no limit."""
    schedule_to_start_timeout_s: float | None = None
    """Fail the task (``SCHEDULE_TO_START_TIMEOUT``) unless a node starts it this soon once due."""
    result_ttl_s: float | None = None
    """How long the finished task and its result are kept; None: the coordinator's default."""
    rate_key: str | None = None
    """Tasks with the same key (e.g. a tenant) share that key's rate limit, if one is set."""


@dataclass(frozen=True)
class SubmitResult:
    """The stored task for one submitted spec."""

    task: Task
    created: bool
    """False when the idempotency key matched an existing task."""


class CancelCounts(NamedTuple):
    """What :meth:`dtq_client.Client.cancel_tasks` did: ``(cancelled, cancel_requested)``."""

    cancelled: int
    """Queued tasks cancelled at once."""
    cancel_requested: int
    """Dispatched tasks whose nodes were asked to stop them (they end CANCELLED later)."""


@dataclass(frozen=True, kw_only=True)
class Node:
    """A worker node as the coordinator's registry sees it."""

    node_id: str
    session_id: str
    state: NodeState
    hostname: str = ""
    pid: int = 0
    version: str = ""
    task_types: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    slots: int = 0
    busy_slots: int = 0
    leases: tuple[Lease, ...] = ()
    supervisor_restarts: int = 0
    connected_at: datetime | None = None
    last_seen_at: datetime | None = None
    """When the coordinator last heard from the node (coordinator clock)."""


@dataclass(frozen=True)
class QueueStats:
    """Task counts and settings of one queue."""

    name: str
    queued: int = 0
    running: int = 0
    """Tasks leased or running."""
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    paused: bool = False
    """True while the queue is paused: it accepts submits but dispatches nothing."""
    max_running: int = 0
    """Most tasks of the queue leased or running at once across all nodes; 0 means no limit."""
    rate_limit: float = 0.0
    """Most tasks of the queue dispatched per second; 0 means no limit."""

    @property
    def total(self) -> int:
        """All tasks of the queue, whatever their state."""
        return self.queued + self.running + self.succeeded + self.failed + self.cancelled
