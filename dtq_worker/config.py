"""Worker node configuration: one frozen dataclass, built by the CLI from flags > env > defaults."""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Literal

from dtq import loops
from dtq.logs import LOG_LEVELS, LogFormat
from dtq.loops import EventLoop
from dtq.tls import ClientTls, check_token_transport, is_loopback
from dtq_worker.errors import ConfigError

MiB = 1024 * 1024
DEFAULT_COORDINATOR = "127.0.0.1:50051"
MAX_SLOTS = 10_000
"""The most slots a node may declare (``RegisterNode.slots``)."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")

Prefetch = int | Literal["auto"]
"""A fixed number of tasks held beyond the slots, or ``auto`` (sized to the tasks)."""

Isolation = Literal["thread", "process"]
"""Where handlers run: on the worker threads, or in a child process per worker thread."""


def default_node_id() -> str:
    """``<hostname>-<pid>``: unique per process on a host."""
    return f"{socket.gethostname()}-{os.getpid()}"


DEFAULT_PREFETCH_BUFFER_BYTES = 64 * MiB
"""1,024 buffered tasks of 64 KiB, or 64 of 1 MiB."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker node needs; passed down, never read from globals."""

    coordinator: str = DEFAULT_COORDINATOR
    """The coordinator's ``host:port``."""
    tls: ClientTls | None = None
    """Connect over TLS (presenting a certificate for mTLS); None: plaintext."""
    token: str | None = field(default=None, repr=False)
    """Bearer token of a worker role, for a coordinator that checks tokens."""
    allow_insecure_token: bool = False
    """Send the token in plaintext to a non-loopback coordinator (refused otherwise)."""
    threads: int = 4
    """Worker threads, which is also the number of slots the node declares."""
    prefetch: Prefetch = "auto"
    """Tasks the node may hold beyond its slots, buffered so a freed thread has its next
    task at hand (``RegisterNode.prefetch``). 0 holds no more than the node can run;
    ``auto`` holds what the threads finish in a round trip to the coordinator, so short
    tasks are buffered and long ones are not (see :mod:`dtq_worker.prefetch`)."""
    prefetch_buffer_bytes: int = DEFAULT_PREFETCH_BUFFER_BYTES
    """With ``auto``: about how many payload bytes buffered tasks may hold (measured at the
    mean size of recent payloads), so large payloads are buffered fewer at a time."""
    queues: tuple[str, ...] = ("default",)
    """Queues to take tasks from."""
    node_id: str = field(default_factory=default_node_id)
    """The node's id, stable for the process (1-200 characters)."""
    max_restarts: int = 3
    """Worker-thread restarts allowed within ``restart_period_s``; one more escalates."""
    restart_period_s: float = 5.0
    """Sliding window of the restart intensity."""
    shutdown_grace_s: float = 30.0
    """On SIGTERM or drain, how long running tasks may take to finish before release."""
    reconnect_backoff_max_s: float = 5.0
    """Longest pause between two reconnect attempts (exponential backoff, full jitter)."""
    rpc_timeout_s: float = 10.0
    """Bound on waits for the coordinator: the registration answer, final acks, the close."""
    progress_interval_s: float = 0.5
    """At most one progress update per task per this long (the latest value wins)."""
    max_result_bytes: int = 1 * MiB
    """Largest encoded result; the coordinator's smaller limit wins once registered."""
    isolation: Isolation = "thread"
    """``process`` runs each worker thread's handlers in a child process, so a hung handler
    can be killed and a segfault costs one child (see :mod:`dtq_worker.process_pool`)."""
    task_timeout_s: float | None = None
    """How long one handler may run; None means no limit. Past it the attempt fails
    ``TIMED_OUT`` (retryable): in ``process`` isolation the child is killed, in ``thread``
    isolation the thread is abandoned and replaced."""
    event_loop: EventLoop = "auto"
    """``auto`` (uvloop when installed), ``uvloop`` or ``asyncio`` (see :mod:`dtq.loops`)."""
    tracing: bool = False
    """Run each attempt inside an OpenTelemetry span, a child of the trace context in the
    task's headers (see :mod:`dtq_worker.tracing`; needs ``opentelemetry-api``)."""
    metrics_listen: str | None = None
    """Serve Prometheus metrics at ``HOST:PORT/metrics`` (see :mod:`dtq_worker.metrics`);
    plain HTTP, so on loopback unless ``metrics_insecure``. None: no metrics."""
    metrics_insecure: bool = False
    """Allow ``metrics_listen`` beyond loopback (a network you trust)."""
    log_level: str = "info"
    """One of ``dtq.logs.LOG_LEVELS``."""
    log_format: LogFormat = "console"
    """``console`` or ``json``."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.coordinator:
            problems.append("coordinator address must not be empty")
        if not 1 <= self.threads <= MAX_SLOTS:
            problems.append(f"threads must be 1-{MAX_SLOTS}, got {self.threads}")
        if self.prefetch != "auto" and not (
            isinstance(self.prefetch, int) and 0 <= self.prefetch <= MAX_SLOTS
        ):
            problems.append(f"prefetch must be 'auto' or 0-{MAX_SLOTS}, got {self.prefetch!r}")
        if self.prefetch_buffer_bytes < 0:
            problems.append("prefetch_buffer_bytes must not be negative")
        if not self.queues:
            problems.append("at least one queue is needed")
        problems += [
            f"queue {q!r} is not 1-100 characters of [A-Za-z0-9_.-]"
            for q in self.queues
            if not _QUEUE_NAME.fullmatch(q)
        ]
        if not 1 <= len(self.node_id) <= 200:
            problems.append("node id must be 1-200 characters")
        if self.max_restarts < 0:
            problems.append("max restarts must not be negative")
        for name in (
            "restart_period_s",
            "reconnect_backoff_max_s",
            "rpc_timeout_s",
            "progress_interval_s",
        ):
            if not 0 < getattr(self, name) < math.inf:  # NaN fails too
                problems.append(f"{name} must be positive")
        if not 0 <= self.shutdown_grace_s < math.inf:
            problems.append("shutdown_grace_s must not be negative")
        if self.isolation not in ("thread", "process"):
            problems.append("isolation must be 'thread' or 'process'")
        if self.task_timeout_s is not None and not 0 < self.task_timeout_s < math.inf:
            problems.append("task_timeout_s must be positive")
        if self.max_result_bytes < 1:
            problems.append("max_result_bytes must be positive")
        try:
            loops.resolve(self.event_loop)
        except ValueError as exc:
            problems.append(str(exc))
        if self.metrics_listen is not None:
            problems += _metrics_problems(self.metrics_listen, self.metrics_insecure)
        if self.log_level not in LOG_LEVELS:
            problems.append(f"log level must be one of {', '.join(LOG_LEVELS)}")
        try:
            check_token_transport(self.token, self.tls, self.coordinator, self.allow_insecure_token)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))


def _metrics_problems(listen: str, insecure: bool) -> list[str]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return [f"metrics address {listen!r} is not HOST:PORT"]
    if not insecure and not is_loopback(listen):
        return [
            f"refusing to serve metrics in plaintext on {listen}, which is not loopback: "
            "give --metrics-insecure on a network you trust"
        ]
    return []
