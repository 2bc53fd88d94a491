"""Straight to an idle node: a new task leased in the same commit that stores it.

When a node has an idle thread and nothing is waiting in the task's queue, the
usual path costs two commits in a row: the submit stores the task QUEUED, then
a dispatch round leases it. Here the submit's own commit stores it already
leased (attempt 1) to that node, and the assignment leaves as soon as the
commit returns: one commit, and one fsync, less between submit and start.
Only threads with nothing to run take tasks this way: a task for a prefetch
buffer waits there anyway, and the dispatch round fills buffers in proportion
to the nodes' threads (see :mod:`dtq_server.dispatch`).

Only the plain case takes this path: no dependencies, no delay, the queue not
paused, without a concurrency or rate limit or a maximum depth, with no ready
task that should go first, and one priority per queue in the submission (so a
later, more urgent task of the same batch never waits behind an earlier one
sent directly).

The reservation is in memory until the commit: the task is on the board as
LEASED and in its session's leases, exactly as a dispatch round leaves it, so
the session's credits count it and a session ending meanwhile requeues it
through the usual orphan path (its transition is queued behind the insert and
applies after it). If the commit fails, or the idempotency key named an
existing task instead, the reservation is undone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from dtq_server.board import TaskBoard
from dtq_server.dispatch import Dispatcher, deliver
from dtq_server.failpoints import Failpoints
from dtq_server.models import ActiveTask, Assignment, Lease, NewTask, TaskRecord, TaskState
from dtq_server.registry import NodeRegistry, Session
from dtq_server.updates import LeaseGrant


@dataclass(slots=True)
class DirectLease:
    """A new task reserved for a session until its insert commits."""

    session: Session
    task: ActiveTask
    grant: LeaseGrant


class Handoff:
    """Reserves idle slots for new tasks, then sends or undoes after the commit."""

    def __init__(
        self,
        board: TaskBoard,
        registry: NodeRegistry,
        dispatcher: Dispatcher,
        failpoints: Failpoints,
    ) -> None:
        self._board = board
        self._registry = registry
        self._dispatcher = dispatcher
        self._failpoints = failpoints

    def reserve(self, new: list[NewTask], now: float) -> list[DirectLease]:
        """Reserve an idle thread for each new task that may skip the queue (see the module)."""
        dispatcher = self._dispatcher
        if dispatcher.paused or dispatcher.loading:
            return []
        sessions = [s for s in self._registry.with_free_slots() if s.idle_slots > 0]
        if not sessions:
            return []
        # Stop once every idle thread is taken: a batch of 10,000 with 500 busy nodes
        # must not look at every node for every task.
        idle = sum(s.idle_slots for s in sessions)
        waiting_queues = {key[0] for key in self._board.ready_keys()}
        priorities: dict[str, set[int]] = defaultdict(set)
        for t in new:
            priorities[t.queue].add(t.priority)
        reserved: list[DirectLease] = []
        turn = 0  # one task per node in turn, as a dispatch round spreads them
        for t in new:
            if idle <= 0:
                break
            if not self._plain(t, waiting_queues) or len(priorities[t.queue]) > 1:
                continue
            session = None
            for i in range(len(sessions)):
                candidate = sessions[(turn + i) % len(sessions)]
                if candidate.idle_slots > 0 and (t.queue, t.type) in candidate.keys:
                    session, turn = candidate, turn + i + 1
                    break
            if session is None:
                continue
            task = ActiveTask(
                id=t.id,
                seq=0,  # known once stored
                type=t.type,
                queue=t.queue,
                state=TaskState.LEASED,
                attempt=1,
                max_attempts=t.max_attempts,
                failures=0,
                lease_expiries=0,
                retry_backoff_s=t.retry_backoff_s,
                session_id=session.id,
                node_id=session.node.node_id,
                priority=t.priority,
                rate_key=t.rate_key,
            )
            session.leases[t.id] = 1
            session.leasing.add(t.id)
            self._registry.serve(session)
            idle -= 1
            self._board.track(task, now)
            grant = LeaseGrant(t.id, 1, session.node.node_id, session.id)
            reserved.append(DirectLease(session, task, grant))
        return reserved

    def _plain(self, t: NewTask, waiting_queues: set[str]) -> bool:
        """True if nothing about the task or its queue asks for the dispatcher's judgement."""
        if t.depends_on or t.run_at is not None or t.queue in waiting_queues:
            return False
        settings = self._dispatcher.queue_settings.get(t.queue)
        # A maximum depth is checked as the insert runs, against the board; a task
        # put on the board before its insert would count there and in the check.
        if settings is not None and (settings.paused or settings.max_running or settings.max_depth):
            return False
        limiter = self._dispatcher.limiter
        return t.queue not in limiter.queues and not (t.rate_key and t.rate_key in limiter.keys)

    def undo(self, reserved: list[DirectLease]) -> None:
        """The commit failed, or stored nothing new: give the slots back."""
        for d in reserved:
            d.session.leasing.discard(d.task.id)
            if d.session.leases.get(d.task.id) == 1:
                del d.session.leases[d.task.id]
            if self._board.active.get(d.task.id) is d.task:
                self._board.forget(d.task, TaskState.QUEUED)

    def settle(
        self,
        reserved: list[DirectLease],
        new: list[NewTask],
        results: list[tuple[TaskRecord, bool]],
    ) -> None:
        """The insert committed: send what was stored leased, undo the rest."""
        if not reserved:
            return
        stored = {
            spec.id: (spec, record, created)
            for spec, (record, created) in zip(new, results, strict=True)
        }
        self._failpoints.hit("lease.after_commit_before_send")
        batches: dict[str, tuple[Session, list[Assignment]]] = {}
        unused = []
        for d in reserved:
            d.session.leasing.discard(d.task.id)
            spec, record, created = stored[d.task.id]
            if not created or record.state is not TaskState.LEASED:
                unused.append(d)
                continue
            d.task.seq = record.seq
            assignment = Assignment(
                lease=Lease(d.task.id, 1),
                type=spec.type,
                queue=spec.queue,
                payload=spec.payload,
                content_type=spec.content_type,
                max_attempts=spec.max_attempts,
                created_at=record.created_at,
                execution_timeout_s=spec.execution_timeout_s,
                priority=spec.priority,
                headers=spec.headers,
            )
            batches.setdefault(d.session.id, (d.session, []))[1].append(assignment)
        self.undo(unused)
        deliver(batches.values())
