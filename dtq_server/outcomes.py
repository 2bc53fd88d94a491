"""What each outcome does to a task: the store transition for a node's update or a lost lease.

Pure rules (configuration in, a fenced :class:`Transition` out): retries with
backoff until ``max_attempts``, cancellation winning over a late failure,
lost leases counting against ``max_lease_expiries``, results over the size
limit failing the task. The session code applies what these return.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dtq_server.config import ServerConfig
from dtq_server.models import ActiveTask, TaskError, TaskState
from dtq_server.retry import retry_delay_s
from dtq_server.updates import (
    Failed,
    Progressed,
    Released,
    Started,
    Succeeded,
    TaskUpdate,
    Transition,
)

HELD = (TaskState.LEASED, TaskState.RUNNING)
CRASH_REASONS = frozenset({"WORKER_DIED"})
"""Release reasons that mean the task's runner crashed: they count as lost leases."""


def held(task_id: str, attempt: int, **changes: Any) -> Transition:
    """A transition fenced on the lease: it applies only while the task is still held."""
    return Transition(task_id=task_id, attempt=attempt, from_states=HELD, **changes)


class OutcomeRules:
    """The transitions outcomes ask for, under one coordinator's configuration."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config

    def for_update(self, update: TaskUpdate, task: ActiveTask) -> Transition:
        """The store change an (already fenced) update asks for."""
        attempt = update.lease.attempt
        match update:
            case Started():
                return held(task.id, attempt, state=TaskState.RUNNING, started=True)
            case Progressed(progress=progress):
                return held(task.id, attempt, progress=progress)
            case Succeeded(result=result, content_type=content_type):
                if len(result) > self._config.max_result_bytes:
                    error = TaskError(
                        "RESULT_TOO_LARGE",
                        f"result is {len(result)} bytes; the limit is "
                        f"{self._config.max_result_bytes}",
                        retryable=False,
                    )
                    return self.failure(task, attempt, error, cancelled=False)
                return held(
                    task.id,
                    attempt,
                    state=TaskState.SUCCEEDED,
                    result=result,
                    result_content_type=content_type,
                    started=task.state is TaskState.LEASED,  # no separate start was reported
                )
            case Failed(error=error, cancelled=cancelled, retry_after_s=retry_after_s):
                transition = self.failure(task, attempt, error, cancelled, retry_after_s)
                if task.state is TaskState.LEASED:
                    return dataclasses.replace(transition, started=True)
                return transition
            case Released(reason=reason) if reason in CRASH_REASONS:
                return self.lost(task, attempt, TaskError(reason, "the worker running it died"))
            case Released():
                return self.returned(task, attempt)
        raise AssertionError(f"unknown update {update!r}")

    def failure(
        self,
        task: ActiveTask,
        attempt: int,
        error: TaskError,
        cancelled: bool,
        retry_after_s: float | None = None,
    ) -> Transition:
        failures = task.failures + 1
        if cancelled or task.cancel_requested:
            state = TaskState.CANCELLED
        elif error.retryable and failures < task.max_attempts:
            state = TaskState.QUEUED
        else:
            state = TaskState.FAILED
        next_at = None
        if state is TaskState.QUEUED and retry_after_s is not None:  # the handler's wish
            next_at = time.time() + retry_after_s
        elif state is TaskState.QUEUED:
            base_s = task.retry_backoff_s or self._config.retry_backoff_s
            next_at = time.time() + retry_delay_s(
                failures, base_s, self._config.retry_backoff_max_s
            )
        return held(
            task.id,
            attempt,
            state=state,
            failures=failures,
            error=error,
            clear_lease=state is TaskState.QUEUED,
            next_attempt_at=next_at,
        )

    def returned(self, task: ActiveTask, attempt: int) -> Transition:
        """A lease given up unfinished (released, or its session left): back to the
        queue, or cancelled if a cancel was requested meanwhile."""
        state = TaskState.CANCELLED if task.cancel_requested else TaskState.QUEUED
        return held(task.id, attempt, state=state, clear_lease=True)

    def orphaned(self, task: ActiveTask, attempt: int, expired: bool) -> Transition:
        """A lease whose session ended: back to the queue, or lost if the node died with it."""
        if not expired:
            return self.returned(task, attempt)
        error = TaskError("LEASE_EXPIRED", "the node running it died or went silent")
        return self.lost(task, attempt, error)

    def lost(self, task: ActiveTask, attempt: int, error: TaskError) -> Transition:
        """A lease lost to a crash (node death, worker-thread death).

        It counts against ``max_lease_expiries`` so that a task that kills
        whatever runs it is dead-lettered instead of crashing nodes forever.
        """
        expiries = task.lease_expiries + 1
        if task.cancel_requested:
            return held(task.id, attempt, state=TaskState.CANCELLED, lease_expiries=expiries)
        if expiries >= self._config.max_lease_expiries:
            final = TaskError(
                error.type,
                f"{error.message}; lease lost {expiries} times, giving up",
                retryable=False,
            )
            return held(
                task.id, attempt, state=TaskState.FAILED, lease_expiries=expiries, error=final
            )
        return held(
            task.id, attempt, state=TaskState.QUEUED, lease_expiries=expiries, clear_lease=True
        )
