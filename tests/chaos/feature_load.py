"""L3's workload: every scheduling feature at once, submitted while faults strike.

The invariants I1-I7 say no acknowledged task is lost and none runs more than
its leases allow; they do not look at *when* a task ran. A coordinator that
forgot a queue's pause, a queue's concurrency limit or a dependency across
kill -9 would pass them. :class:`FeatureLoad` submits a seeded mix of
features (:data:`UNITS`) from its own thread, each submit under an
idempotency key in the ledger with ambiguous errors retried, and keeps a
:class:`Plan` of what it did, which :mod:`tests.chaos.feature_checks` reads
the evidence against.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dtq_client import Client, DependencyFailure, RetryPolicy, TaskState
from tests.chaos.ledger import AMBIGUOUS, Ledger, submit_answered

T = TypeVar("T")

LIMITED, LIMIT = "limited", 2
"""The queue with a concurrency limit, and the limit."""
GATED = "gated"
"""The queue the load pauses and resumes."""
UNSERVED = "unserved"
"""A queue no node takes tasks from."""
RATE_KEY, RATE, BURST = "tenant", 4.0, 2
"""The rate-limited key: tasks/s and bucket size."""
RETRY_BACKOFF_S = 0.2
"""The failing dependency's backoff: its second attempt comes at least this long after the
first failed (DTQ's jitter only ever adds)."""
FAIL_ATTEMPTS = 2
"""Attempts of the failing dependency of a doomed unit: each one runs (by design, not a
duplicate)."""
UNITS = (
    "plain", "delayed", "chain", "doomed", "cancelled", "limited", "rated", "gated",
    "retried", "timed_out", "unstarted",
)  # fmt: skip
WEIGHTS = (3, 2, 2, 1, 1, 2, 1, 2, 1, 1, 1)


@dataclass
class Plan:
    """What the load did that the checks judge (task ids as the coordinator returned them)."""

    succeed: set[str] = field(default_factory=set)
    """Tasks that must end SUCCEEDED."""
    chains: list[tuple[str, str]] = field(default_factory=list)
    """(dependency, dependant), both meant to succeed."""
    doomed: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Dependant -> (its failing dependency, whether it asked to be cancelled)."""
    cancelled: set[str] = field(default_factory=set)
    """Tasks whose cancel was acknowledged while they waited for their run_at."""
    queue_of: dict[str, str] = field(default_factory=dict)
    rated: set[str] = field(default_factory=set)
    pauses: list[tuple[float, float]] = field(default_factory=list)
    """(acknowledged, resume sent) of every pause of the gated queue, monotonic."""
    spacing: dict[str, float] = field(default_factory=dict)
    """Task -> the least time between its first two attempts (a backoff, a RetryAfter)."""
    timed_out: set[str] = field(default_factory=set)
    """Tasks whose every attempt outlives its execution timeout."""
    unstarted: dict[str, float] = field(default_factory=dict)
    """Task -> its schedule-to-start timeout, in a queue no node serves."""

    @property
    def retries(self) -> int:
        """Executions beyond the first that the plan asked for: each task in ``spacing`` runs
        twice (a failing dependency has FAIL_ATTEMPTS of 2; RetryAfter succeeds on attempt 2)."""
        return len(self.spacing)


class FeatureLoad:
    """Submits a seeded mix of :data:`UNITS` at ``rate`` units/s until stopped."""

    def __init__(self, address: str, ledger: Ledger, seed: int, rate: float) -> None:
        self.address = address
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.prefix = f"l3-{seed}"
        self.rate = rate
        self.plan = Plan()
        self.units = 0
        self._paused_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-load", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> FeatureLoad:
        self._thread.start()
        return self

    def stop(self, timeout_s: float) -> Plan:
        """Stop submitting, resume the gated queue if paused; raise if the thread failed."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError("the feature load did not stop")
        if self.error is not None:
            raise AssertionError(f"the feature load failed: {self.error!r}") from self.error
        return self.plan

    def _run(self) -> None:
        retry = RetryPolicy(attempts=1)  # ambiguous errors are retried here, per key
        try:
            with Client(self.address, timeout_s=5.0, retry=retry) as client:
                started = time.monotonic()
                while not self._stop.is_set():
                    unit = self.rng.choices(UNITS, WEIGHTS)[0]
                    getattr(self, f"_{unit}")(client, f"{self.prefix}-{self.units}")
                    self.units += 1
                    pause = started + self.units / self.rate - time.monotonic()
                    self._stop.wait(max(0.0, pause))  # the pace is the workload
                if self._paused_at is not None:
                    self._toggle_gate(client)
        except BaseException as exc:
            self.error = exc

    def _submit(self, client: Client, key: str, type_: str, payload: Any, **options: Any) -> str:
        entry = submit_answered(client, self.ledger, key, type_, payload, 120.0, **options)
        if not entry.ok or entry.task_id is None:
            raise AssertionError(f"submit {key} ended {entry.error}")
        return entry.task_id

    def _witness(self, client: Client, key: str, queue: str | None = None, **options: Any) -> str:
        payload = {"sleep": self.rng.choice((0.0, 0.05, 0.1, 0.2))}
        task_id = self._submit(client, key, "witness", payload, queue=queue, **options)
        self.plan.queue_of[task_id] = queue or "default"
        return task_id

    def _plain(self, client: Client, key: str) -> None:
        self.plan.succeed.add(self._witness(client, key))

    def _delayed(self, client: Client, key: str) -> None:
        self.plan.succeed.add(self._witness(client, key, delay_s=self.rng.uniform(0.2, 3.0)))

    def _chain(self, client: Client, key: str) -> None:
        first = self._submit(client, f"{key}-a", "witness", {"sleep": self.rng.uniform(0.1, 1.0)})
        then = self._witness(client, f"{key}-b", depends_on=[first])
        self.plan.succeed |= {first, then}
        self.plan.chains.append((first, then))

    def _doomed(self, client: Client, key: str) -> None:
        failing = self._submit(
            client,
            f"{key}-f",
            "fail",
            None,
            max_attempts=FAIL_ATTEMPTS,
            retry_backoff_s=RETRY_BACKOFF_S,
        )
        cancel = self.rng.random() < 0.5
        dependant = self._submit(
            client, f"{key}-d", "witness", None, depends_on=[failing],
            on_dependency_failure=DependencyFailure.CANCEL if cancel else None,
        )  # fmt: skip
        self.plan.doomed[dependant] = (failing, cancel)
        self.plan.spacing[failing] = RETRY_BACKOFF_S

    def _cancelled(self, client: Client, key: str) -> None:
        task_id = self._witness(client, key, delay_s=120.0)
        task = _answered(lambda: client.cancel(task_id))
        if task.state is not TaskState.CANCELLED:
            raise AssertionError(f"cancelling queued {task_id} left it {task.state.name}")
        self.plan.cancelled.add(task_id)

    def _limited(self, client: Client, key: str) -> None:
        task_id = self._submit(client, key, "span", {"sleep": 0.3}, queue=LIMITED)
        self.plan.queue_of[task_id] = LIMITED
        self.plan.succeed.add(task_id)

    def _rated(self, client: Client, key: str) -> None:
        # A burst, so the bucket runs dry (one task now and then never would).
        for n in range(self.rng.randint(2 * BURST, 4 * BURST)):
            task_id = self._witness(client, f"{key}-{n}", rate_key=RATE_KEY)
            self.plan.rated.add(task_id)
            self.plan.succeed.add(task_id)

    def _gated(self, client: Client, key: str) -> None:
        self.plan.succeed.add(self._witness(client, key, queue=GATED))
        if self.rng.random() < 0.25:
            self._toggle_gate(client)

    def _retried(self, client: Client, key: str) -> None:
        after = self.rng.uniform(0.1, 1.0)
        task_id = self._submit(client, key, "retry_after", {"after": after}, max_attempts=3)
        self.plan.spacing[task_id] = after
        self.plan.succeed.add(task_id)

    def _timed_out(self, client: Client, key: str) -> None:
        task_id = self._submit(
            client, key, "async_sleep", {"sleep": 30}, execution_timeout_s=0.3,
            max_attempts=2, retry_backoff_s=0.1,
        )  # fmt: skip
        self.plan.timed_out.add(task_id)

    def _unstarted(self, client: Client, key: str) -> None:
        timeout_s = self.rng.uniform(0.5, 3.0)
        task_id = self._witness(client, key, UNSERVED, schedule_to_start_timeout_s=timeout_s)
        self.plan.unstarted[task_id] = timeout_s

    def _toggle_gate(self, client: Client) -> None:
        if self._paused_at is None:
            _answered(lambda: client.pause_queue(GATED))
            self._paused_at = time.monotonic()
        else:
            resuming = time.monotonic()
            _answered(lambda: client.resume_queue(GATED))
            self.plan.pauses.append((self._paused_at, resuming))
            self._paused_at = None


def _answered(call: Callable[[], T], give_up_s: float = 120.0) -> T:
    """``call()`` retried through ambiguous errors (a coordinator restarting)."""
    give_up = time.monotonic() + give_up_s
    while True:
        try:
            return call()
        except AMBIGUOUS:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.1)


def configure(client: Client) -> None:
    """The limits the load relies on (durable: they must survive every restart)."""
    client.set_queue_limit(LIMITED, LIMIT)
    client.set_rate_limit(RATE_KEY, RATE, burst=BURST)
