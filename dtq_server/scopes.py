"""Queue scopes: a token limited to some queues (RELIABILITY section 3.1).

A tokens-file entry may say ``queues = ["billing", ...]``. With it:

- a **submitter** submits to those queues only: a spec naming another queue
  (the default queue included, when the spec names none) is refused with
  PERMISSION_DENIED and nothing of its batch is stored. It sees tasks on those
  queues only: GetTask, WatchTask, CancelTask and GetGroup answer NOT_FOUND for
  anything else, as if it did not exist, so a task id from elsewhere tells the
  caller nothing;
- a **worker** registers a node serving those queues only.

Admin tokens are never scoped. The caller is the one the gate admitted
(:data:`dtq_server.auth.CALLER`); without a tokens file, or for a token with no
``queues``, nothing here refuses anything. An idempotency key cannot leak a task
across scopes: a key only ever answers with the task of an identical spec, queue
included.
"""

from __future__ import annotations

from collections.abc import Iterable

from dtq_server.auth import CALLER
from dtq_server.errors import GroupNotFound, PermissionDenied, TaskNotFound
from dtq_server.models import GroupStatus, TaskRecord
from dtq_server.validation import DEFAULT_QUEUE


def scope() -> frozenset[str] | None:
    """The queues the current caller is limited to; None: any."""
    caller = CALLER.get()
    return None if caller is None else caller.queues


def check_queues(queues: Iterable[str]) -> None:
    """PermissionDenied unless the caller may use every one of ``queues`` ("" is the default)."""
    allowed = scope()
    if allowed is None:
        return
    outside = sorted({queue or DEFAULT_QUEUE for queue in queues} - allowed)
    if outside:
        names = ", ".join(repr(queue) for queue in outside)
        raise PermissionDenied(f"this token may not use queue {names}")


def visible(record: TaskRecord) -> TaskRecord:
    """``record`` if the caller may see it; TaskNotFound otherwise."""
    allowed = scope()
    if allowed is not None and record.queue not in allowed:
        raise TaskNotFound(record.id)
    return record


def visible_group(status: GroupStatus) -> GroupStatus:
    """``status`` if every member is on a queue the caller may see; GroupNotFound otherwise."""
    allowed = scope()
    if allowed is not None and not status.queues <= allowed:
        raise GroupNotFound(status.group_id)
    return status


__all__ = ["check_queues", "scope", "visible", "visible_group"]
