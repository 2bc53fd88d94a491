"""L3's workload: every scheduling feature at once, and what each one promises under faults.

The invariants I1-I7 say no acknowledged task is lost and none runs more than
its leases allow; they do not look at *when* a task ran. A coordinator that
forgot a queue's pause, a queue's concurrency limit or a dependency across
kill -9 would pass them. :class:`FeatureLoad` submits a seeded mix of
features from its own thread (each submit under an idempotency key in the
ledger, ambiguous errors retried), keeps a :class:`Plan` of what it did, and
:func:`check` reads the evidence against it:

- a delayed task never starts before its ``run_at``;
- a dependant never starts before its dependency finished, and one whose
  dependency failed never runs and ends as its ``on_dependency_failure`` says;
- a task cancelled while queued never runs and ends CANCELLED;
- a failed attempt is retried no sooner than its backoff, or than the
  handler's ``RetryAfter`` asked;
- an attempt past its ``execution_timeout`` fails TIMED_OUT, and a task no
  node can start fails SCHEDULE_TO_START_TIMEOUT, not before its deadline,
  and never runs;
- no more handlers of the limited queue run at once than its ``max_running``
  (witness start and end lines; a killed node's run ends at the kill);
- the tasks of the rate-limited key are leased no faster than its token bucket
  allows within one coordinator incarnation (a restart starts a full bucket);
- nothing of the gated queue is leased while it is paused;
- everything else succeeds.
"""

from __future__ import annotations

import bisect
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dtq_client import Client, DependencyFailure, RetryPolicy, Task, TaskState
from tests.chaos.cluster import ChaosCluster, Fault
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
CLOCK_SLACK_S = 0.01
"""Rounding between the coordinator's wall time (stored) and a node's (the witness)."""
PAUSE_SETTLE_S = 0.5
"""A dispatch round planned before a pause may still commit just after it is acknowledged."""
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


# --- the checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One handler execution from the witness: start and end on the shared monotonic clock."""

    task_id: str
    attempt: int
    node_id: str
    pid: int
    start: float
    start_wall: float
    end: float | None


def read_runs(witness: Path) -> list[Run]:
    """Executions from the witness; ``end`` is None without an end line (no span, or killed)."""
    starts: dict[tuple[str, int, int], dict[str, Any]] = {}
    ends: dict[tuple[str, int, int], float] = {}
    for line in witness.read_text().splitlines() if witness.exists() else []:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill
        key = (raw["task_id"], raw["attempt"], raw["pid"])
        if raw["event"] == "end":
            ends[key] = raw["ts"]
        else:
            starts[key] = raw
    return [
        Run(k[0], k[1], raw["node_id"], k[2], raw["ts"], raw["wall"], ends.get(k))
        for k, raw in starts.items()
    ]


def check(plan: Plan, cluster: ChaosCluster, events: list[dict[str, Any]]) -> list[str]:
    """Every feature's promise against the evidence; returns the violations."""
    with cluster.client(timeout_s=30) as client:
        tasks = {t.id: t for t in client.iter_tasks()}
    runs = read_runs(cluster.witness)
    first_start: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: r.start_wall):
        first_start.setdefault(run.task_id, run.start_wall)
    problems: list[str] = []
    problems += _states(plan, tasks)
    problems += _never_early(plan, tasks, first_start)
    problems += _never_ran(plan, first_start)
    problems += _spaced(plan, runs)
    problems += _concurrency(plan, runs, cluster.faults)
    grants = [e for e in events if e.get("event") == "lease.granted"]
    problems += _rate(plan, grants, [f.at for f in cluster.faults if f.kind.startswith("coord")])
    problems += _paused(plan, grants)
    return problems


def _states(plan: Plan, tasks: dict[str, Task]) -> list[str]:
    problems = []
    for task_id in plan.succeed:
        state = tasks[task_id].state
        if state is not TaskState.SUCCEEDED:
            problems.append(f"{task_id} ({plan.queue_of.get(task_id)}) ended {state.name}")
    for task_id in plan.cancelled:
        if tasks[task_id].state is not TaskState.CANCELLED:
            problems.append(f"cancelled {task_id} ended {tasks[task_id].state.name}")
    for task_id in plan.timed_out:
        problems += _failed(tasks[task_id], "TIMED_OUT")
    for task_id, timeout_s in plan.unstarted.items():
        task = tasks[task_id]
        problems += _failed(task, "SCHEDULE_TO_START_TIMEOUT")
        assert task.created_at is not None
        waited = (task.finished_at or task.created_at) - task.created_at
        if waited.total_seconds() < timeout_s - CLOCK_SLACK_S:
            problems.append(f"{task_id} failed {waited.total_seconds():.3f} s < {timeout_s:.3f} s")
    for dependant, (failing, cancel) in plan.doomed.items():
        if tasks[failing].state is not TaskState.FAILED:
            problems.append(f"failing {failing} ended {tasks[failing].state.name}")
        task = tasks[dependant]
        wanted = TaskState.CANCELLED if cancel else TaskState.FAILED
        error = task.last_error.type if task.last_error else None
        if task.state is not wanted or (not cancel and error != "DEPENDENCY_FAILED"):
            problems.append(f"dependant {dependant} of a failure ended {task.state.name} {error}")
    return problems


