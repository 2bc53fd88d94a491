"""What each feature of L3's workload promises, checked against a run's evidence.

:func:`check` reads the store (through a client), the witness and the
coordinators' lease events against the :class:`~tests.chaos.feature_load.Plan`:

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtq_client import Task, TaskState
from tests.chaos import evidence
from tests.chaos.cluster import ChaosCluster, Fault
from tests.chaos.feature_load import BURST, GATED, LIMIT, LIMITED, RATE, RATE_KEY, Plan

CLOCK_SLACK_S = 0.01
"""Rounding between the coordinator's wall time (stored) and a node's (the witness)."""
PAUSE_SETTLE_S = 0.5
"""A dispatch round planned before a pause may still commit just after it is acknowledged."""


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
    for raw in evidence.witness_lines(witness):
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
