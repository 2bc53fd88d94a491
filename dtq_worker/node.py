"""The runnable worker node: registry + supervisor + connection, and its shutdown.

Shutdown (SIGTERM/SIGINT, :meth:`Node.stop`, or DrainRequested) is ordered:

1. Stop taking work at once: locally queued tasks are released
   (``SHUTDOWN``); assignments that still arrive are held but never run, and
   the final Leave hands them back (see :mod:`dtq_worker.ledger`).
2. Running tasks get ``shutdown_grace_s`` to finish, and their outcomes are
   reported as usual. The stream stays open meanwhile because heartbeats must
   keep flowing: a node that fell silent would be declared dead and its still
   running tasks requeued and run twice. That is why the stream closes last.
3. Every task still without an outcome is released (``SHUTDOWN``) after its
   cancel event is set; its thread (a daemon) is abandoned.
4. The node waits, bounded by ``rpc_timeout_s``, for the coordinator to
   acknowledge every outcome, then sends Leave (the session ends at once),
   half-closes the stream, and exits 0.

A second signal cuts the grace short. When worker threads die too often
(restart intensity exceeded) the node skips the grace, releases everything
and exits 70.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import threading
from collections.abc import Callable

import structlog

from dtq import __version__, loops
from dtq_worker.bridge import Event, EventKind, LoopBridge
from dtq_worker.config import WorkerConfig
from dtq_worker.connection import Connection
from dtq_worker.errors import LifespanFailed, RestartIntensityExceeded
from dtq_worker.intensity import RestartIntensity
from dtq_worker.ledger import Ledger
from dtq_worker.lifespan import Lifespan
from dtq_worker.metrics import NodeGauges, NodeMetrics, serve_metrics
from dtq_worker.models import (
    AssignmentsReceived,
    CancelRequested,
    DrainRequested,
    HeartbeatAcked,
    HeartbeatInfo,
    Inbound,
    Lease,
    LeaveReason,
    Registered,
    Registration,
    Released,
    ReleaseReason,
    Update,
    UpdatesAcked,
)
from dtq_worker.prefetch import RESIZE_EVERY_S, AutoPrefetch, worth_telling
from dtq_worker.process_pool import ProcessPool
from dtq_worker.registry import Registry
from dtq_worker.runner import Runner
from dtq_worker.supervisor import Supervisor
from dtq_worker.tracing import TaskTracer

log = structlog.get_logger(__name__)

EXIT_OK = 0
"""Clean shutdown (signal, stop() or drain)."""
EXIT_FATAL = 1
"""The coordinator refused the node, the connection failed unexpectedly, or the
registry's lifespan failed to set up."""
EXIT_RESTART_INTENSITY = 70
"""Worker threads died too often (EX_SOFTWARE)."""


