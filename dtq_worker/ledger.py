"""The node's book of held tasks: what it runs, what it still has to report, and what to drop.

A lease is *held* from its assignment until the coordinator acknowledges its
outcome. Each held task is QUEUED (waiting for a worker thread), RUNNING,
REPORTED (its outcome is in the outbox), or REFUSED (it arrived after the node
stopped taking work).

Refused tasks are neither run nor released one by one: a release frees the
slot and the coordinator would at once hand the node the next task, only to
get that one back too, for as long as the node waits for its acks. Held, they
keep the slot full; the final Leave hands them back all at once.

Updates wait in ``pending`` until the stream writer takes them, in the order
they happened.

Dropping a task (a stale lease, a rejected ack, a lost session) sets its
cancel event so the handler can stop, forgets every update about it, and frees
its slot: whatever its handler does later is never reported.

Used from the asyncio loop thread only; worker threads reach it through
:mod:`dtq_worker.bridge`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from dtq_worker.context import TaskContext, read_only_headers
from dtq_worker.models import (
    Assignment,
    Lease,
    Outcome,
    Released,
    Started,
    Update,
    UpdateAck,
)
from dtq_worker.outbox import Outbox
from dtq_worker.runner import Job

log = structlog.get_logger(__name__)


OnOutcome = Callable[[Job, Outcome, float | None], None]
"""Told of each attempt's one reported outcome, with how long its handler ran (None if
it never started): the node's metrics."""


