"""Node sessions: registration, heartbeats, task updates, lease expiry.

This is where fencing happens. A node message about a lease is applied only if
the lease (task id, attempt) is held by the sender's session; anything else is
rejected and counted. Memory follows the store: the in-memory board changes
only after the store says a fenced transition applied, so a race between a
late result and an expiry can never leave the two disagreeing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from dtq_server.board import TaskBoard
from dtq_server.completion import run_to_completion
from dtq_server.config import ServerConfig
from dtq_server.dispatch import Dispatcher
from dtq_server.errors import SessionExpired, ShuttingDown, StoreUnavailable
from dtq_server.models import (
    ActiveTask,
    Assignment,
    Lease,
    NodeState,
    Registration,
    TaskRecord,
    TaskState,
)
from dtq_server.outcomes import OutcomeRules
from dtq_server.registry import (
    EndStream,
    NodeRegistry,
    Outbound,
    SendAssignments,
    SendCancel,
    SendDrain,
    SendHeartbeatAck,
    Session,
)
from dtq_server.store.base import Store
from dtq_server.task_types import DeclaredTypes
from dtq_server.updates import (
    TERMINAL_UPDATES,
    Failed,
    Progressed,
    Released,
    Started,
    Succeeded,
    TaskUpdate,
    Transition,
    UpdateAck,
)
from dtq_server.validation import validate_prefetch, validate_registration
from dtq_server.watchers import TaskWatchers

log = structlog.get_logger(__name__)
UNKNOWN_TASK_TYPE = "UNKNOWN_TASK_TYPE"
"""Release reason of a node that declared a task type it has no handler for."""
RESENDS_PER_LEASE = 3
"""Resumes in a row a session may make without an assignment it holds before that lease
counts as lost (a lease expiry: requeued, dead-lettered at the cap). A node whose link
cannot carry the assignment within the heartbeat timeout breaks the stream each time it
is sent; without a bound it was sent again on every resume, forever (chaos N5 found a
600 kB payload at 256 kB/s never run, never expired)."""
REJECTIONS_PER_LINE = 100
"""Refused updates of a frame named per ``report.rejected`` line (by reason and kind of
update): each one is audited, but a reconnecting node's frame of thousands of stale
outcomes is tens of lines, not thousands."""


@dataclass(frozen=True, slots=True)
class Registered:
    """What a registration earned the node."""

    session: Session
    resumed: bool
    stale: list[Lease]


@dataclass(slots=True)
class _Orphan:
    """A lease whose session ended; its task goes back to the queue (or to the dead letters)."""

    task: ActiveTask
    attempt: int
    expired: bool
    """True when the node died with it (counts against max_lease_expiries)."""


class NodeSessions:
    """Everything the WorkerService stream asks of the coordinator."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        board: TaskBoard,
        registry: NodeRegistry,
        dispatcher: Dispatcher,
        watchers: TaskWatchers,
        task_types: DeclaredTypes,
    ) -> None:
        self._config = config
        self._task_types = task_types
        self._rules = OutcomeRules(config)
        self._store = store
        self._board = board
        self._registry = registry
        self._dispatcher = dispatcher
        self._watchers = watchers
        self._orphans: dict[str, _Orphan] = {}
        self.counters: Counter[str] = Counter()
        """Rejected reports by reason, expired sessions, ...: for tests and operators."""
        self.accept_new = True
        self._background: set[asyncio.Task[None]] = set()

    # -- registration ------------------------------------------------------

    def recover(self, tasks: list[ActiveTask]) -> None:
        """Rebuild sessions of tasks that were leased when the coordinator stopped.

        They wait DISCONNECTED for their nodes to resume them, and expire a full
        heartbeat timeout after start-up otherwise: a monotonic clock does not
        survive a restart, so every lease gets a fresh grace period.
        """
        for task in tasks:
            if not task.state.is_leased:
                continue
            session = self._registry.sessions.get(task.session_id or "")
            if session is None:
                if task.session_id is None:
                    self._orphans[task.id] = _Orphan(task, task.attempt, expired=True)
                    continue
                placeholder = Registration(
                    node_id=task.node_id or "unknown",
                    hostname="",
                    pid=0,
                    version="",
                    task_types=frozenset(),
                    queues=frozenset(),
                    slots=0,
                    resume_session_id=None,
                )
                session = self._registry.create(placeholder, task.session_id)
                session.state = NodeState.DISCONNECTED
            session.leases[task.id] = task.attempt

    def register(self, node: Registration, outbox: asyncio.Queue[Outbound]) -> Registered:
        """Start or resume a session and attach a stream's outbox to it."""
        node = validate_registration(node)
        old = self._registry.sessions.get(node.resume_session_id or "")
        if old is not None and old.node.node_id == node.node_id:
            registered = self._resume(old, node)
        else:
            if not self.accept_new:
                raise ShuttingDown()
            if node.resume_session_id:
                # Its session expired (or the coordinator lost it): every lease the node
                # still holds is stale, and it must drop those tasks.
                self.counters["resume_refused"] += 1
                log.info(
                    "node.resume_refused",
                    node_id=node.node_id,
                    session_id=node.resume_session_id,
                    stale_leases=len(node.leases),
                )
            for previous in self._registry.live_for_node(node.node_id):
                # The same node id registering afresh means its old process is gone.
                self._end(previous, NodeState.DEAD, expired=True)
            session = self._registry.create(node)
            registered = Registered(session, resumed=False, stale=list(node.leases))
        session = registered.session
        if session.outbox is not None:  # a half-dead earlier stream of the same node
            session.send(EndStream(SessionExpired(session.id)))
        session.outbox = outbox
        if registered.resumed:
            # What was sent while no stream was attached, or into a stream that broke
            # before delivering it, was lost: say it again.
            if session.drain_requested:
                session.send(SendDrain())
            held = {lease.task_id: lease.attempt for lease in node.leases}
            self._repeat_cancels(
                session, [t for t, a in session.leases.items() if held.get(t) == a]
            )
        session.touch()
        self._task_types.declare(session.keys)
        log.info(
            "node.registered",
            node_id=node.node_id,
            session_id=session.id,
            resumed=registered.resumed,
            slots=node.slots,
            leases=len(session.leases),
        )
        self._dispatcher.kick()
        return registered

    def _resume(self, session: Session, node: Registration) -> Registered:
        session.node = node
        session.keys = self._registry.keys_of(node)
        if session.state is NodeState.DISCONNECTED:
            session.state = NodeState.DRAINING if session.drain_requested else NodeState.ACTIVE
        held = {lease.task_id: lease.attempt for lease in node.leases}
        stale = [
            lease for lease in node.leases if session.leases.get(lease.task_id) != lease.attempt
        ]
        # Assigned, but the assignment never reached the node (it was in flight when
        # the stream broke): the lease is still this session's, so send it again on
        # the new stream, same attempt, instead of requeuing it as a new one. Not
        # forever: see RESENDS_PER_LEASE. A lease still committing was never sent: its
        # commit sends it on this stream (read from the store now, it would look
        # unleased and be requeued while the node runs it: chaos N8's duplicate).
        lost = {
            tid: attempt
            for tid, attempt in session.leases.items()
            if held.get(tid) != attempt and tid not in session.leasing
        }
        session.resent = {tid: n for tid, n in session.resent.items() if tid in lost}
        for task_id in list(lost):
            session.resent[task_id] = session.resent.get(task_id, 0) + 1
            if session.resent[task_id] > RESENDS_PER_LEASE:
                log.warning(
                    "node.assignment_undelivered",
                    node_id=node.node_id,
                    session_id=session.id,
                    task_id=task_id,
                    resends=RESENDS_PER_LEASE,
                )
                del lost[task_id], session.resent[task_id]
                self._orphan(task_id, session.leases.pop(task_id), expired=True)
        if lost or self._orphans:
            resend = asyncio.get_running_loop().create_task(self._resend(session, lost))
            self._background.add(resend)
            resend.add_done_callback(self._background.discard)
        return Registered(session, resumed=True, stale=stale)

    async def _resend(self, session: Session, lost: dict[str, int]) -> None:
        """Send a resumed session the assignments it never got (requeue them if unreadable)."""
        try:
            records = await self._store.get_many(lost)
        except StoreUnavailable:
            records = {}
        again: list[Assignment] = []
        for task_id, attempt in lost.items():
            record = records.get(task_id)
            if session.leases.get(task_id) != attempt:
                continue  # ended meanwhile (cancelled, the session gone): nothing to send
            if record is None or record.attempt != attempt or not record.state.is_leased:
                self._orphan(task_id, session.leases.pop(task_id), expired=False)
                continue
            again.append(
                Assignment(
                    lease=Lease(task_id, attempt),
                    type=record.type,
                    queue=record.queue,
                    payload=record.payload,
                    content_type=record.content_type,
                    max_attempts=record.max_attempts,
                    created_at=record.created_at,
                    execution_timeout_s=record.execution_timeout_s,
                    priority=record.priority,
                    headers=record.headers,
                )
            )
        if again:
            log.info("node.assignments_resent", session_id=session.id, count=len(again))
            session.send(SendAssignments(again))
            self._repeat_cancels(session, [a.lease.task_id for a in again])
        if self._orphans:
            await self.requeue_orphans()

    def _repeat_cancels(self, session: Session, task_ids: list[str]) -> None:
        """Send the cancels of these leases again (the node holds them, or just got them)."""
        leases = []
        for task_id in task_ids:
            task = self._board.active.get(task_id)
            if task is not None and task.cancel_requested and task.session_id == session.id:
                leases.append(Lease(task_id, task.attempt))
        if leases:
            session.send(SendCancel(leases))

    def detach(self, session: Session, outbox: asyncio.Queue[Outbound]) -> None:
        """The stream that carried ``outbox`` ended without Leave.

        The session stays DISCONNECTED, resumable with its leases until the
        heartbeat timeout: a broken stream and a node that is gone look alike.
        """
        if session.outbox is not outbox:
            return  # a newer stream took the session over
        session.outbox = None
        if session.live:
            session.state = NodeState.DISCONNECTED
            log.info("node.disconnected", node_id=session.node.node_id, session_id=session.id)

    async def leave(self, session: Session, reason: str) -> None:
        """The node ends its session: what it still holds is requeued before this returns,
        so the stream closes only once the hand-back is committed."""
        self._require_live(session)
        self._end(session, NodeState.LEFT, expired=False)
        log.info("node.left", node_id=session.node.node_id, session_id=session.id, reason=reason)
        await self.requeue_orphans()

    def forgive(self, stalled_s: float) -> None:
        """The coordinator itself was frozen for ``stalled_s`` (SIGSTOP, VM pause): nodes
        could not be heard meanwhile, so that time does not count against them."""
        now = time.monotonic()
        for session in self._registry.sessions.values():
            session.last_seen = min(now, session.last_seen + stalled_s)
        log.warning("coordinator.stalled", stalled_s=round(stalled_s, 3))

    def drain(self, session: Session) -> None:
        """Stop giving the session work and ask its node to finish and leave (now, or when
        a disconnected node resumes)."""
        session.drain_requested = True
        if session.state is NodeState.ACTIVE:
            session.state = NodeState.DRAINING
        session.send(SendDrain())
        log.info("node.draining", node_id=session.node.node_id, session_id=session.id)

    # -- heartbeats and updates ---------------------------------------------

    def heartbeat(
        self,
        session: Session,
        sequence: int,
        leases: list[Lease],
        restarts: int,
        prefetch: int | None = None,
    ) -> None:
        """Record liveness; tell the node which of its leases are no longer its own.

        ``prefetch``, when given, replaces the node's registered one (a node that
        sizes its buffer to how long its tasks run reports it here).
        """
        self._require_live(session)
        if prefetch is not None and prefetch != session.node.prefetch:
            session.node = replace(session.node, prefetch=validate_prefetch(prefetch))
            self._dispatcher.kick()  # more credit is more work to lease now
        session.touch()
        session.supervisor_restarts = restarts
        stale = [lease for lease in leases if session.leases.get(lease.task_id) != lease.attempt]
        if stale:
            self.counters["stale_heartbeat_leases"] += len(stale)
        session.send(SendHeartbeatAck(sequence, stale))

    async def apply_updates(self, session: Session, updates: list[TaskUpdate]) -> list[UpdateAck]:
        """Apply a frame of updates in one commit; returns the acks to send."""
        self._require_live(session)
        session.touch()
        acks: list[UpdateAck] = []
        planned: list[tuple[TaskUpdate, ActiveTask, Transition]] = []
        finishing = {u.lease for u in updates if isinstance(u, TERMINAL_UPDATES)}
        refused: list[tuple[TaskUpdate, ActiveTask | None]] = []
        for update in updates:
            lease = update.lease
            if isinstance(update, Started) and lease in finishing:
                continue  # the outcome in this frame records the start too
            task = self._board.active.get(lease.task_id)
            if session.leases.get(lease.task_id) != lease.attempt or task is None:
                refused.append((update, task))
                continue
            planned.append((update, task, self._rules.for_update(update, task)))
        if refused:
            acks += await self._reject_all(session, refused)
        if not planned:
            return acks
        if not any(isinstance(u, TERMINAL_UPDATES) for u, _, _ in planned):
            # Started/progress only: nobody waits for these, so the stream reader does
            # not wait for their commit either (memory still follows the commit).
            soft = asyncio.get_running_loop().create_task(self._apply_soft(session, planned))
            self._background.add(soft)
            soft.add_done_callback(self._background.discard)
            return acks
        # Commit and memory follow-up to the end, even if the stream that carried the
        # updates is torn down meanwhile (completion.py): else a committed outcome
        # would leave its lease held in memory, unlogged, and its resend rejected.
        return await run_to_completion(self._commit_outcomes(session, planned, acks))

    async def _commit_outcomes(
        self,
        session: Session,
        planned: list[tuple[TaskUpdate, ActiveTask, Transition]],
        acks: list[UpdateAck],
    ) -> list[UpdateAck]:
        self._config.failpoints.hit("result.before_commit")
        transitions = [t for _, _, t in planned]
        # A watched task is read back in the same commit: its stream needs no store read.
        watched = self._watchers.watched(t.task_id for t in transitions)
        # The node freed these slots when it reported: lend them to the dispatcher
        # while the outcomes commit (see Session.finishing).
        finishing = sum(isinstance(u, TERMINAL_UPDATES) for u, _, _ in planned)
        session.finishing += finishing
        self._dispatcher.kick()
        try:
            applied, records = await self._store.apply_and_read(transitions, watched)
        finally:
            session.finishing -= finishing
        self._config.failpoints.hit("result.after_commit_before_reply")
        now = time.monotonic()
        changed: list[str] = []
        debug = log.debug  # once, not per task (see dispatch.deliver)
        for (update, task, transition), ok in zip(planned, applied, strict=True):
            lease = update.lease
            if ok and session.leases.get(lease.task_id) == lease.attempt:
                self._after(session, task, transition, now)
                changed.append(task.id)
                if isinstance(update, Released) and update.reason == UNKNOWN_TASK_TYPE:
                    self._refuse_type(session, task)
                if transition.state is not None and transition.state is not TaskState.RUNNING:
                    # The lease event log (RELIABILITY.md 2.0): how each lease ended.
                    debug(
                        "lease.ended",
                        task_id=task.id,
                        attempt=lease.attempt,
                        node_id=session.node.node_id,
                        update=type(update).__name__,
                        state=transition.state.name,
                        mono=now,
                    )
            elif isinstance(update, Started | Progressed):
                continue
            if isinstance(update, Succeeded | Failed | Released):
                acks.append(UpdateAck(lease, ok, "" if ok else "STALE_ATTEMPT"))
        self._watchers.notify(changed, records)
        self._dispatcher.kick()
        return acks

    async def _apply_soft(
        self, session: Session, planned: list[tuple[TaskUpdate, ActiveTask, Transition]]
    ) -> None:
        try:
            applied = await self._store.apply([t for _, _, t in planned])
        except StoreUnavailable:
            return  # informational updates; the outcome that follows carries the state
        now = time.monotonic()
        for (update, task, transition), ok in zip(planned, applied, strict=True):
            if ok and session.leases.get(update.lease.task_id) == update.lease.attempt:
                self._after(session, task, transition, now)
        self._watchers.notify(task.id for _, task, _ in planned)

    def _after(self, session: Session, task: ActiveTask, t: Transition, now: float) -> None:
        """Bring memory in line with a transition the store applied."""
        if t.failures is not None:
            task.failures = t.failures
        if t.lease_expiries is not None:
            task.lease_expiries = t.lease_expiries
        if t.state is TaskState.RUNNING or t.state is None:
            if t.state is TaskState.RUNNING:
                task.state = TaskState.RUNNING
            return
        session.leases.pop(task.id, None)
        task.session_id = None
        if t.state.is_terminal:
            self._board.forget(task, t.state)
            return
        if t.next_attempt_at is not None:
            task.due_at = now + max(0.0, t.next_attempt_at - time.time())
        self._board.make_ready(task, now)

    def _refuse_type(self, session: Session, task: ActiveTask) -> None:
        """The node declared the task's type but has no handler for it (registry skew).

        Offer this session no more tasks of that type in that queue: the task
        waits for a node that can run it instead of bouncing between dispatch
        and release as fast as the store commits.
        """
        key = (task.queue, task.type)
        if key in session.keys:
            session.keys = session.keys - {key}
            log.warning(
                "node.type_refused",
                node_id=session.node.node_id,
                session_id=session.id,
                queue=task.queue,
                type=task.type,
            )

    async def _reject_all(
        self, session: Session, refused: list[tuple[TaskUpdate, ActiveTask | None]]
    ) -> list[UpdateAck]:
        """Answer the updates of a frame whose leases the session does not hold.

        The outcomes of tasks no longer on the board are looked up in the store in
        one read for the frame: one read each cost ~250 µs, and a frame of 40,000
        made-up outcomes held the node's stream 10 s.
        """
        gone = [
            u.lease.task_id
            for u, task in refused
            if task is None and isinstance(u, TERMINAL_UPDATES)
        ]
        records = await self._store.get_many(gone) if gone else {}
        acks: list[UpdateAck] = []
        audit: dict[tuple[str, str], list[str]] = {}  # (reason, update) -> "task#attempt"s
        for update, task in refused:
            ack = self._reject(session, update, task, records)
            if ack is None:
                continue
            acks.append(ack)
            if not ack.accepted:  # (accepted: a result resent after its ack was lost)
                key = (ack.reason, type(update).__name__)
                audit.setdefault(key, []).append(f"{ack.lease.task_id}#{ack.lease.attempt}")
        for (reason, kind), leases in audit.items():
            for start in range(0, len(leases), REJECTIONS_PER_LINE):
                chunk = leases[start : start + REJECTIONS_PER_LINE]
                log.info(
                    "report.rejected",
                    reason=reason,
                    update=kind,
                    node_id=session.node.node_id,
                    count=len(chunk),
                    leases=" ".join(chunk),
                )
        return acks

    def _reject(
        self,
        session: Session,
        update: TaskUpdate,
        task: ActiveTask | None,
        records: Mapping[str, TaskRecord],
    ) -> UpdateAck | None:
        """Answer an update whose lease the session does not hold (``records``: the
        stored tasks of the frame's outcomes no longer on the board)."""
        lease = update.lease
        reason = "STALE_ATTEMPT"
        if task is not None and task.attempt == lease.attempt and task.session_id != session.id:
            reason = "NOT_LEASED"
        elif task is None and isinstance(update, TERMINAL_UPDATES):
            record = records.get(lease.task_id)
            if record is None:
                reason = "TASK_NOT_FOUND"
            elif (
                record.state.is_terminal
                and record.attempt == lease.attempt
                and record.session_id == session.id
            ):
                # The node resent a result we already applied (its ack was lost).
                return UpdateAck(lease, True)
        self.counters[f"rejected_{reason.lower()}"] += 1
        return UpdateAck(lease, False, reason, f"lease {lease.task_id}#{lease.attempt} not held")

    def _require_live(self, session: Session) -> None:
        if not session.live:
            self.counters["rejected_session_expired"] += 1
            raise SessionExpired(session.id)

    # -- cancellation, expiry ------------------------------------------------

    def request_cancel(self, task: ActiveTask) -> None:
        """Ask the node holding ``task`` to stop it."""
        session = self._registry.sessions.get(task.session_id or "")
        if session is not None:
            session.send(SendCancel([Lease(task.id, task.attempt)]))

    async def expire_silent(self) -> None:
        """End sessions silent past the heartbeat timeout; requeue their leases."""
        deadline = time.monotonic() - self._config.heartbeat_timeout_s
        for session in self._registry.silent_since(deadline):
            log.warning(
                "node.dead",
                node_id=session.node.node_id,
                session_id=session.id,
                leases=len(session.leases),
                silent_s=round(time.monotonic() - session.last_seen, 3),
            )
            self.counters["sessions_expired"] += 1
            self._end(session, NodeState.DEAD, expired=True)
        if self._orphans:
            await self.requeue_orphans()

    def _end(self, session: Session, state: NodeState, expired: bool) -> None:
        for task_id, attempt in session.leases.items():
            self._orphan(task_id, attempt, expired)
        if expired:
            session.send(EndStream(SessionExpired(session.id)))
        self._registry.end(session, state)

    def _orphan(self, task_id: str, attempt: int, expired: bool) -> None:
        task = self._board.active.get(task_id)
        if task is not None and task.attempt == attempt:
            self._orphans[task_id] = _Orphan(task, attempt, expired)

    async def requeue_orphans(self) -> None:
        """Commit the requeue (or dead-lettering) of leases whose session ended."""
        await run_to_completion(self._requeue_orphans())

    async def _requeue_orphans(self) -> None:
        orphans = list(self._orphans.values())
        if not orphans:
            return
        transitions = [self._rules.orphaned(o.task, o.attempt, o.expired) for o in orphans]
        try:
            applied = await self._store.apply(transitions)
        except StoreUnavailable:
            return  # kept; the reaper retries next tick
        now = time.monotonic()
        changed = []
        for orphan, transition, ok in zip(orphans, transitions, applied, strict=True):
            if self._orphans.get(orphan.task.id) is orphan:
                del self._orphans[orphan.task.id]
            task = orphan.task
            if not ok or task.attempt != orphan.attempt or not task.state.is_leased:
                continue
            task.session_id = None
            if transition.lease_expiries is not None:
                task.lease_expiries = transition.lease_expiries
            assert transition.state is not None
            log.info(
                "lease.lost" if orphan.expired else "lease.returned",
                task_id=task.id,
                attempt=orphan.attempt,
                state=transition.state.name,
                lease_expiries=task.lease_expiries,
                mono=now,
            )
            if transition.state.is_terminal:
                self._board.forget(task, transition.state)
            else:
                self._board.make_ready(task, now)
            changed.append(task.id)
        self._watchers.notify(changed)
        self._dispatcher.kick()
