"""The coordinator's error tree. ``rpc_errors`` maps it to gRPC statuses in one place.

::

    CoordinatorError
    ├── InvalidArgument        a request field is malformed (names the first bad fields)
    ├── TaskNotFound           no task with that id
    ├── NodeNotFound           no live node with that id
    ├── IdempotencyKeyReused   a key was reused with a different spec
    ├── GroupNotFound          no group with that id
    ├── ScheduleNotFound       no schedule with that name
    ├── ScheduleExists         a different schedule already has that name
    ├── ScheduleEnded          a schedule's cron has no tick after now: it cannot resume
    ├── TaskTerminal           the task already finished; the request cannot apply
    ├── UnknownTaskType        strict mode: no node has ever declared a submitted (queue, type)
    ├── ShuttingDown           the coordinator is stopping; retry elsewhere or later
    ├── StoreUnavailable       the store cannot commit right now (disk full, locked, I/O)
    ├── SessionExpired         a node's session is gone; it must register afresh
    ├── Unauthenticated        no valid token (one message, whatever was wrong)
    ├── PermissionDenied       a valid token whose role may not do this
    ├── CallRateExceeded       an identity called faster than its tokens-file limit
    ├── CapReached             an identity holds as many streams or nodes as its entry allows
    ├── QueueFull              a submit would take a queue past its maximum depth
    └── CallTooLong            a unary call ran past the coordinator's --max-call-time
"""

from __future__ import annotations

from collections.abc import Sequence


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""


def shown(value: str, limit: int = 100) -> str:
    """``value`` quoted for a message, cut after ``limit`` characters.

    Names and ids come from requests and can be any length; a message quoting
    them whole could outgrow the trailers it travels in.
    """
    return repr(value if len(value) <= limit else value[:limit] + "...")


class InvalidArgument(CoordinatorError):
    """A request field is malformed."""

    MAX_NAMED = 10
    """Violations named in the message; a batch may have thousands."""
    MAX_NAMED_CHARS = 600
    """The named violations stop before the message passes this, whatever their count."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        named: list[str] = []
        length = 0
        for field, why in self.violations[: self.MAX_NAMED]:
            text = f"{field}: {why}"
            length += len(text) + 2
            if named and length > self.MAX_NAMED_CHARS:
                break
            named.append(text)
        self.named = self.violations[: len(named)]
        """The violations the message names (the status's BadRequest lists the same)."""
        more = len(self.violations) - len(named)
        super().__init__("; ".join(named) + (f"; and {more} more" if more else ""))


class TaskNotFound(CoordinatorError):
    """No task with that id."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {shown(task_id)} not found")


class NodeNotFound(CoordinatorError):
    """No live node with that id."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {shown(node_id)} not found")


class IdempotencyKeyReused(CoordinatorError):
    """An idempotency key was reused with a different task spec."""

    def __init__(self, key: str, task_id: str) -> None:
        self.key = key
        self.task_id = task_id
        super().__init__(
            f"idempotency key {shown(key, 200)} already names task {task_id} with a different spec"
        )


class GroupNotFound(CoordinatorError):
    """No group with that id."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        super().__init__(f"group {shown(group_id)} not found")


class ScheduleNotFound(CoordinatorError):
    """No schedule with that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"schedule {shown(name)} not found")


class ScheduleExists(CoordinatorError):
    """A different schedule already has that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a different schedule named {shown(name)} exists; delete it first")


class ScheduleEnded(CoordinatorError):
    """A schedule's cron expression has no tick after now (its last one has passed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"schedule {shown(name)} has no tick in the next 50 years (its cron's last tick "
            "has passed): it cannot resume; delete it, or create one with another expression"
        )


class TaskTerminal(CoordinatorError):
    """The task already finished."""

    def __init__(self, task_id: str, state: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} is already {state}")


class UnknownTaskType(CoordinatorError):
    """Strict mode: no node has ever declared the (queue, type) of a submitted task."""

    MAX_NAMED = 10
    """Specs named in the message; a batch may hold thousands."""

    def __init__(self, unknown: Sequence[tuple[str, str, str]]) -> None:
        self.unknown = list(unknown)
        """(field path, queue, type) of each refused spec."""
        named = "; ".join(
            f"{field}: no worker has declared type {type_!r} on queue {queue!r}"
            for field, queue, type_ in self.unknown[: self.MAX_NAMED]
        )
        more = len(self.unknown) - self.MAX_NAMED
        super().__init__(named + (f"; and {more} more" if more > 0 else ""))


class ShuttingDown(CoordinatorError):
    """The coordinator is shutting down."""

    def __init__(self) -> None:
        super().__init__("the coordinator is shutting down; retry shortly")


class StoreUnavailable(CoordinatorError):
    """The store could not commit; nothing was acknowledged."""


class SessionExpired(CoordinatorError):
    """A node session timed out or was replaced; its leases are gone."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id} expired; register again")


class Unauthenticated(CoordinatorError):
    """The call carries no valid token. One message for every cause (RELIABILITY S2)."""

    def __init__(self) -> None:
        super().__init__("missing or invalid credentials")


class PermissionDenied(CoordinatorError):
    """The caller is known, and not allowed this."""


class CapReached(CoordinatorError):
    """An identity already holds all the open streams (or connected nodes) it may."""

    def __init__(self, name: str, what: str, limit: int) -> None:
        super().__init__(f"{name} already has {limit} {what} open, its limit; retry later")


class CallRateExceeded(CoordinatorError):
    """An identity made more calls than its ``calls_per_second`` allows."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"{name} is over its call rate; retry in {retry_after_s:.3f} s")


class QueueFull(CoordinatorError):
    """A submit would create more unfinished tasks in a queue than its ``max_depth``."""

    def __init__(self, queue: str, max_depth: int) -> None:
        self.queue = queue
        self.max_depth = max_depth
        super().__init__(
            f"queue {queue!r} is full: it holds at most {max_depth} unfinished tasks "
            "(its max_depth); nothing was stored, retry once it drains"
        )


class CallTooLong(CoordinatorError):
    """A unary call ran longer than the coordinator allows any call, whatever its deadline."""

    def __init__(self, max_call_s: float) -> None:
        super().__init__(
            f"the coordinator allows a call at most {max_call_s:g} s and this one took longer; "
            "what it asked may still be done (a submit: resend it with the same idempotency key)"
        )
