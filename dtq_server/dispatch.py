"""Choosing which ready task goes to which node, and leasing it.

Dispatch is push-based with credits: a node receives at most as many tasks
as it has free slots plus its prefetch, so no node hoards work another could
run. Each round deals in two parts. First every idle thread gets a task, one
per node per pass, the least recently served node first, which keeps nodes
evenly loaded when work is scarce. Then what is left fills the prefetch
buffers, as many per pass as a node has threads: a buffer empties at the pace
of its node's threads, so a node with 2 threads does not hold as many waiting
tasks as one with 16 while the latter runs out. Every lease of a round is
committed in one transaction before any assignment is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from dtq_server.board import Key, TaskBoard
from dtq_server.errors import StoreUnavailable
from dtq_server.failpoints import Failpoints
from dtq_server.models import ActiveTask, Assignment, QueueSettings, TaskState
from dtq_server.ratelimit import RateLimiter
from dtq_server.ready import ReadyPicker
from dtq_server.registry import NodeRegistry, SendAssignments, Session
from dtq_server.store.base import Store
from dtq_server.updates import LeaseGrant

log = structlog.get_logger(__name__)
STORE_RETRY_S = 0.2


class Dispatcher:
    """Leases ready tasks to nodes with free slots whenever something changes."""

    def __init__(
        self, board: TaskBoard, registry: NodeRegistry, store: Store, failpoints: Failpoints
    ) -> None:
        self._board = board
        self._failpoints = failpoints
        self._registry = registry
        self._store = store
        self._wake = asyncio.Event()
        self.queue_settings: dict[str, QueueSettings] = {}
        """Durable per-queue settings (pause, concurrency limit), loaded at start-up."""
        self.limiter = RateLimiter()
        """Token buckets of rate-limited queues and rate keys."""
        self._timer: asyncio.TimerHandle | None = None
        self.loading = False
        """While True (start-up, queued tasks still loading) nothing is leased."""
        self.paused = False
        """While True (shutting down) nothing new is leased."""

    def kick(self) -> None:
        """Something changed (a submit, a free slot, a new node): run a round soon."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch rounds until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.paused or self.loading:
                continue
            plan = self._plan()
            if plan:
                await self._lease(plan)

    def _plan(self) -> list[tuple[Session, ActiveTask]]:
        """Reserve ready tasks for free slots (in memory only; undone if the commit fails)."""
        sessions = self._registry.with_free_slots()
        if not sessions:
            return []
        try:
            return self._pick(sessions, time.monotonic())
        finally:
            self._board.end_round()

    def _pick(self, sessions: list[Session], now: float) -> list[tuple[Session, ActiveTask]]:
        room = self._room_per_limited_queue()
        closed = {name for name, q in self.queue_settings.items() if q.paused}
        closed |= {name for name, left in room.items() if left <= 0}
        throttled_queues, throttled_keys, wait_s = self.limiter.blocked(now)
        closed |= throttled_queues
        ready = {key for key in self._board.ready_keys() if key[0] not in closed}
        deal = _Deal(self._board, sessions, ready, room, set(throttled_keys), self.limiter, now)
        deal.passes({s.id: s.idle_slots for s in sessions}, per_pass=_one)
        deal.passes({s.id: s.free_slots for s in sessions}, per_pass=_its_threads)
        for session, _ in deal.plan:
            self._registry.serve(session)
        wait_s = wait_s if deal.wait_s is None else deal.wait_s
        if wait_s is not None:
            self._wake_in(wait_s)
        return deal.plan

    def _wake_in(self, delay_s: float) -> None:
        """Run a round when a rate-limit bucket has a token again (one timer at a time)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay_s
        if self._timer is not None and self._timer.when() <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(due, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.kick()

    async def _lease(self, plan: list[tuple[Session, ActiveTask]]) -> None:
        grants = [
            LeaseGrant(task.id, task.attempt, session.node.node_id, session.id)
            for session, task in plan
        ]
        try:
            try:
                assignments = await self._store.lease(grants)
            finally:
                _committed(plan)  # landed or not, these leases are no longer committing
        except StoreUnavailable as exc:
            log.warning("dispatch.store_unavailable", error=str(exc))
            self._undo(plan)
            await asyncio.sleep(STORE_RETRY_S)  # let the store recover before the next round
            self.kick()
            return
        self._failpoints.hit("lease.after_commit_before_send")
        leased = {a.lease.task_id for a in assignments}
        if len(leased) != len(plan):
            # Memory and store disagree (should not happen): trust the store, drop the rest.
            for session, task in plan:
                if task.id not in leased:
                    log.error("dispatch.lease_not_applied", task_id=task.id, attempt=task.attempt)
                    session.leases.pop(task.id, None)
                    self._board.forget(task, task.state)
        by_session: dict[str, list[int]] = defaultdict(list)
        sessions = {}
        for i, (session, task) in enumerate(plan):
            if task.id in leased:
                by_session[session.id].append(i)
                sessions[session.id] = session
        index = {a.lease.task_id: a for a in assignments}
        deliver(
            (sessions[session_id], [index[plan[i][1].id] for i in positions])
            for session_id, positions in by_session.items()
        )
        log.debug("dispatch.round", leased=len(assignments), nodes=len(by_session))

    def _room_per_limited_queue(self) -> dict[str, int]:
        """For queues with a concurrency limit: how many more tasks may be leased."""
        limits = {n: q.max_running for n, q in self.queue_settings.items() if q.max_running}
        if not limits:
            return {}
        held: dict[str, int] = defaultdict(int)
        for session in self._registry.sessions.values():
            for task_id in session.leases:
                task = self._board.active.get(task_id)
                if task is not None and task.queue in limits:
                    held[task.queue] += 1
        return {name: limit - held[name] for name, limit in limits.items()}

    def _undo(self, plan: list[tuple[Session, ActiveTask]]) -> None:
        now = time.monotonic()
        for session, task in plan:
            if session.leases.get(task.id) == task.attempt:
                del session.leases[task.id]
            task.attempt -= 1
            task.session_id = None
            self._board.make_ready(task, now)


def _one(session: Session) -> int:
    return 1


def _its_threads(session: Session) -> int:
    return max(1, session.node.slots)


class _Deal:
    """One dispatch round's leases, dealt to the nodes in passes (see the module)."""

    def __init__(
        self,
        board: TaskBoard,
        sessions: list[Session],
        ready: set[Key],
        room: dict[str, int],
        blocked: set[str],
        limiter: RateLimiter,
        now: float,
    ) -> None:
        self._sessions = sessions
        self._room = room
        """Leases each queue with a concurrency limit may still take."""
        self._blocked = blocked
        """Rate keys out of tokens: skipped this round. Keys that run out during it join."""
        self._limiter = limiter
        self._now = now
        # One set of keys and one picker per distinct set of keys a node serves, shared
        # by the nodes serving it: nodes started from the same code serve the same keys,
        # and one of each per node cost a round over 50 nodes serving 1,000 queues each
        # 71 ms. Mutable sets: queue limits reached during the round prune them.
        self._shared: dict[frozenset[Key], tuple[set[Key], ReadyPicker]] = {}
        for s in sessions:
            if s.keys not in self._shared:
                own = ready & s.keys
                self._shared[s.keys] = (own, ReadyPicker(board, own, blocked))
        self._pickers = {s.id: self._shared[s.keys][1] for s in sessions}
        self._dry: set[str] = set()
        """Sessions whose picker ran out this round."""
        self.plan: list[tuple[Session, ActiveTask]] = []
        self.wait_s: float | None = None
        """When a limit reached during the round lets work through again (None: none)."""

    def passes(self, budget: dict[str, int], per_pass: Callable[[Session], int]) -> None:
        """Lease up to ``budget[session]`` tasks to each session, ``per_pass(session)`` at
        a time, pass after pass, until every budget is spent or nothing is left."""
        progress = True
        while progress:
            progress = False
            for session in self._sessions:
                take = min(budget[session.id], per_pass(session))
                if take <= 0 or session.id in self._dry:
                    continue
                for _ in range(take):
                    if not self._lease_one(session):
                        self._dry.add(session.id)
                        break
                    budget[session.id] -= 1
                    progress = True

    def _lease_one(self, session: Session) -> bool:
        """Lease the session's next ready task; False when it has none left."""
        task = self._pickers[session.id].pop()
        if task is None:
            return False
        room, now = self._room, self._now
        queue_empty, key_empty = self._limiter.take(task.queue, task.rate_key, now)
        if task.queue in room:
            room[task.queue] -= 1
            queue_empty = queue_empty or room[task.queue] <= 0
        if queue_empty:  # a limit was reached: stop leasing that work
            for session_keys, _ in self._shared.values():
                session_keys -= {k for k in session_keys if k[0] == task.queue}
        if key_empty:
            self._blocked.add(task.rate_key)
        if queue_empty or key_empty:
            self.wait_s = self._limiter.blocked(now)[2]
        task.start_by = None
        task.state = TaskState.LEASED
        task.attempt += 1
        task.session_id = session.id
        task.node_id = session.node.node_id
        session.leases[task.id] = task.attempt
        session.leasing.add(task.id)
        self.plan.append((session, task))
        return True


def _committed(plan: list[tuple[Session, ActiveTask]]) -> None:
    """The lease commit of ``plan`` is over (landed or failed)."""
    for session, task in plan:
        session.leasing.discard(task.id)


def deliver(batches: Iterable[tuple[Session, list[Assignment]]]) -> None:
    """Send committed leases to their sessions, logging each (RELIABILITY.md 2.0)."""
    now = time.monotonic()
    # Looked up once: each lookup on structlog's module-level proxy re-binds (~1 µs),
    # and this runs for every task.
    debug = log.debug
    for session, batch in batches:
        for assignment in batch:  # the lease event log
            debug(
                "lease.granted",
                task_id=assignment.lease.task_id,
                attempt=assignment.lease.attempt,
                node_id=session.node.node_id,
                session_id=session.id,
                mono=now,
            )
        # A session that lost its stream meanwhile keeps the leases: it may
        # resume and reconcile them, or they expire with it. One that gave a lease
        # up while it committed (it left, or expired) is not sent it: its orphan
        # requeue returns it (the grant is logged all the same: it was committed).
        held = session.leases
        send = [a for a in batch if held.get(a.lease.task_id) == a.lease.attempt]
        if send:
            session.send(SendAssignments(send))
