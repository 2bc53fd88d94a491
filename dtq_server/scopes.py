"""What a token may reach: its own tasks, its queues (RELIABILITY section 3.1).

**Own tasks.** A submitter sees the tasks it submitted and no others: GetTask,
WatchTask, CancelTask and GetGroup answer NOT_FOUND for anything else, as if it
did not exist, so a task id from elsewhere tells the caller nothing. Each task
records the name of the token that submitted it (``submitted_by``). A
submitter entry with ``own_tasks = false`` sees every task (of its queues,
when it has a scope): for a service that follows tasks others submit.

**Queue scopes.** A tokens-file entry may say ``queues = ["billing", ...]``:

- a submitter then submits to those queues only: a spec naming another queue
  (the default queue included, when the spec names none) is refused with
  PERMISSION_DENIED and nothing of its batch is stored; and it sees only tasks
  on them;
- a worker registers a node serving those queues only.

Admin tokens reach everything. The caller is the one the gate admitted
(:data:`dtq_server.auth.CALLER`); without a tokens file nothing here refuses
anything. An idempotency key cannot leak a task across identities or scopes: a
key answers only with the task of an identical spec, queue and submitter
included.
"""

from __future__ import annotations

from collections.abc import Iterable

from dtq_server.auth import CALLER
from dtq_server.errors import GroupNotFound, PermissionDenied, TaskNotFound
from dtq_server.models import GroupStatus, TaskRecord
from dtq_server.validation import DEFAULT_QUEUE


def submitter() -> str | None:
    """The name stored as the submitter of what the current caller submits."""
    caller = CALLER.get()
    return None if caller is None else caller.name


def restricted() -> bool:
    """True if the current caller may not see every task."""
    caller = CALLER.get()
    return caller is not None and (caller.queues is not None or caller.own_tasks_only)


def check_queues(queues: Iterable[str]) -> None:
    """PermissionDenied unless the caller may use every one of ``queues`` ("" is the default)."""
    caller = CALLER.get()
    if caller is None or caller.queues is None:
        return
    outside = sorted({queue or DEFAULT_QUEUE for queue in queues} - caller.queues)
    if outside:
        names = ", ".join(repr(queue) for queue in outside)
        raise PermissionDenied(f"this token may not use queue {names}")


def visible(record: TaskRecord) -> TaskRecord:
    """``record`` if the caller may see it; TaskNotFound otherwise."""
    caller = CALLER.get()
    if caller is None:
        return record
    if caller.queues is not None and record.queue not in caller.queues:
        raise TaskNotFound(record.id)
    if caller.own_tasks_only and record.submitted_by != caller.name:
        raise TaskNotFound(record.id)
    return record


def visible_group(status: GroupStatus) -> GroupStatus:
    """``status`` if the caller may see every member; GroupNotFound otherwise."""
    caller = CALLER.get()
    if caller is None:
        return status
    if caller.queues is not None and not status.queues <= caller.queues:
        raise GroupNotFound(status.group_id)
    if caller.own_tasks_only and status.submitters != {caller.name}:
        raise GroupNotFound(status.group_id)
    return status


__all__ = ["check_queues", "restricted", "submitter", "visible", "visible_group"]
