"""What nodes report about their leases, and what the store is asked to write."""

from __future__ import annotations

from dtq.frozen import frozen
from dtq_server.models import Lease, Progress, TaskError, TaskState


@frozen
class Started:
    """A handler started running the task."""

    lease: Lease


@frozen
class Progressed:
    """A handler reported progress."""

    lease: Lease
    progress: Progress


@frozen
class Succeeded:
    """A handler returned a result."""

    lease: Lease
    result: bytes
    content_type: str


@frozen
class Failed:
    """A handler failed, or stopped because the task was cancelled."""

    lease: Lease
    error: TaskError
    cancelled: bool = False
    retry_after_s: float | None = None
    """The handler's wait before the next attempt (clamped), instead of the backoff."""


@frozen
class Released:
    """The node handed the task back without an outcome."""

    lease: Lease
    reason: str


TaskUpdate = Started | Progressed | Succeeded | Failed | Released
TERMINAL_UPDATES = (Succeeded, Failed, Released)


@frozen
class UpdateAck:
    """The coordinator's answer to one update."""

    lease: Lease
    accepted: bool
    reason: str = ""
    message: str = ""


@frozen
class LeaseGrant:
    """Lease a queued task to a node session as attempt ``attempt``."""

    task_id: str
    attempt: int
    node_id: str
    session_id: str


@frozen
class Transition:
    """A fenced change of one task's row.

    It applies only while the stored attempt equals ``attempt`` and the stored
    state is one of ``from_states``; the store reports whether it applied. Fields
    left as None are not changed.
    """

    task_id: str
    attempt: int
    from_states: tuple[TaskState, ...]
    state: TaskState | None = None
    failures: int | None = None
    lease_expiries: int | None = None
    result: bytes | None = None
    result_content_type: str | None = None
    error: TaskError | None = None
    progress: Progress | None = None
    cancel_requested: bool | None = None
    clear_lease: bool = False
    """Forget the node session (the task goes back to the queue or ends)."""
    started: bool = False
    """Stamp started_at with the commit time."""
    next_attempt_at: float | None = None