class Node:
    """A worker node. :meth:`run` blocks until the node has shut down and returns the exit code.

    It may run in any thread (signals are handled only when it runs in the main
    thread); :meth:`stop` is thread-safe and ``ready`` is set once registered.
    """

    def __init__(self, config: WorkerConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.ready = threading.Event()
        """Set when the first session is registered."""
        self.metrics_port: int | None = None
        """The port ``/metrics`` is served on (with ``metrics_listen``), once running."""
        self._bridge = LoopBridge(self._apply)
        self._metrics = (
            NodeMetrics(config.node_id, self._gauges()) if config.metrics_listen else None
        )
        self._ledger = Ledger(
            self._bridge.progress,
            config.progress_interval_s,
            on_outcome=None if self._metrics is None else self._metrics.finished,
        )
        self._pool = (
            ProcessPool(registry, config.task_timeout_s) if config.isolation == "process" else None
        )
        tracer = TaskTracer() if config.tracing else None
        self._runner = Runner(registry, self._bridge, config.max_result_bytes, self._pool, tracer)
        self._supervisor = Supervisor(
            config.threads,
            self._runner,
            self._bridge,
            RestartIntensity(config.max_restarts, config.restart_period_s),
            on_escalate=self._escalated_threadsafe,
            # The pool enforces the timeout itself, by killing the child.
            task_timeout_s=None if self._pool is not None else config.task_timeout_s,
        )
        self._auto_prefetch = (
            AutoPrefetch(config.threads, config.prefetch_buffer_bytes)
            if config.prefetch == "auto"
            else None
        )
        self._resized_at = -math.inf
        """Loop time of the last re-size of the auto prefetch."""
        self._connection = Connection(config, self)
        self._stop = asyncio.Event()
        """Stop signal: begin the shutdown."""
        self._hurry = asyncio.Event()
        """Skip what is left of the grace."""
        self._change = asyncio.Event()
        """Pulsed whenever the ledger changed, for the shutdown waits."""
        self._exit_code = EXIT_OK
        self._leave_reason = LeaveReason.SHUTDOWN

    @property
    def prefetch(self) -> int:
        """Tasks the node holds beyond its slots now (``--prefetch auto`` changes it)."""
        if self._auto_prefetch is not None:
            return self._auto_prefetch.value
        assert self.config.prefetch != "auto"
        return self.config.prefetch

    @property
    def restarts(self) -> int:
        """Worker threads restarted so far."""
        return self._supervisor.restarts

    def _gauges(self) -> NodeGauges:
        """What the metrics page reads from the node at each scrape (from its own thread)."""
        return NodeGauges(
            threads=self.config.threads,
            running=lambda: len(self._supervisor.work_done().running),
            threads_alive=lambda: self._supervisor.alive,
            restarts=lambda: self._supervisor.restarts,
            abandoned=lambda: self._supervisor.abandoned,
            prefetch=lambda: self.prefetch,
        )

    def run(self) -> int:
        """Run until shut down (once per Node); return the process exit code.

        The registry's lifespan (thread isolation: handlers run in this process)
        is set up before the node connects, so a node whose setup fails never
        takes a task, and torn down once the node has left.
        """
        factory = self.registry.lifespan_factory
        lifespan = Lifespan(factory) if factory is not None and self._pool is None else None
        if lifespan is not None:
            try:
                self._ledger.resources = lifespan.start()
            except LifespanFailed as exc:
                log.critical("node.lifespan_failed", error=str(exc), exc_info=exc.__cause__)
                return EXIT_FATAL
        try:
            return loops.run(self._main(), self.config.event_loop)
        finally:
            if lifespan is not None:
                lifespan.stop()

    def stop(self) -> None:
        """Begin a graceful shutdown. Thread-safe; repeated calls cut the grace short."""
        self._bridge.call_soon(self._request_stop)

    # --- main sequence ------------------------------------------------------------------

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._bridge.bind(loop)
        signals = self._install_signal_handlers(loop)
        log.info(
            "node.starting",
            node_id=self.config.node_id,
            coordinator=self.config.coordinator,
            threads=self.config.threads,
            prefetch=self.config.prefetch,
            queues=list(self.config.queues),
            task_types=list(self.registry.task_types),
            event_loop=loops.running(),
        )
        self._supervisor.start()
        metrics_server = None
        if self._metrics is not None and self.config.metrics_listen is not None:
            metrics_server = serve_metrics(self.config.metrics_listen, self._metrics)
            self.metrics_port = metrics_server.server_port
            log.info("node.metrics", port=self.metrics_port)
        connection = self._connection.start()
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait((connection, stopping), return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                return self._connection_failed(connection)
            await self._shutdown()
            return self._exit_code
        finally:
            stopping.cancel()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            self._supervisor.close()
            if self._pool is not None:
                self._pool.close()
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _shutdown(self) -> None:
        """Steps 1-4 of the module docstring."""
        grace_s = 0.0 if self._hurry.is_set() else self.config.shutdown_grace_s
        self._ledger.accepting = False
        for job in self._supervisor.stop_taking_work():
            self._ledger.finished(job.lease, Released(ReleaseReason.SHUTDOWN))
        self._changed()
        log.info("node.stopping", running=self._ledger.unfinished, grace_s=grace_s)
        await self._wait_for(lambda: self._ledger.unfinished == 0 or self._hurry.is_set(), grace_s)
        released = self._ledger.release_unfinished(ReleaseReason.SHUTDOWN)
        if released:
            log.warning("tasks.released", count=released, reason=ReleaseReason.SHUTDOWN.value)
        self._changed()
        outbox = self._ledger.outbox
        if not await self._wait_for(lambda: len(outbox) == 0, self.config.rpc_timeout_s):
            log.warning("node.unacknowledged", count=len(outbox))
        await self._connection.close(self._leave_reason, self.config.rpc_timeout_s)
        log.info("node.stopped", exit_code=self._exit_code, restarts=self.restarts)

    def _connection_failed(self, connection: asyncio.Task[None]) -> int:
        error = connection.exception()
        log.critical("node.connection_failed", error=str(error), exc_info=error)
        self._ledger.drop_all("connection failed")
        return EXIT_FATAL

    async def _wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``done()`` (re-checked at every ledger change) or the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._change.clear()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                # that lands as the event is set.
                async with asyncio.timeout(remaining):
                    await self._change.wait()
            except TimeoutError:
                return done()
        return True

    # --- stop triggers (loop thread) ----------------------------------------------------

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []  # embedded (tests): the host owns signals; use stop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("node.signal", signal=sig.name)
        self._request_stop()

    def _request_stop(self) -> None:
        if self._stop.is_set():
            log.warning("node.hurry", running=self._ledger.unfinished)
            self._hurry.set()
            self._changed()
        self._stop.set()

    def _escalated_threadsafe(self, error: RestartIntensityExceeded) -> None:
        """Called on the supervisor's thread."""
        self._bridge.call_soon(self._escalated)

    def _escalated(self) -> None:
        self._exit_code = EXIT_RESTART_INTENSITY
        self._leave_reason = LeaveReason.RESTART_INTENSITY_EXCEEDED
        self._hurry.set()
        self._stop.set()
        self._changed()

    # --- worker-thread events -----------------------------------------------------------

    def _apply(self, events: list[Event]) -> None:
        ledger = self._ledger
        loop = asyncio.get_running_loop()
        for kind, lease, outcome in events:
            if outcome is not None:
                ledger.finished(lease, outcome)
            elif kind is EventKind.STARTED:
                ledger.started(lease)
            else:
                due = ledger.progress(lease, loop.time())
                if due is not None:
                    loop.call_at(due, self._flush_progress, lease)
        if self._auto_prefetch is not None and loop.time() - self._resized_at >= RESIZE_EVERY_S:
            before = self._auto_prefetch.value
            if worth_telling(before, self._resize_prefetch(None)):
                self._connection.heartbeat_soon()
        self._changed()

    def _flush_progress(self, lease: Lease) -> None:
        self._ledger.flush_progress(lease, asyncio.get_running_loop().time())
        self._changed()

    def _changed(self) -> None:
        self._connection.wake()
        self._change.set()

    # --- SessionHandler (called by the connection) --------------------------------------

    def registration(self, resume_session_id: str) -> Registration:
        """The RegisterNode for a new session, or for resuming ``resume_session_id``."""
        return Registration(
            node_id=self.config.node_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            task_types=self.registry.task_types,
            queues=self.config.queues,
            slots=self.config.threads,
            prefetch=self.prefetch,
            resume_session_id=resume_session_id,
            leases=self._ledger.held_leases() if resume_session_id else (),
        )

    def registered(self, registered: Registered) -> None:
        """A session is open: reconcile held leases and resend what is unacknowledged."""
        if not registered.resumed:
            self._ledger.drop_all("session not resumed")
        self._ledger.drop(registered.stale_leases, "stale lease")
        if registered.max_result_bytes:
            self._runner.max_result_bytes = min(
                self.config.max_result_bytes, registered.max_result_bytes
            )
        self._ledger.resend()
        self.ready.set()
        self._changed()

    def received(self, message: Inbound) -> None:
        """Act on one coordinator message."""
        match message:
            case AssignmentsReceived(assignments):
                if self._auto_prefetch is not None:
                    self._auto_prefetch.received(
                        len(assignments), sum(len(a.payload.data) for a in assignments)
                    )
                for assignment in assignments:
                    job = self._ledger.accept(assignment)
                    if job is not None:
                        self._supervisor.submit(job)
            case UpdatesAcked(acks):
                for ack in acks:
                    self._ledger.ack(ack)
            case HeartbeatAcked(_, stale):
                self._ledger.drop(stale, "stale lease")
            case CancelRequested(leases):
                self._ledger.cancel(leases)
            case DrainRequested():
                log.info("node.drain_requested")
                if not self._stop.is_set():
                    self._leave_reason = LeaveReason.DRAINED
                    self._stop.set()
            case Registered():
                pass  # only ever the first message; the connection handles it
        self._changed()

    def heartbeat_info(self, round_trip_s: float | None) -> HeartbeatInfo:
        """Every held lease, the restart count and, with ``--prefetch auto``, the prefetch
        re-sized to the tasks run since the last re-size.

        Queued tasks the new prefetch no longer wants are handed back here: their
        releases go out after this heartbeat, so the coordinator lowers the
        node's credit before it sees the freed slots (it would refill them).
        """
        prefetch = None
        if self._auto_prefetch is not None:
            prefetch = self._resize_prefetch(round_trip_s)
            supervisor = self._supervisor
            self._hand_back(self._auto_prefetch.surplus(supervisor.queued, supervisor.idle))
        return HeartbeatInfo(self._ledger.held_leases(), self._supervisor.restarts, prefetch)

    def _hand_back(self, count: int) -> None:
        """Release ``count`` queued tasks (oldest first) so that other nodes can run them."""
        if count <= 0:
            return
        jobs = self._supervisor.take_back(count)
        for job in jobs:
            self._ledger.finished(job.lease, Released(ReleaseReason.PREFETCH_LOWERED))
        if jobs:
            log.info("tasks.handed_back", count=len(jobs), prefetch=self.prefetch)

    def _resize_prefetch(self, round_trip_s: float | None) -> int:
        """Re-size the auto prefetch from the work done since the last re-size."""
        assert self._auto_prefetch is not None
        self._resized_at = asyncio.get_running_loop().time()
        before = self._auto_prefetch.value
        after = self._auto_prefetch.update(self._supervisor.work_done(), round_trip_s)
        if after != before:
            log.debug("node.prefetch", prefetch=after, was=before)
        return after

    def take_updates(self) -> list[Update]:
        """Every update waiting to be written."""
        return self._ledger.take_pending()

    def session_lost(self) -> None:
        """The session expired: drop every lease."""
        self._ledger.drop_all("session expired")
        self._changed()


def run_node(config: WorkerConfig, registry: Registry) -> int:
    """Run a worker node until it shuts down; return the process exit code."""
    return Node(config, registry).run()
