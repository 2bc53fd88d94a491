"""Plain values the node works with; ``convert`` maps them to and from ``dtq.v1`` messages.

Everything past the stream edge (ledger, supervisor, runner) sees only these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from enum import StrEnum

from dtq.frozen import frozen


@frozen
class Lease:
    """One dispatch of a task: every message about the task quotes it (fencing)."""

    task_id: str
    attempt: int


@frozen
class Payload:
    """Opaque bytes with a media type; an empty content type means JSON."""

    data: bytes
    content_type: str = ""


@frozen
class Assignment:
    """A task the coordinator leased to this node."""

    lease: Lease
    type: str
    queue: str
    payload: Payload
    max_attempts: int
    execution_timeout_s: float | None = None
    """How long one attempt may run (the task's ``execution_timeout``); None: no limit
    beyond the node's own ``task_timeout_s``."""
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The task's headers (``TaskSpec.headers``). A plain dict, so that the assignment
    pickles to a handler process; handlers get a read-only view (``TaskContext.headers``)."""


class ReleaseReason(StrEnum):
    """Why the node hands a task back without an outcome."""

    SHUTDOWN = "SHUTDOWN"
    WORKER_DIED = "WORKER_DIED"
    UNKNOWN_TASK_TYPE = "UNKNOWN_TASK_TYPE"
    PREFETCH_LOWERED = "PREFETCH_LOWERED"
    """``--prefetch auto`` found the queued tasks long: others may run them sooner."""
    LIFESPAN_FAILED = "LIFESPAN_FAILED"
    """The handler process could not set up the registry's lifespan: the task never
    started, and it is not the task's fault (a crash reason would count against it)."""


class LeaveReason(StrEnum):
    """Why the node ends its session (``Leave.reason``, informational)."""

    SHUTDOWN = "SHUTDOWN"
    DRAINED = "DRAINED"
    RESTART_INTENSITY_EXCEEDED = "RESTART_INTENSITY_EXCEEDED"


class ErrorType(StrEnum):
    """Failure types the node decides itself (handler failures use the exception class name)."""

    PAYLOAD_DECODE_ERROR = "PAYLOAD_DECODE_ERROR"
    RESULT_ENCODE_ERROR = "RESULT_ENCODE_ERROR"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    TASK_CANCELLED = "TaskCancelled"
    TIMED_OUT = "TIMED_OUT"
    """The handler ran past the task timeout (retryable)."""
    WORKER_PROCESS_DIED = "WORKER_PROCESS_DIED"
    """The child process running the handler died, e.g. of a segfault (retryable)."""


@frozen
class Failure:
    """Why an attempt failed (``dtq.v1.TaskError``)."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True


@frozen
class Started:
    """A handler started running the task."""


@frozen
class Progress:
    """The handler's latest progress: 0-100, or negative when unknown."""

    percent: float
    message: str = ""


@frozen
class Succeeded:
    """The handler returned a result. Terminal."""

    result: Payload


@frozen
class Failed:
    """The handler failed; ``cancelled`` when it stopped because of a cancel. Terminal."""

    error: Failure
    cancelled: bool = False
    retry_after_s: float | None = None
    """The wait the handler asked for before the next attempt (:class:`RetryAfter`)."""


@frozen
class Released:
    """The node gives the task back without an outcome. Terminal."""

    reason: str


Outcome = Succeeded | Failed | Released
"""How one attempt ended on this node."""

Change = Started | Progress | Outcome


@frozen
class Update:
    """One ``TaskUpdate``: a change to report about a lease."""

    lease: Lease
    change: Change

    @property
    def terminal(self) -> bool:
        """True for outcomes, which the coordinator acknowledges."""
        return isinstance(self.change, Succeeded | Failed | Released)


@frozen
class Registration:
    """What the node sends in ``RegisterNode``."""

    node_id: str
    hostname: str
    pid: int
    version: str
    task_types: tuple[str, ...]
    queues: tuple[str, ...]
    slots: int
    resume_session_id: str = ""
    leases: tuple[Lease, ...] = ()
    prefetch: int = 0


@frozen
class HeartbeatInfo:
    """What the node reports in a heartbeat besides the sequence number."""

    leases: tuple[Lease, ...]
    supervisor_restarts: int
    prefetch: int | None = None
    """The node's prefetch from now on (``--prefetch auto``); None leaves it as registered."""


# --- messages from the coordinator -------------------------------------------------------


@frozen
class Registered:
    """``NodeRegistered``: the session is open."""

    session_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    resumed: bool
    stale_leases: tuple[Lease, ...]
    max_result_bytes: int
    """0 when the coordinator did not say."""


@frozen
class AssignmentsReceived:
    """``TaskAssignments``: new work."""

    assignments: tuple[Assignment, ...]


@frozen
class CancelRequested:
    """``CancelTasks``: clients cancelled these tasks."""

    leases: tuple[Lease, ...]


@frozen
class DrainRequested:
    """``DrainRequested``: take no more work, finish what runs, close."""


@frozen
class HeartbeatAcked:
    """``HeartbeatAck``: the heartbeat arrived; ``stale_leases`` are no longer ours."""

    sequence: int
    stale_leases: tuple[Lease, ...]


@frozen
class UpdateAck:
    """``TaskUpdateAck``: the coordinator's verdict on one outcome."""

    lease: Lease
    accepted: bool
    reason: str = ""
    message: str = ""


@frozen
class UpdatesAcked:
    """``TaskUpdateAcks``."""

    acks: tuple[UpdateAck, ...]


Inbound = (
    Registered
    | AssignmentsReceived
    | CancelRequested
    | DrainRequested
    | HeartbeatAcked
    | UpdatesAcked
)
"""Any message the coordinator sends on the stream."""
