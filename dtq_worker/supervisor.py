"""The node's supervisor: a fixed pool of permanent worker threads, OTP one_for_one style.

Worker threads take jobs from one local queue and run them. A thread that
dies (an exception escapes its loop, e.g. a handler raising ``SystemExit``) is
replaced; the job it held is released to the coordinator (``WORKER_DIED``, or
``LIFESPAN_FAILED`` when its handler process could not set up the registry's
lifespan, which is no fault of the task) and the restart is counted. More than
``max_restarts`` restarts within ``restart_period_s`` is an escalation: the
supervisor stops restarting and tells the node, which releases everything and
exits non-zero.

With a timeout (the task's ``execution_timeout``, else the node's
``task_timeout_s``; thread isolation only) the monitor also wakes every
``WATCH_S``: a worker whose handler has run past the timeout
has its task reported ``TIMED_OUT`` (retryable) and cancelled, and is marked
*poisoned*. A Python thread cannot be killed, so the poisoned thread is left
to finish its handler (its late outcome is ignored: the task was reported),
then exits; a fresh thread takes its slot at once. This is not a crash and
does not count against the restart intensity. A handler that never returns
keeps its (daemon) thread forever: ``--isolation process`` kills it instead.

:meth:`Supervisor.check_workers` is the single supervision step (reap the
dead, start the shortfall); the monitor thread just runs it whenever a worker
exits, and tests can call it directly.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable

import structlog

from dtq_worker import coroutines
from dtq_worker.errors import LifespanFailed, RestartIntensityExceeded
from dtq_worker.intensity import RestartIntensity
from dtq_worker.models import ErrorType, Failed, Failure, Released, ReleaseReason
from dtq_worker.prefetch import WorkDone
from dtq_worker.runner import Job, Reporter, Runner

log = structlog.get_logger(__name__)

POLL_S = 0.1
"""How often an idle worker thread looks at its stop signal."""
WATCH_S = 0.1
"""With a task timeout: how often the monitor looks for handlers past it."""


class _Worker:
    """One worker thread, the job it holds, and why it died."""

    __slots__ = (
        "busy_s",
        "current",
        "death",
        "exited",
        "finished",
        "poisoned",
        "started_at",
        "thread",
    )

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.current: Job | None = None
        """Written only by the worker thread; read by the supervisor once it has exited."""
        self.death: BaseException | None = None
        self.exited = False
        """Set by the thread as it leaves; unlike ``is_alive()`` it is already true when the
        monitor is woken, so no exit can go unnoticed."""
        self.started_at = 0.0
        """When the thread took ``current`` (written before ``current``)."""
        self.poisoned = False
        """Its handler timed out: the thread exits once the handler returns."""
        self.finished = 0
        """Jobs this thread ran to the end (written only by the thread)."""
        self.busy_s = 0.0
        """Seconds it spent running them."""


class Supervisor:
    """Keeps ``slots`` worker threads alive and feeds them jobs.

    Stop signals: ``stop_taking_work`` tells workers to exit after their current
    job; ``close`` stops the monitor. Both are idempotent.
    """

    def __init__(
        self,
        slots: int,
        runner: Runner,
        reporter: Reporter,
        intensity: RestartIntensity,
        on_escalate: Callable[[RestartIntensityExceeded], None],
        clock: Callable[[], float] = time.monotonic,
        task_timeout_s: float | None = None,
    ) -> None:
        self.slots = slots
        self._task_timeout_s = task_timeout_s
        self._runner = runner
        self._reporter = reporter
        self._intensity = intensity
        self._on_escalate = on_escalate
        self._clock = clock
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._retired = (0, 0.0)
        """Jobs finished and seconds busy of the workers no longer in the pool."""
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self._stopping = threading.Event()
        """Workers: take no new job. Also stops restarts."""
        self._exited = threading.Event()
        """Monitor: a worker thread exited (or the monitor should look at ``_closed``)."""
        self._closed = threading.Event()
        """Monitor: stop."""
        self._monitor: threading.Thread | None = None
        self.restarts = 0
        """Worker threads restarted so far (reported in heartbeats)."""
        self.escalation: RestartIntensityExceeded | None = None
        """Set once the restart intensity was exceeded."""
        self.abandoned = 0
        """Poisoned threads left behind with a handler past its timeout."""

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, *, monitor: bool = True) -> None:
        """Start the worker threads and (unless ``monitor`` is False) the monitor thread."""
        self.check_workers()
        if monitor and self._monitor is None:
            self._monitor = threading.Thread(
                target=self._monitor_loop, name="dtq-supervisor", daemon=True
            )
            self._monitor.start()

    def stop_taking_work(self) -> list[Job]:
        """Let workers exit after their current job; return the jobs nobody took."""
        self._stopping.set()
        return self.take_back()

    def close(self) -> None:
        """Stop taking work and stop the monitor. Threads still running a handler are
        daemons and are abandoned."""
        self._stopping.set()
        self._closed.set()
        self._exited.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=1.0)

    # --- work ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job for the next free worker. Thread-safe."""
        self._jobs.put(job)

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker (approximate while workers take them)."""
        return self._jobs.qsize()

    @property
    def idle(self) -> int:
        """Worker threads free to take a waiting job now."""
        with self._lock:
            workers = list(self._workers)
        return sum(1 for w in workers if w.current is None and not (w.exited or w.poisoned))

    def take_back(self, count: int | None = None) -> list[Job]:
        """Up to ``count`` (default: all) waiting jobs, oldest first, that no worker will
        now run. Thread-safe: each job leaves the queue once, to a worker or to the caller.
        """
        taken: list[Job] = []
        while count is None or len(taken) < count:
            try:
                taken.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return taken

    def work_done(self) -> WorkDone:
        """Jobs run so far, the time they took, and the jobs running now (for ``--prefetch
        auto``). Read without stopping the workers: each total may be one job behind."""
        now = self._clock()
        with self._lock:
            workers = list(self._workers)
            finished, busy_s = self._retired
        running: list[float] = []
        for worker in workers:
            finished += worker.finished
            busy_s += worker.busy_s
            if worker.current is not None:
                running.append(now - worker.started_at)
        return WorkDone(finished, busy_s, tuple(running))

    @property
    def alive(self) -> int:
        """Worker threads currently alive."""
        with self._lock:
            return sum(1 for w in self._workers if w.thread is not None and w.thread.is_alive())

    def _work(self, worker: _Worker) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    job = self._jobs.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                worker.started_at = self._clock()
                worker.current = job
                limit = job.assignment.execution_timeout_s or self._task_timeout_s
                if limit:  # the handler sees its deadline (the monitor enforces it)
                    job.context.deadline_cell.at = time.monotonic() + limit
                self._runner.run(job)
                worker.busy_s += self._clock() - worker.started_at
                worker.finished += 1
                worker.current = None
                if worker.poisoned:
                    return  # its slot already has a fresh thread
        except BaseException as exc:  # the thread dies; this records why, for the supervisor
            worker.death = exc
        finally:
            coroutines.close_thread_loop()
            worker.exited = True
            self._exited.set()

    # --- supervision --------------------------------------------------------------------

    def check_workers(self) -> int:
        """One supervision step: reap dead workers, then start the shortfall.

        The job a dead worker held is released (see the module). Returns how
        many threads were started to replace dead ones.
        """
        with self._lock:
            restarted = 0
            for worker in [w for w in self._workers if w.exited]:
                self._retire(worker)
                if self._reap(worker):
                    restarted += 1
            while len(self._workers) < self.slots and not self._stopping.is_set():
                self._spawn()
            return restarted

    def _retire(self, worker: _Worker) -> None:
        """Take a worker out of the pool (lock held), keeping its counts in the totals."""
        self._workers.remove(worker)
        finished, busy_s = self._retired
        self._retired = (finished + worker.finished, busy_s + worker.busy_s)

    def _reap(self, worker: _Worker) -> bool:
        """Account for one dead worker; True if it is to be replaced."""
        job, death = worker.current, worker.death
        if job is not None:
            reason = (
                ReleaseReason.LIFESPAN_FAILED
                if isinstance(death, LifespanFailed)
                else ReleaseReason.WORKER_DIED
            )
            self._reporter.finished(job, Released(reason))
        if death is None:
            return False  # it left its loop because it was told to stop
        name = worker.thread.name if worker.thread else "?"
        task = {"task_id": job.lease.task_id, "attempt": job.lease.attempt} if job else {}
        if self._stopping.is_set():
            log.error("worker.died", thread=name, **task, exc_info=death)
            return False
        if self._intensity.record(self._clock()):
            log.error("worker.died", thread=name, **task, exc_info=death)
            self._escalate()
            return False
        self.restarts += 1
        log.error("worker.restarted", thread=name, restarts=self.restarts, **task, exc_info=death)
        return True

    def _escalate(self) -> None:
        error = RestartIntensityExceeded(self._intensity.max_restarts, self._intensity.period_s)
        self.escalation = error
        self._stopping.set()
        log.critical(
            "restart intensity exceeded",
            max_restarts=error.restarts,
            period_s=error.period_s,
        )
        self._on_escalate(error)

    def _spawn(self) -> None:
        worker = _Worker()
        worker.thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"dtq-worker-{next(self._names)}",
            # Daemon: a handler still running after the shutdown grace is abandoned.
            daemon=True,
        )
        self._workers.append(worker)
        worker.thread.start()

    def check_timeouts(self) -> int:
        """Time out handlers past their timeout: report, cancel, replace their threads.

        Returns how many were timed out (see the module docstring).
        """
        now = self._clock()
        timed_out = 0
        with self._lock:
            for worker in list(self._workers):
                job = worker.current
                if job is None or worker.poisoned:
                    continue
                limit = job.assignment.execution_timeout_s or self._task_timeout_s
                if limit is None or now - worker.started_at < limit:
                    continue
                worker.poisoned = True
                self._retire(worker)
                job.context.cancel_event.set()
                self._reporter.finished(
                    job,
                    Failed(
                        Failure(
                            ErrorType.TIMED_OUT.value,
                            f"the handler ran past its {limit} s timeout",
                            retryable=True,
                        )
                    ),
                )
                self.abandoned += 1
                timed_out += 1
                log.warning(
                    "task.timed_out",
                    task_id=job.lease.task_id,
                    attempt=job.lease.attempt,
                    timeout_s=limit,
                    thread=worker.thread.name if worker.thread else "?",
                    abandoned_threads=self.abandoned,
                )
                if not self._stopping.is_set():
                    self._spawn()
        return timed_out

    def _monitor_loop(self) -> None:
        while not self._closed.is_set():
            self._exited.wait(WATCH_S)  # a task may carry its own execution timeout
            self._exited.clear()
            if not self._closed.is_set():
                self.check_workers()
                self.check_timeouts()
