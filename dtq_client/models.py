"""The plain objects the client returns and accepts; no protobuf beyond this edge.

Every model is a frozen dataclass (:class:`CancelCounts`, a pair of counts, is a
named tuple); states and policies are ``StrEnum`` s whose values are the
lower-case names (``TaskState.RUNNING == "running"``). Timestamps are timezone-aware UTC
``datetime`` s, or None when the coordinator did not set them; durations are
float seconds named ``*_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

from dtq_client import payloads

T = TypeVar("T")


class TaskState(StrEnum):
    """Where a task is in its lifecycle: (waiting ->) queued -> leased -> running -> terminal.

    A task with dependencies is WAITING until the last of them succeeds.
    """

    WAITING = "waiting"
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


class DependencyFailure(StrEnum):
    """What happens to a task when a task it depends on fails or is cancelled."""

    FAIL = "fail"
    """The task fails too (error type ``DEPENDENCY_FAILED``); the coordinator's default."""
    CANCEL = "cancel"
    """The task is cancelled."""


class GroupState(StrEnum):
    """The aggregate state of a group of tasks (see :meth:`dtq_client.Client.submit_group`)."""

    RUNNING = "running"
    """At least one member is not finished."""
    SUCCEEDED = "succeeded"
    """Every member succeeded."""
    FAILED = "failed"
    """Every member finished and at least one failed."""
    CANCELLED = "cancelled"
    """Every member finished, none failed, at least one was cancelled."""

    @property
    def is_terminal(self) -> bool:
        """True once every member is finished."""
        return self is not GroupState.RUNNING


class MissedTicks(StrEnum):
    """What a schedule does with ticks that passed while the coordinator was down."""

    SKIP = "skip"
    """Fire nothing for them; continue with the next tick."""
    RUN_ONCE = "run_once"
    """Fire one task, for the latest missed tick (the coordinator's default)."""
    RUN_ALL = "run_all"
    """Fire one task for every missed tick (at most 1,000)."""


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
    depends_on: tuple[str, ...] = ()
    """Ids of the tasks that must succeed before this one runs (see ``TaskSpec.depends_on``)."""
    group_id: str | None = None
    """The group the task was submitted in (see :meth:`dtq_client.Client.submit_group`)."""
    submitted_by: str | None = None
    """The name of the token that submitted it (None when the coordinator checks no tokens)."""
    # Out of the hash (a dict has none), not out of ==: equal tasks still hash equal.
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The application metadata submitted with it (see ``TaskSpec.headers``); empty if none."""

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
    depends_on: Sequence[str] = ()
    """Ids of existing tasks (at most 100) that must succeed first; until then it is WAITING.

    Any sequence of ids is accepted; the spec keeps them as a tuple.
    """
    on_dependency_failure: DependencyFailure | None = None
    """If a dependency fails or is cancelled: fail this task (None: the default) or cancel it."""
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Application metadata carried with the task: stored and shown with it, and handed to
    its handler with every attempt (``ctx.headers``): a correlation id, a tenant, W3C trace
    context such as ``traceparent``. The coordinator does not interpret them.

    At most 32 entries; keys of 1-64 characters from ``[A-Za-z0-9_.-]`` (case-sensitive),
    printable values of at most 2,048 characters; the coordinator refuses others with
    :class:`~dtq_client.InvalidArgument` (field ``task.headers["key"]``). Not part of what an
    idempotency key guards: a resubmit under the same key with other headers (a retry from
    another trace) is answered with the stored task, which keeps its first headers. The spec
    keeps a copy of the mapping it is given.
    """

    def __post_init__(self) -> None:
        # A tuple, so that equal specs compare equal whatever sequence they were given.
        if isinstance(self.depends_on, str):
            raise TypeError("depends_on must be a collection of task ids, not one string")
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        if self.headers:
            # A copy of our own: the caller's mapping may change after the spec is built.
            object.__setattr__(self, "headers", dict(self.headers))
        if self.on_dependency_failure is not None:
            policy = DependencyFailure(self.on_dependency_failure)
            object.__setattr__(self, "on_dependency_failure", policy)


@dataclass(frozen=True)
class SubmitResult:
    """The stored task for one submitted spec."""

    task: Task
    created: bool
    """False when the idempotency key matched an existing task."""


