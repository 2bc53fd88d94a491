"""Process isolation (``--isolation process``): handlers run in child processes.

A Python thread cannot be killed, and a segfault in any thread kills the whole
interpreter. In ``process`` mode every worker thread owns one child process
(``multiprocessing`` with the ``spawn`` context: the node runs gRPC threads,
and forking a threaded process is unsafe). The thread hands its child one
task at a time and waits for the outcome, watching three things:

- **the hard timeout** (``--task-timeout``): once the handler has run that
  long, the child is SIGKILLed and the attempt fails ``TIMED_OUT``
  (retryable);
- **the child's death** (a segfault, ``os._exit``, the OOM killer): the
  attempt fails ``WORKER_PROCESS_DIED`` (retryable), so a task that kills
  every process it touches is dead-lettered after ``max_attempts`` instead of
  crashing nodes;
- **cancellation**: a cancel from the coordinator (or a dropped lease) is
  forwarded, and the handler sees ``ctx.cancelled``.

Either failure costs one child, never the node or its other slots: the next
task on that slot starts a fresh child. The worker thread itself never
blocks on the handler, so the supervisor never has to replace it.

Children die with the node: they are daemonic (reaped at a clean exit) and
ask Linux for SIGKILL when the thread that started them ends
(``PR_SET_PDEATHSIG``), so even a node killed with SIGKILL leaves no orphaned
handler running. Being daemonic, a handler may not start processes of its own
through ``multiprocessing``.

Handlers must be importable by name (module-level functions): the registry is
pickled to each child, which imports the handlers' module itself.

Messages on the pipe (pickled tuples)::

    node -> child   ("run", Assignment, max_result_bytes, timeout_s | None)
                    ("cancel",)
    child -> node   ("started",)  ("progress", Progress)  ("outcome", Outcome)
                    ("lifespan_failed", message, traceback)   (then it exits)
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from dtq_worker.context import Deadline, TaskContext, read_only_headers
from dtq_worker.errors import ConfigError, LifespanFailed
from dtq_worker.lifespan import Lifespan
from dtq_worker.models import ErrorType, Failed, Failure, Outcome, Progress
from dtq_worker.registry import Registry
from dtq_worker.runner import Job, Reporter, Runner

log = structlog.get_logger(__name__)

POLL_S = 0.05
"""How often a waiting worker thread checks the deadline and the cancel event."""
CANCEL_GRACE_S = 2.0
"""How long a cancelled handler may keep running before its process is killed."""
STARTUP_ALLOWANCE_S = 30.0
"""How long a fresh child may take to import the handlers (and run the registry's
lifespan setup) before its task fails."""
TEARDOWN_ALLOWANCE_S = 10.0
"""How long the children of an exiting node get, in all, for the lifespan's teardown."""
_PR_SET_PDEATHSIG = 1