def _failed(task: Task, error_type: str) -> list[str]:
    error = task.last_error.type if task.last_error else None
    if task.state is TaskState.FAILED and error == error_type:
        return []
    return [f"{task.id} ended {task.state.name} {error}, not FAILED {error_type}"]


def _never_early(plan: Plan, tasks: dict[str, Task], first_start: dict[str, float]) -> list[str]:
    problems = []
    for task_id, started in first_start.items():
        run_at = tasks[task_id].scheduled_at if task_id in tasks else None
        if run_at is not None and started < run_at.timestamp() - CLOCK_SLACK_S:
            problems.append(f"{task_id} started {run_at.timestamp() - started:.3f} s early")
    for first, then in plan.chains:
        finished = tasks[first].finished_at
        dependant_started = first_start.get(then)
        if finished is None or dependant_started is None:
            continue  # _states reports a chain that did not succeed
        if dependant_started < finished.timestamp() - CLOCK_SLACK_S:
            problems.append(f"{then} started before its dependency {first} finished")
    return problems


def _never_ran(plan: Plan, first_start: dict[str, float]) -> list[str]:
    ran = set(first_start)
    return (
        [f"{t} ran although cancelled while queued" for t in plan.cancelled & ran]
        + [f"{t} ran although its dependency failed" for t in set(plan.doomed) & ran]
        + [f"{t} ran in a queue no node serves" for t in set(plan.unstarted) & ran]
    )


def _spaced(plan: Plan, runs: list[Run]) -> list[str]:
    """Attempt 2 started at least the planned spacing after attempt 1 (when a lease lost
    to a fault came between them, attempt 2 is no retry of a failure: not judged)."""
    starts: dict[str, dict[int, float]] = {}
    for run in runs:
        if run.task_id in plan.spacing:
            starts.setdefault(run.task_id, {})[run.attempt] = run.start
    problems = []
    for task_id, by_attempt in starts.items():
        if 1 in by_attempt and 2 in by_attempt:
            gap = by_attempt[2] - by_attempt[1]
            if gap < plan.spacing[task_id] - CLOCK_SLACK_S:
                problems.append(
                    f"{task_id} retried after {gap:.3f} s < {plan.spacing[task_id]:.3f}"
                )
    return problems


def _concurrency(plan: Plan, runs: list[Run], faults: list[Fault]) -> list[str]:
    """At no handler start do more than LIMIT runs of the limited queue overlap."""
    kills = {(f.nodes and next(iter(f.nodes)), f.at) for f in faults if f.kind == "node.kill9"}
    spans = []
    for run in runs:
        if plan.queue_of.get(run.task_id) != LIMITED:
            continue
        end = run.end
        if end is None:  # killed mid-run: it ran until its node died
            end = min((at for node, at in kills if node == run.node_id and at > run.start),
                      default=float("inf"))  # fmt: skip
        spans.append((run.start, end, run.task_id))
    worst = max((sum(1 for s, e, _ in spans if s <= at < e) for at, _, _ in spans), default=0)
    return [f"{worst} runs of {LIMITED} overlapped (max_running {LIMIT})"] if worst > LIMIT else []


def _rate(plan: Plan, grants: list[dict[str, Any]], restarts: list[float]) -> list[str]:
    """Within one incarnation, n grants of the key span at least (n - BURST - 1) / RATE s.

    One grant of slack: a grant is logged after its commit, so two can be
    logged closer together than the bucket let them go.
    """
    by_life: dict[int, list[float]] = {}
    for event in grants:
        if event["task_id"] in plan.rated:
            life = bisect.bisect(restarts, event["mono"])
            by_life.setdefault(life, []).append(event["mono"])
    problems = []
    for times in by_life.values():
        times.sort()
        for i, j in _pairs(len(times)):
            allowed = BURST + 1 + RATE * (times[j] - times[i])
            if j - i + 1 > allowed:
                problems.append(
                    f"{j - i + 1} grants of rate key {RATE_KEY} in {times[j] - times[i]:.3f} s"
                )
                break
    return problems


def _pairs(n: int) -> Iterable[tuple[int, int]]:
    return ((i, j) for i in range(n) for j in range(i + 1, n))


def _paused(plan: Plan, grants: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in grants:
        if plan.queue_of.get(event["task_id"]) != GATED:
            continue
        for paused, resumed in plan.pauses:
            if paused + PAUSE_SETTLE_S <= event["mono"] < resumed:
                problems.append(f"{event['task_id']} of paused {GATED} was leased")
    return problems