@dataclass(frozen=True)
class SubmitAck:
    """A pipelined submit's answer (:class:`~dtq_client.Submitter`): the task is committed.

    Lighter than :class:`SubmitResult` on purpose: the coordinator does not
    send the whole task (payload and all) back for every submit; :meth:`Client.get
    <dtq_client.Client.get>` reads it.
    """

    task_id: str
    created: bool
    """False when the idempotency key matched an existing task."""
    state: TaskState
    """The task's state when it was answered: QUEUED, WAITING (it has dependencies), FAILED
    or CANCELLED (a dependency had already failed), or, for an existing task, its state now."""


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing (:meth:`Client.list_tasks_page
    <dtq_client.Client.list_tasks_page>`), newest first."""

    tasks: tuple[Task, ...]
    next_page_token: str
    """Pass as ``page_token`` for the next (older) page, with the same filters; empty on
    the last page."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of the nodes, queues or schedules (:meth:`Client.queues_page
    <dtq_client.Client.queues_page>` and its siblings), in the listing's order."""

    items: tuple[T, ...]
    next_page_token: str
    """Pass as ``page_token`` for the next page; empty on the last. It names the last
    item listed, so items added or removed meanwhile do not shift the next page."""


@dataclass(frozen=True)
class SubmittedGroup:
    """What :meth:`dtq_client.Client.submit_group` stored: the group id and one result per spec."""

    group_id: str
    results: tuple[SubmitResult, ...]

    @property
    def tasks(self) -> list[Task]:
        """The stored tasks, in the order of the specs."""
        return [result.task for result in self.results]


@dataclass(frozen=True, kw_only=True)
class Group:
    """The aggregate status of a group of tasks."""

    id: str
    state: GroupState
    total: int = 0
    pending: int = 0
    """Members waiting or queued."""
    running: int = 0
    """Members leased or running."""
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    task_ids: tuple[str, ...] = ()
    """Member task ids, in submission order."""

    @property
    def is_terminal(self) -> bool:
        """True once every member is finished."""
        return self.state.is_terminal


class CancelCounts(NamedTuple):
    """What :meth:`dtq_client.Client.cancel_tasks` did: ``(cancelled, cancel_requested)``."""

    cancelled: int
    """Queued tasks cancelled at once."""
    cancel_requested: int
    """Dispatched tasks whose nodes were asked to stop them (they end CANCELLED later)."""


@dataclass(frozen=True)
class RetryResult:
    """What :meth:`dtq_client.Client.retry` did."""

    retried: int
    """Tasks sent back to their queue."""
    skipped_task_ids: tuple[str, ...] = ()
    """Given ids that were not retried: not failed or cancelled, or unknown."""
    truncated: bool = False
    """With a filter: more matching tasks remain (at most 10,000 per call); call again."""


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
    """Leases held: tasks running, or buffered under ``prefetch``."""
    prefetch: int = 0
    """Leases the node may buffer beyond its slots, so a freed slot has its next task at hand."""
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
    waiting: int = 0
    """Tasks waiting for their dependencies."""
    max_depth: int = 0
    """Most unfinished tasks (queued, leased, running) submits may bring the queue to;
    0 means no limit. A submit beyond it raises :class:`~dtq_client.QueueFull`."""

    @property
    def total(self) -> int:
        """All tasks of the queue, whatever their state."""
        return (
            self.waiting + self.queued + self.running + self.succeeded + self.failed
            + self.cancelled
        )  # fmt: skip


@dataclass(frozen=True)
class RateLimit:
    """A token bucket on a rate key (``TaskSpec.rate_key``), applied across all queues and nodes."""

    key: str
    per_second: float
    """Tasks dispatched per second, on average."""
    burst: int
    """Tokens the bucket holds at most: tasks dispatched at once after a quiet period."""


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A periodic task the coordinator submits at every tick of a cron expression or interval.

    Exactly one of ``cron`` and ``interval_s`` is set. Every tick submits one
    task from ``task`` with the idempotency key ``schedule:NAME:TICK``, so a
    tick fires exactly once even across coordinator crashes.
    """

    name: str
    task: TaskSpec
    """The task each tick submits (its ``idempotency_key``, ``run_at`` and ``delay_s`` unused)."""
    cron: str | None = None
    """5 fields (minute resolution) or 6 with seconds last, e.g. ``"* * * * * */10"``."""
    interval_s: float | None = None
    """A fixed period from the schedule's creation, 1 s to 366 days."""
    time_zone: str | None = None
    """IANA time zone the cron expression is read in; None means UTC."""
    paused: bool = False
    missed_ticks: MissedTicks | None = None
    """What to do with ticks missed while the coordinator was down; None: ``RUN_ONCE``."""
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    fired_count: int = 0
    """Tasks submitted so far."""
    created_at: datetime | None = None
    last_error: str | None = None
    """Why the coordinator could not fire the due tick at its last try (a dependency
    purged, a template past the coordinator's limits, the store down); it tries again
    every minute. None once a tick fires (and after a pause, a resume or a restart of
    the coordinator, until its next try)."""
    last_error_at: datetime | None = None