class _Child:
    """One child process and the node's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def describe_exit(self) -> str:
        """How the child ended, for the failure message."""
        self.process.join(1)
        code = self.process.exitcode
        if code is None:
            return "its pipe closed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class ProcessPool:
    """Runs jobs in child processes, one child per calling worker thread. Thread-safe."""

    def __init__(self, registry: Registry, task_timeout_s: float | None = None) -> None:
        try:
            self._registry_bytes = pickle.dumps(registry)
        except Exception as exc:  # lambdas, closures, bound methods...
            raise ConfigError(
                "process isolation needs handlers importable by name "
                f"(module-level functions): {exc}"
            ) from exc
        self.task_timeout_s = task_timeout_s
        self._mp = multiprocessing.get_context("spawn")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False

    # --- the worker thread's side -------------------------------------------------------

    def run(self, job: Job, max_result_bytes: int, reporter: Reporter) -> Outcome:
        """Run ``job`` in this thread's child and return its outcome (never raises for it)."""
        child = self._child()
        timeout_s = job.assignment.execution_timeout_s or self.task_timeout_s
        try:
            child.conn.send(("run", job.assignment, max_result_bytes, timeout_s))
        except OSError:
            return self._died(child)
        # The hard timeout counts from the handler's start; until then the child may be
        # importing the handlers' module.
        deadline = time.monotonic() + (timeout_s or 0) + STARTUP_ALLOWANCE_S
        cancel_sent = False
        while True:
            if child.conn.poll(POLL_S):
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    return self._died(child)
                kind = message[0]
                if kind == "outcome":
                    outcome: Outcome = message[1]
                    return outcome
                if kind == "lifespan_failed":
                    self._forget(child)
                    child.kill()
                    log.error("handler_process.lifespan_failed", traceback=message[2])
                    # Raised, not returned: the worker thread dies as in a crash, so the
                    # task goes back and the restart counts (see LifespanFailed).
                    raise LifespanFailed(message[1], message[2])
                if kind == "started":
                    reporter.started(job)
                    deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
                elif kind == "progress" and message[1] is not None:
                    progress: Progress = message[1]
                    job.context.report_progress(progress.percent, progress.message)
                continue
            if job.context.cancelled and not cancel_sent:
                cancel_sent = True
                with contextlib.suppress(OSError):
                    child.conn.send(("cancel",))
                # Enforced, not only cooperative: a handler that ignores the cancel
                # loses its process after a grace period.
                deadline = min(deadline, time.monotonic() + CANCEL_GRACE_S)
            if time.monotonic() >= deadline:
                if cancel_sent:
                    return self._killed_for_cancel(child, job)
                return self._timed_out(child, job, timeout_s)

    def _child(self) -> _Child:
        child: _Child | None = getattr(self._local, "child", None)
        if child is not None and child.process.is_alive():
            return child
        if child is not None:
            self._forget(child)
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=_child_main,
            args=(self._registry_bytes, child_conn),
            name=f"dtq-handler-{threading.current_thread().name}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        child = _Child(process, parent_conn)
        self._local.child = child
        with self._lock:
            self._children.add(child)
            closed = self._closed
        if closed:
            child.kill()
        log.debug("handler_process.started", pid=process.pid)
        return child

    def _forget(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)
        if getattr(self._local, "child", None) is child:
            self._local.child = None

    def _died(self, child: _Child) -> Outcome:
        how = child.describe_exit()
        self._forget(child)
        child.kill()
        log.warning("handler_process.died", pid=child.process.pid, how=how)
        return Failed(
            Failure(
                ErrorType.WORKER_PROCESS_DIED.value,
                f"the process running the handler died ({how})",
                retryable=True,
            )
        )

    def _timed_out(self, child: _Child, job: Job, timeout_s: float | None) -> Outcome:
        self._forget(child)
        child.kill()
        log.warning(
            "task.timed_out",
            task_id=job.lease.task_id,
            attempt=job.lease.attempt,
            timeout_s=timeout_s,
            pid=child.process.pid,
        )
        return Failed(
            Failure(
                ErrorType.TIMED_OUT.value,
                f"the handler ran past its {timeout_s} s timeout; its process was killed",
                retryable=True,
            )
        )

    def _killed_for_cancel(self, child: _Child, job: Job) -> Outcome:
        self._forget(child)
        child.kill()
        log.info("task.cancel_enforced", task_id=job.lease.task_id, pid=child.process.pid)
        return Failed(
            Failure(
                "CANCELLED",
                f"cancelled; the handler ignored it for {CANCEL_GRACE_S} s, so its process "
                "was killed",
                retryable=False,
            ),
            cancelled=True,
        )

    def close(self) -> None:
        """End every child (the node is exiting). Idempotent.

        Each child's pipe is closed first: an idle child runs the lifespan's
        teardown and exits (within ``TEARDOWN_ALLOWANCE_S`` in all); one still
        running a handler exits at once. Whatever is left is killed.
        """
        with self._lock:
            self._closed = True
            children, self._children = list(self._children), set()
        for child in children:
            child.conn.close()
        deadline = time.monotonic() + TEARDOWN_ALLOWANCE_S
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            child.kill()


# --- the child's side ---------------------------------------------------------------------


class _ChildReporter:
    """Forwards the start of a handler to the node; the outcome is sent by the main loop."""

    def __init__(self, send: Any) -> None:
        self._send = send

    def started(self, job: Job) -> None:
        self._send(("started",))

    def finished(self, job: Job, outcome: Outcome) -> None:
        """Sent by :func:`_child_main` once the cancel listener has stopped reading."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _listen_for_cancel(conn: Connection, context: TaskContext, done: threading.Event) -> None:
    while not done.is_set():
        try:
            if conn.poll(POLL_S) and conn.recv()[0] == "cancel":
                context.cancel_event.set()
        except (EOFError, OSError):
            os._exit(0)  # the node is gone


def _child_main(registry_bytes: bytes, conn: Connection) -> None:
    """The child: set up the registry's lifespan, serve tasks until the pipe closes, then
    tear the lifespan down (a child killed for a timeout or a cancel skips that)."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the node died before the request took effect
        os._exit(0)
    # Ctrl-C in a terminal signals the whole process group; the node decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry: Registry = pickle.loads(registry_bytes)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    factory = registry.lifespan_factory
    lifespan = Lifespan(factory) if factory is not None else None
    try:
        resources = lifespan.start() if lifespan is not None else None
    except LifespanFailed as exc:
        send(("lifespan_failed", str(exc), exc.traceback_text))
        return
    try:
        _serve(conn, Runner(registry, _ChildReporter(send), max_result_bytes=1), send, resources)
    finally:
        if lifespan is not None:
            lifespan.stop()


def _serve(
    conn: Connection, runner: Runner, send: Callable[[tuple[Any, ...]], None], resources: Any
) -> None:
    """Run one task per ``run`` message until the pipe closes."""

    def on_progress(context: TaskContext) -> None:
        send(("progress", context.take_progress()))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            continue  # a cancel that arrived after its task finished
        _, assignment, max_result_bytes, timeout_s = message
        lease = assignment.lease
        context = TaskContext(
            task_id=lease.task_id,
            attempt=lease.attempt,
            max_attempts=assignment.max_attempts,
            type=assignment.type,
            queue=assignment.queue,
            content_type=assignment.payload.content_type,
            headers=read_only_headers(assignment.headers),
            deadline_cell=Deadline(None if timeout_s is None else time.monotonic() + timeout_s),
            on_progress=on_progress,
            resources=resources,
        )
        done = threading.Event()
        listener = threading.Thread(
            target=_listen_for_cancel, args=(conn, context, done), daemon=True
        )
        listener.start()
        runner.max_result_bytes = max_result_bytes
        outcome = runner.run(Job(assignment, context))
        done.set()
        listener.join()
        send(("outcome", outcome))