class HeldState(StrEnum):
    """Where a held task is on this node."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    REPORTED = "REPORTED"
    REFUSED = "REFUSED"


_UNFINISHED = frozenset({HeldState.QUEUED, HeldState.RUNNING})


@dataclass(eq=False, slots=True)
class _Held:
    job: Job
    state: HeldState
    progress_sent_at: float = -math.inf
    progress_armed: bool = False
    """A timer will flush the waiting progress; no need to schedule another."""
    started_at: float | None = None
    """When its handler started (``time.monotonic()``), if it did."""


class Ledger:
    """Held tasks, pending updates and the outbox of one node."""

    def __init__(
        self,
        on_progress: Callable[[TaskContext], None],
        progress_interval_s: float = 0.5,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self._on_progress = on_progress
        self._on_outcome = on_outcome
        self._progress_interval_s = progress_interval_s
        self._held: dict[Lease, _Held] = {}
        self._pending: list[Update] = []
        self.outbox = Outbox()
        self.accepting = True
        """False once the node stops taking work: new assignments are refused (held, not run)."""
        self.resources: Any = None
        """What the registry's lifespan yielded; every new task's ``ctx.resources``."""

    # --- work coming in -----------------------------------------------------------------

    def accept(self, assignment: Assignment) -> Job | None:
        """Hold a new assignment; the job to run, or None if it must not run here."""
        lease = assignment.lease
        if lease in self._held:
            return None  # the same dispatch twice: it is already ours
        job = Job(
            assignment,
            TaskContext(
                task_id=lease.task_id,
                attempt=lease.attempt,
                max_attempts=assignment.max_attempts,
                type=assignment.type,
                queue=assignment.queue,
                content_type=assignment.payload.content_type,
                headers=read_only_headers(assignment.headers),
                on_progress=self._on_progress,
                resources=self.resources,
            ),
        )
        if not self.accepting:
            self._held[lease] = _Held(job, HeldState.REFUSED)
            return None
        self._held[lease] = _Held(job, HeldState.QUEUED)
        return job

    # --- what worker threads report -----------------------------------------------------

    def started(self, lease: Lease) -> None:
        """A handler started the task."""
        held = self._held.get(lease)
        if held is not None and held.state is HeldState.QUEUED:
            held.state = HeldState.RUNNING
            if self._on_outcome is not None:  # only the metrics time handlers
                held.started_at = time.monotonic()
            self._pending.append(Update(lease, Started()))

    def finished(self, lease: Lease, outcome: Outcome) -> None:
        """The task ended on this node; ignored if it was dropped or already released."""
        held = self._held.get(lease)
        if held is not None and held.state in _UNFINISHED:
            self._report(held, outcome)

    def progress(self, lease: Lease, now: float) -> float | None:
        """New progress is waiting. Queue it now, or return when a timer should flush it."""
        held = self._held.get(lease)
        if held is None or held.state is not HeldState.RUNNING or held.progress_armed:
            return None
        due = held.progress_sent_at + self._progress_interval_s
        if now < due:
            held.progress_armed = True
            return due
        self._queue_progress(held, now)
        return None

    def flush_progress(self, lease: Lease, now: float) -> None:
        """The progress timer fired: queue whatever progress is waiting."""
        held = self._held.get(lease)
        if held is not None:
            held.progress_armed = False
            if held.state is HeldState.RUNNING:
                self._queue_progress(held, now)

    def _queue_progress(self, held: _Held, now: float) -> None:
        progress = held.job.context.take_progress()
        if progress is not None:
            held.progress_sent_at = now
            self._pending.append(Update(held.job.lease, progress))

    def _report(self, held: _Held, outcome: Outcome) -> None:
        held.state = HeldState.REPORTED
        if self._on_outcome is not None:
            started_at = held.started_at
            ran_s = None if started_at is None else time.monotonic() - started_at
            self._on_outcome(held.job, outcome, ran_s)
        update = Update(held.job.lease, outcome)
        self._pending.append(update)
        self.outbox.add(update)

    # --- what the coordinator says ------------------------------------------------------

    def cancel(self, leases: Iterable[Lease]) -> None:
        """Clients cancelled these tasks: tell their handlers (they still report an outcome)."""
        for lease in leases:
            held = self._held.get(lease)
            if held is not None:
                held.job.context.cancel_event.set()

    def ack(self, ack: UpdateAck) -> None:
        """The coordinator answered an outcome. Either way the lease is no longer held."""
        if self.outbox.ack(ack.lease) is None:
            return  # an answer to a resent update that was answered already
        held = self._held.pop(ack.lease, None)
        if not ack.accepted:
            log.warning(
                "task.update_rejected",
                task_id=ack.lease.task_id,
                attempt=ack.lease.attempt,
                reason=ack.reason,
                message=ack.message,
            )
            if held is not None:
                held.job.context.cancel_event.set()

    def drop(self, leases: Iterable[Lease], why: str) -> int:
        """These leases are no longer ours: stop their handlers and never report them again."""
        dropped = set()
        for lease in leases:
            held = self._held.pop(lease, None)
            if held is None:
                continue
            held.job.context.cancel_event.set()
            self.outbox.discard(lease)
            dropped.add(lease)
            # A reported task is done here either way: a heartbeat that crossed its
            # ack on the wire finds it stale once the outcome is committed. Only a
            # task dropped before its outcome was reported is worth a warning.
            report = log.debug if held.state is HeldState.REPORTED else log.warning
            report("task.dropped", task_id=lease.task_id, attempt=lease.attempt, why=why)
        if dropped:
            self._pending = [u for u in self._pending if u.lease not in dropped]
        return len(dropped)

    def drop_all(self, why: str) -> int:
        """The session is gone and every lease with it."""
        count = len(self._held)
        for held in self._held.values():
            held.job.context.cancel_event.set()
        self._held.clear()
        self._pending.clear()
        self.outbox.clear()
        if count:
            log.warning("tasks.dropped", count=count, why=why)
        return count

    # --- shutting down ------------------------------------------------------------------

    def release_unfinished(self, reason: str) -> int:
        """Release every task that has no outcome yet; their handlers are told to stop."""
        released = 0
        for held in self._held.values():
            if held.state in _UNFINISHED:
                held.job.context.cancel_event.set()
                self._report(held, Released(reason))
                released += 1
        return released

    @property
    def unfinished(self) -> int:
        """Held tasks without an outcome (queued or running)."""
        return sum(1 for h in self._held.values() if h.state in _UNFINISHED)

    # --- for the stream -----------------------------------------------------------------

    def take_pending(self) -> list[Update]:
        """Every update not yet handed to the stream, oldest first.

        A start whose outcome goes in the same frame is left out: the
        coordinator records the start with the outcome, and short tasks cost
        one commit instead of two.
        """
        pending, self._pending = self._pending, []
        finished = {u.lease for u in pending if u.terminal}
        if finished:
            pending = [
                u for u in pending if not (isinstance(u.change, Started) and u.lease in finished)
            ]
        return pending

    def resend(self) -> None:
        """A new stream is up: queue every unacknowledged outcome again.

        Updates not yet sent stay; an unsent progress or start of a task whose
        outcome is known is superseded by it.
        """
        keep = [u for u in self._pending if not u.terminal and u.lease not in self.outbox]
        self._pending = keep + self.outbox.entries()

    def held_leases(self) -> tuple[Lease, ...]:
        """Every lease held: what heartbeats and a resuming registration carry."""
        return tuple(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, lease: object) -> bool:
        return lease in self._held
