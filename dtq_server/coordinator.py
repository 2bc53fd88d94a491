"""The coordinator: the durable queue, the node registry and dispatch, behind one object.

Servicers call it with plain domain values (queue settings and rate limits
through ``queue_admin``, operations on many tasks through ``bulk``). It owns
the background work:
the dispatcher (leases ready tasks to free slots) and the reaper (ends silent
node sessions, wakes retries whose backoff ended, probes a failing store).

Shutdown order (``stop``): refuse new submits and new sessions, stop leasing,
keep accepting results while nodes finish (``shutdown_grace_s``), then end
the streams and close the store. Leases still open keep their session id in
the store, so nodes resume them on the next coordinator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncGenerator, Callable

import structlog

from dtq_server import offload
from dtq_server.board import TaskBoard
from dtq_server.bulk import BulkOperations
from dtq_server.completion import run_to_completion
from dtq_server.config import ServerConfig
from dtq_server.depth import QueueDepth
from dtq_server.dispatch import Dispatcher
from dtq_server.errors import (
    GroupNotFound,
    InvalidArgument,
    NodeNotFound,
    ShuttingDown,
    StoreUnavailable,
    TaskNotFound,
    TaskTerminal,
)
from dtq_server.handoff import Handoff
from dtq_server.models import (
    ActiveTask,
    DependencyEvents,
    GroupStatus,
    NewTask,
    TaskError,
    TaskFilter,
    TaskRecord,
    TaskState,
)
from dtq_server.queue_admin import QueueAdmin
from dtq_server.registry import EndStream, NodeRegistry, Session
from dtq_server.scheduler import Scheduler
from dtq_server.sessions import NodeSessions
from dtq_server.store.base import Store
from dtq_server.task_types import DeclaredTypes
from dtq_server.turns import Turn
from dtq_server.updates import Transition
from dtq_server.validation import (
    SpecInput,
    spec_field,
    validate_specs,
    validate_task_id,
)
from dtq_server.watchers import TaskWatchers

log = structlog.get_logger(__name__)
WATCH_RECHECK_S = 5.0
LOAD_CHUNK = 20_000
SWEEP_BATCH = 1000
STORE_PROBE_S = 1.0
PROMOTE_CHUNK = 1_000
"""Delayed tasks made ready at a time (~3.5 ms of the event loop)."""
WRITE_CHUNK = 1_000
"""Tasks failed per write when their schedule-to-start deadlines pass together."""
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 4 * 1024 * 1024
"""A page ends early once its tasks hold this much (payloads, results, errors): a full
page of 1 MiB payloads was over the send limit (8 MiB) and ListTasks failed for good."""
_BOARD_STATES = frozenset({TaskState.QUEUED, TaskState.LEASED, TaskState.RUNNING})
"""The states of a task the board tracks (a WAITING one is the store's alone)."""


class Coordinator:
    """The queue's domain core (no gRPC in here)."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        on_health: Callable[[bool], None] = lambda serving: None,
    ) -> None:
        self.config = config
        self.store = store
        self.board = TaskBoard()
        self.registry = NodeRegistry()
        self.watchers = TaskWatchers()
        self.dispatcher = Dispatcher(self.board, self.registry, store, config.failpoints)
        self.task_types = DeclaredTypes(store, config.strict_task_types)
        self.sessions = NodeSessions(
            config, store, self.board, self.registry, self.dispatcher, self.watchers,
            self.task_types,
        )  # fmt: skip
        self.scheduler = Scheduler(config, store, self._track_created, self.task_types)
        store.set_dependency_listener(self._dependencies_settled)
        self._on_health = on_health
        self._store_ok = True
        self._shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = asyncio.Event()
        """Set once every queued task is on the board (start-up loads them in chunks)."""
        self.handoff = Handoff(self.board, self.registry, self.dispatcher, config.failpoints)
        self.depth = QueueDepth(self.board, self.dispatcher)
        self.queue_admin = QueueAdmin(store, self.dispatcher)
        self.bulk = BulkOperations(
            store, self.board, self.dispatcher, self.sessions, self.watchers, self._loaded
        )

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Load unfinished tasks from the store and start dispatching."""
        self.dispatcher.queue_settings = await self.store.load_queues()
        await self.task_types.load()
        now = time.monotonic()
        for name, settings in self.dispatcher.queue_settings.items():
            self.dispatcher.limiter.configure_queue(name, settings.rate_limit, now)
        for limit in await self.store.load_rate_limits():
            self.dispatcher.limiter.configure_key(limit.key, limit.per_second, limit.burst, now)
        await self.scheduler.load()
        # Leased tasks first and at once: nodes may resume their sessions right away.
        leased = await self.store.load_active((TaskState.LEASED, TaskState.RUNNING))
        now = time.monotonic()
        for task in leased:
            self.board.track(task, now)
        self.sessions.recover(leased)
        log.info("coordinator.recovered", leased=len(leased), sessions=len(self.registry.sessions))
        # Queued tasks load in the background, so a deep queue does not delay serving;
        # dispatch waits until they are all in, so priority and FIFO order hold.
        self.dispatcher.loading = True
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dtq-dispatcher"),
            asyncio.create_task(self._reap_forever(), name="dtq-reaper"),
            asyncio.create_task(self._sweep_forever(), name="dtq-sweeper"),
            asyncio.create_task(self.scheduler.run(), name="dtq-scheduler"),
            asyncio.create_task(self._load_queued(), name="dtq-loader"),
        ]

    async def _load_queued(self) -> None:
        started, after, total = time.monotonic(), 0, 0
        while True:
            chunk = await self.store.load_active((TaskState.QUEUED,), after, LOAD_CHUNK)
            now = time.monotonic()
            for task in chunk:
                if task.id not in self.board.active:  # a retry may have tracked it already
                    self.board.track(task, now)
            total += len(chunk)
            if len(chunk) < LOAD_CHUNK:
                break
            after = chunk[-1].seq
        self.dispatcher.loading = False
        self._loaded.set()
        self.dispatcher.kick()
        log.info("coordinator.loaded", queued=total, seconds=round(time.monotonic() - started, 2))

    def begin_shutdown(self) -> None:
        """Refuse new submits and sessions; lease nothing more. Results are still applied."""
        self._shutting_down = True
        self.scheduler.stopped = True
        self.sessions.accept_new = False
        self.dispatcher.paused = True

    async def stop(self, grace_s: float) -> None:
        """Ordered, idempotent shutdown (see the module docstring)."""
        self.begin_shutdown()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(
            s.leases and s.outbox is not None for s in self.registry.sessions.values()
        ):
            await asyncio.sleep(0.05)
        for session in list(self.registry.sessions.values()):
            session.send(EndStream(ShuttingDown()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.task_types.flush()

    @property
    def shutting_down(self) -> bool:
        """True once shutdown began."""
        return self._shutting_down

    def store_result(self, ok: bool) -> None:
        """Called (on the loop) when the store's commits start failing or work again.

        A failed commit turns health NOT_SERVING at once. A small commit that
        works again is no proof of recovery (a full disk still takes a page or
        two), so health comes back only when the reaper's probe, a full-size
        write, commits (:meth:`_set_store_ok`).
        """
        if not ok:
            self._set_store_ok(False)

    def _set_store_ok(self, ok: bool) -> None:
        if ok != self._store_ok:
            self._store_ok = ok
            log.warning("store.health", writable=ok)
            self._on_health(ok and not self._shutting_down)

    async def _reap_forever(self) -> None:
        last_probe = 0.0
        last_tick = time.monotonic()
        tick = self.config.reaper_tick_s
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_tick > max(1.0, 4 * tick):
                # The sleep overran: the process was frozen (or the loop held), not the
                # nodes. Measured across the sleep alone, not the awaits below: a slow
                # write there is not a freeze.
                self.sessions.forgive(now - last_tick - tick)
            while moved := self.board.promote_due(now, PROMOTE_CHUNK):
                self.dispatcher.kick()
                if moved < PROMOTE_CHUNK:
                    break
                # Many tasks due at one moment (300,000 sharing a run_at held the loop
                # ~1 s): calls are served between chunks, and the 1 ms lets the other
                # threads (grpc's poller, the store's) take the interpreter lock too.
                await asyncio.sleep(0.001)
            await self.sessions.expire_silent()
            while missed := self.board.missed_start(now, WRITE_CHUNK):
                try:
                    await self._fail_unstarted(missed)
                except StoreUnavailable:
                    break  # back on the board, and failed on a later pass
                if len(missed) < WRITE_CHUNK:
                    break
            if not self._store_ok and now - last_probe >= STORE_PROBE_S:
                last_probe = now
                with contextlib.suppress(StoreUnavailable):
                    await self.store.check_writable()
                    self._set_store_ok(True)
            last_tick = time.monotonic()

    def _dependencies_settled(self, events: DependencyEvents) -> None:
        """A commit unblocked waiting tasks (now QUEUED) or cascaded a failure to them."""
        now = time.monotonic()
        for task in events.unblocked:
            self.board.track(task, now)
        self.watchers.notify([t.id for t in events.unblocked] + events.finished)
        if events.unblocked:
            self.dispatcher.kick()
        log.debug(
            "dependencies.settled", unblocked=len(events.unblocked), failed=len(events.finished)
        )

    async def group(self, group_id: str) -> GroupStatus:
        """The members of a group, counted by state."""
        status = await self.store.group_status(group_id)
        if status is None:
            raise GroupNotFound(group_id)
        return status

    async def _fail_unstarted(self, tasks: list[ActiveTask]) -> None:
        """Dead-letter queued tasks no node started within their schedule-to-start timeout."""
        error = TaskError(
            "SCHEDULE_TO_START_TIMEOUT", "no node started the task in time", retryable=False
        )
        transitions = [
            Transition(t.id, t.attempt, (TaskState.QUEUED,), state=TaskState.FAILED, error=error)
            for t in tasks
        ]
        # Off the board first, as a cancel does: a dispatch round during the commit
        # leased them otherwise, and the lease that reached the writer first won (a
        # task past its deadline started, or a lease refused by the store).
        for task in tasks:
            self.board.forget(task, TaskState.FAILED)
        try:
            applied = await self.store.apply(transitions)
        except StoreUnavailable:
            self.board.restore(tasks, time.monotonic())  # failed on a later pass instead
            raise
        for task, ok in zip(tasks, applied, strict=True):
            if not ok:
                log.error("schedule_to_start.not_applied", task_id=task.id)
        self.watchers.notify(t.id for t in tasks)
        log.info("tasks.schedule_to_start_timeout", count=sum(applied))

    async def _sweep_forever(self) -> None:
        # A task of its own, not a step of the reaper: 900,000 tasks expiring together
        # took ~8 s to delete, during which no node was found dead and no deadline or
        # delayed task was looked at.
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            with contextlib.suppress(StoreUnavailable):
                await self.sweep_expired()

    async def sweep_expired(self) -> int:
        """Delete finished tasks whose retention ended; returns how many."""
        total = 0
        while True:
            deleted = await self.store.delete_expired(time.time(), SWEEP_BATCH)
            total += deleted
            if deleted < SWEEP_BATCH:
                break
        if total:
            log.info("tasks.swept", deleted=total)
        return total

    # -- tasks -------------------------------------------------------------

    async def submit(
        self,
        specs: list[SpecInput],
        batch: bool,
        group_id: str | None = None,
        turn: Turn | None = None,
    ) -> list[tuple[TaskRecord, bool]]:
        """Validate and durably store tasks; returns (task, created) per spec.

        With a ``turn`` (see :mod:`dtq_server.turns`) the tasks are validated at
        once but stored only when the turn comes; the caller ends it.
        """
        if self._shutting_down:
            raise ShuttingDown()
        new = await offload.run(lambda: validate_specs(specs, self.config, batch), len(specs))
        self.task_types.check(new, lambda index: spec_field(index, batch))
        if group_id is not None:
            new = [dataclasses.replace(t, group_id=group_id) for t in new]
        if turn is not None:
            await turn.wait()
        await self.config.failpoints.pause("submit.before_commit")  # a cancel still stops it
        # A client that gives up (deadline, cancelled call) must not stop this half-way:
        # the tasks would be committed but never queued in memory until a restart.
        return await run_to_completion(self._store_new(new, batch))

    async def _store_new(self, new: list[NewTask], batch: bool) -> list[tuple[TaskRecord, bool]]:
        self.config.failpoints.hit("submit.before_commit")
        with self.depth.places(new) as places:
            # Reserved and queued for the writer with no await in between: anything that
            # touches these leases meanwhile (a session ending) commits after the insert.
            direct = self.handoff.reserve(new, time.monotonic())
            try:
                grants = {d.task.id: d.grant for d in direct}
                results = await self.store.insert(new, batch, grants, places)
            except BaseException:
                self.handoff.undo(direct)
                raise
            self.config.failpoints.hit("submit.after_commit_before_reply")
            await self.config.failpoints.pause("submit.after_commit_before_reply")  # no cancel
            with places.on_board() if places is not None else contextlib.nullcontext():
                self._track_created(new, results)
        self.handoff.settle(direct, new, results)
        return results

    def _track_created(self, new: list[NewTask], results: list[tuple[TaskRecord, bool]]) -> None:
        """Put newly stored tasks on the board (submits and schedule ticks)."""
        now, wall = time.monotonic(), time.time()
        for spec, (record, created) in zip(new, results, strict=True):
            if created and record.state is TaskState.QUEUED:  # not WAITING nor failed
                task = _active(record)
                if spec.run_at is not None:
                    task.due_at = now + max(0.0, spec.run_at - wall)
                if spec.schedule_to_start_s is not None:
                    task.start_by = (task.due_at or now) + spec.schedule_to_start_s
                self.board.track(task, now)
        self.dispatcher.kick()

    async def get(self, task_id: str) -> TaskRecord:
        """One task; TaskNotFound if there is none."""
        record = await self.store.get(validate_task_id(task_id))
        if record is None:
            raise TaskNotFound(task_id)
        return record

    async def watch(
        self, task_id: str, known: TaskRecord | None = None
    ) -> AsyncGenerator[TaskRecord, None]:
        """The task now, then after every change, until it is terminal.

        ``known`` is the task as a commit just answered it (a new task from a
        submit): the watch starts from it instead of reading the store, unless
        memory shows that something changed the task since.
        """
        task_id = validate_task_id(task_id)
        with self.watchers.subscribe(task_id) as subscription:
            changed = subscription.changed
            last: TaskRecord | None = None
            start = known if known is not None and self._unchanged_since(known) else None
            while True:
                changed.clear()
                record = start or subscription.take() or await self.store.get(task_id)
                start = None
                if record is None:
                    raise TaskNotFound(task_id)
                if record != last:
                    yield record
                    last = record
                if record.state.is_terminal:
                    return
                # Re-read now and then anyway: a notification is only an optimisation.
                with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see scheduler.run)
                    async with asyncio.timeout(WATCH_RECHECK_S):
                        await changed.wait()

    def _unchanged_since(self, record: TaskRecord) -> bool:
        """True if the board holds the task as ``record`` left it.

        Every committed change that watchers are told of (a start, an outcome, a
        cancel, a lease expiry, a retry) shows in one of these fields of the
        board's copy or takes the task off the board; a dispatch round's lease
        shows before its commit. Progress would not, but it needs the task
        RUNNING first, which does.
        """
        task = self.board.active.get(record.id)
        return (
            task is not None
            and task.state is record.state
            and task.attempt == record.attempt
            and task.failures == record.failures
            and task.lease_expiries == record.lease_expiries
            and task.cancel_requested == record.cancel_requested
        )

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued task at once; ask the node of a running one to stop it."""
        return await run_to_completion(self._cancel(task_id))

    async def _cancel(self, task_id: str) -> TaskRecord:
        task_id = validate_task_id(task_id)
        await self._loaded.wait()  # a queued task not yet loaded would look finished
        task = self.board.active.get(task_id)
        if task is None:
            record = await self.get(task_id)
            if record.state in _BOARD_STATES:
                # Unfinished in the store yet off the board: a change that finishes it (a
                # cancel, a bulk cancel, a schedule-to-start failure) took it off first and
                # its commit is in the writer's queue. Answer from what that commit stored,
                # not "already queued": an op queued now commits with it or after it.
                await self.store.apply([])
                record = await self.get(task_id)
            if record.state is TaskState.WAITING:  # not in memory; the store cascades
                transition = Transition(
                    task_id, record.attempt, (TaskState.WAITING,), state=TaskState.CANCELLED
                )
                await self.store.apply([transition])
                self.watchers.notify([task_id])
                return await self.get(task_id)
            if record.state is TaskState.CANCELLED:
                return record
            raise TaskTerminal(task_id, record.state.name.lower())
        if task.state is TaskState.QUEUED:
            # Off the board first, so no dispatch round can lease it during the commit.
            self.board.forget(task, TaskState.CANCELLED)
            transition = Transition(
                task.id, task.attempt, (TaskState.QUEUED,), state=TaskState.CANCELLED
            )
            try:
                (applied,) = await self.store.apply([transition])
            except StoreUnavailable:
                self.board.restore([task], time.monotonic())
                raise
            if not applied:
                log.error("cancel.not_applied", task_id=task.id)
        elif not task.cancel_requested:
            await self.store.apply(
                [
                    Transition(
                        task.id,
                        task.attempt,
                        (TaskState.LEASED, TaskState.RUNNING),
                        cancel_requested=True,
                    )
                ]
            )
            task.cancel_requested = True
            self.sessions.request_cancel(task)
        self.watchers.notify([task_id])
        log.info("task.cancel", task_id=task_id, state=task.state.name.lower())
        return await self.get(task_id)

    async def list_tasks(
        self, task_filter: TaskFilter, page_size: int, page_token: str
    ) -> tuple[list[TaskRecord], str]:
        """A page of tasks, newest first, and the token of the next page ("" if last)."""
        if page_size > MAX_PAGE_SIZE:
            raise InvalidArgument([("page_size", f"must be at most {MAX_PAGE_SIZE}")])
        fingerprint = _filter_fingerprint(task_filter)
        before = _decode_token(page_token, fingerprint) if page_token else None
        page = await self.store.list_tasks(
            task_filter, page_size or DEFAULT_PAGE_SIZE, before, MAX_PAGE_BYTES
        )
        token = ""
        if page.next_before_seq is not None:
            raw = f"{page.next_before_seq}:{fingerprint}".encode()
            token = base64.urlsafe_b64encode(raw).decode()
        return page.tasks, token

    # -- admin -------------------------------------------------------------

    def nodes(self, include_gone: bool) -> list[Session]:
        """Sessions for ListNodes."""
        return self.registry.listing(include_gone)

    def drain(self, node_id: str) -> Session:
        """Drain the live session(s) of a node (a disconnected one once it resumes)."""
        live = self.registry.live_for_node(node_id)
        if not live:
            raise NodeNotFound(node_id)
        for session in live:
            self.sessions.drain(session)
        return live[0]


def _active(record: TaskRecord) -> ActiveTask:
    return ActiveTask(
        id=record.id,
        seq=record.seq,
        type=record.type,
        queue=record.queue,
        state=record.state,
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        failures=record.failures,
        lease_expiries=record.lease_expiries,
        retry_backoff_s=record.retry_backoff_s,
        priority=record.priority,
        rate_key=record.rate_key,
    )


def _filter_fingerprint(task_filter: TaskFilter) -> str:
    raw = f"{task_filter.queue}|{task_filter.state}|{task_filter.type}"
    if task_filter.headers:  # only then: tokens of filters without headers stay as they were
        raw += f"|{task_filter.headers}"
    return hashlib.blake2b(raw.encode(), digest_size=6).hexdigest()


def _decode_token(token: str, fingerprint: str) -> int:
    try:
        seq, seen = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if seen != fingerprint:
            raise ValueError("filters changed")
        place = int(seq)
        if not 0 <= place < 2**63:  # made up: past a 64-bit integer, SQLite raised
            raise ValueError("not a task's place")
        return place
    except (ValueError, UnicodeError) as exc:
        raise InvalidArgument(
            [("page_token", "not a token from this listing (filters must stay the same)")]
        ) from exc
