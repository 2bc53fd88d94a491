"""The invariants every chaos scenario ends with (RELIABILITY.md 2.0, I1-I7).

:func:`check` waits (bounded) for every acknowledged task to finish, then
reads the evidence - the store, the witness, the coordinator's event log, the
ledger and /proc - and returns the scenario's row with every violation found.
It never stops at the first one: a failing scenario should say all it broke.

- I1 no loss: every acknowledged task is terminal (SUCCEEDED, unless the
  scenario expects failures).
- I2 no phantoms: every stored task has a key from the ledger; an acknowledged
  key maps to the id the coordinator returned.
- I3 one accepted result: at most one terminal lease event per task (exactly
  one unless a coordinator died mid-log), of the task's last attempt; a witness
  task's stored result names that attempt.
- I4 duplicates bounded: a lease (task, attempt) runs at most once, a task runs
  at most as often as it was leased, and duplicates stay within the bound.
- I5 attempt caps: failures <= max_attempts, lease expiries <= the cap, and a
  task at the cap is dead-lettered with a reason.
- I6 liveness: the coordinator process is alive (the same one unless the test
  killed it), health is SERVING, fds and RSS are back near the baseline.
- I7 storage: ``PRAGMA integrity_check`` is ok. Over PostgreSQL (whose own
  crash recovery has no such check to call) it is RELIABILITY's other half: no
  task was leased to two live sessions at once, from the lease events of every
  coordinator (:func:`double_leases`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dtq_server.models import TaskState
from tests.chaos import evidence, leases
from tests.chaos.cluster import LEASE_EVENTS, ChaosCluster
from tests.chaos.ledger import Ledger
from tests.chaos.report import Row
from tests.chaos.resources import within

TERMINAL_EVENT_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
LOG_CATCH_UP_S = 5.0
"""How long a lease event may trail its commit in the log before I3 counts it missing."""


@dataclass(frozen=True)
class Expect:
    """What a scenario allows; the defaults are the strict case."""

    dup_bound: int = 0
    all_succeed: bool = True
    """I1 in its strong form: every acknowledged task SUCCEEDED."""
    max_lease_expiries: int = 5
    finish_within_s: float = 60.0
    """How long the acknowledged tasks get to become terminal."""
    rss_fraction: float = 0.10
    """I6: RSS and fds back within 10 % of the baseline (RELIABILITY.md 2.0)..."""
    fd_slack: int = 3
    """... plus a few fds (10 % of ~20 is 2: a client connection still closing is not a leak)..."""
    rss_slack_kib: int = 4 * 1024
    """... and 4 MiB the allocator may keep after a burst."""


def wait_terminal(cluster: ChaosCluster, ledger: Ledger, timeout_s: float) -> None:
    """Wait until every acknowledged task is terminal in the store (or the time is up)."""
    wanted = set(ledger.acknowledged().values())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = evidence.read_tasks(cluster.store)
        if all(t in rows and rows[t].state.is_terminal for t in wanted):
            return
        time.sleep(0.25)


def wait_logged(
    cluster: ChaosCluster, tasks: dict[str, evidence.TaskRow], timeout_s: float
) -> None:
    """Wait until every leased task the store has as terminal has its lease event in the
    log (or the time is up). The coordinator logs how a lease ended just after the
    commit, on its event loop, so a poll of the store can see the commit first."""
    wanted = {t.id for t in tasks.values() if t.state.is_terminal and t.attempt > 0}
    deadline = time.monotonic() + timeout_s
    while wanted and time.monotonic() < deadline:
        for event in cluster.events(LEASE_EVENTS):
            if event["event"] != "lease.granted" and event.get("state") in TERMINAL_EVENT_STATES:
                wanted.discard(event["task_id"])
        if wanted:
            time.sleep(0.05)


def check(cluster: ChaosCluster, ledger: Ledger, expect: Expect, row: Row) -> list[str]:
    """Fill ``row`` from the evidence; return the violations (empty: the scenario passed)."""
    wait_terminal(cluster, ledger, expect.finish_within_s)
    problems: list[str] = []
    tasks = evidence.read_tasks(cluster.store)
    acked = ledger.acknowledged()
    row.tasks = len(tasks)
    row.acknowledged = len(acked)

    # I1: no loss.
    lost = [t for t in acked.values() if t not in tasks or not tasks[t].state.is_terminal]
    row.lost = len(lost)
    if lost:
        problems.append(f"I1: {len(lost)} acknowledged tasks not terminal, e.g. {lost[:3]}")
    if expect.all_succeed:
        bad = Counter(
            tasks[t].state.name for t in acked.values() if t in tasks and t not in lost
            and tasks[t].state is not TaskState.SUCCEEDED
        )  # fmt: skip
        if bad:
            problems.append(f"I1: acknowledged tasks ended {dict(bad)}, not SUCCEEDED")

    # I2: no phantoms.
    keys = {e.key for e in ledger.entries}
    phantoms = [t.id for t in tasks.values() if t.idempotency_key not in keys]
    if phantoms:
        problems.append(f"I2: {len(phantoms)} stored tasks have no ledger key: {phantoms[:3]}")
    by_key = {t.idempotency_key: t.id for t in tasks.values()}
    mismatched = [k for k, task_id in acked.items() if by_key.get(k) != task_id]
    if mismatched:
        problems.append(f"I2: keys answered with another task id: {mismatched[:3]}")

    # I3: one accepted result, of the last attempt.
    if not cluster.coordinator_killed:
        wait_logged(cluster, tasks, LOG_CATCH_UP_S)
    ends = Counter[str]()
    for event in cluster.events(LEASE_EVENTS):
        if event["event"] != "lease.granted" and event.get("state") in TERMINAL_EVENT_STATES:
            ends[event["task_id"]] += 1
            task = tasks.get(event["task_id"])
            if task is not None and event["attempt"] != task.attempt:
                problems.append(
                    f"I3: task {task.id} ended by attempt {event['attempt']}, "
                    f"but its last lease is attempt {task.attempt}"
                )
    twice = [t for t, n in ends.items() if n > 1]
    if twice:
        problems.append(f"I3: tasks with more than one accepted outcome: {twice[:3]}")
    if not cluster.coordinator_killed:
        silent = [t.id for t in tasks.values() if t.state.is_terminal and ends[t.id] == 0]
        silent = [t for t in silent if tasks[t].attempt > 0]  # cancelled while queued: no lease
        if silent:
            problems.append(f"I3: terminal tasks without an accepted outcome: {silent[:3]}")
    for task in tasks.values():
        result = task.result_json() if task.state is TaskState.SUCCEEDED else None
        if isinstance(result, dict) and "attempt" in result and result["attempt"] != task.attempt:
            problems.append(
                f"I3: task {task.id} stored the result of attempt {result['attempt']}, "
                f"not of its last lease {task.attempt}"
            )

    # I4: duplicates bounded.
    executions = cluster.executions()
    per_lease = Counter((e.task_id, e.attempt) for e in executions)
    rerun = [k for k, n in per_lease.items() if n > 1]
    if rerun:
        problems.append(f"I4: leases executed more than once: {rerun[:3]}")
    per_task = Counter(e.task_id for e in executions)
    over = [t for t, n in per_task.items() if t in tasks and n > tasks[t].attempt]
    if over:
        problems.append(f"I4: tasks executed more often than leased: {over[:3]}")
    row.duplicates = evidence.duplicates(executions)
    row.bound = expect.dup_bound
    if row.duplicates > expect.dup_bound:
        problems.append(f"I4: {row.duplicates} duplicates > bound {expect.dup_bound}")

    # I5: attempt caps.
    for task in tasks.values():
        if task.failures > task.max_attempts:
            problems.append(f"I5: task {task.id} failed {task.failures} > {task.max_attempts}")
        if task.lease_expiries > expect.max_lease_expiries:
            problems.append(f"I5: task {task.id} lost {task.lease_expiries} leases")
        at_cap = task.lease_expiries == expect.max_lease_expiries
        if at_cap and (task.state is not TaskState.FAILED or not task.error_type):
            problems.append(f"I5: task {task.id} at the expiry cap is {task.state.name}")

    # I6: liveness.
    server = cluster.server
    if not server.alive():
        problems.append(f"I6: the coordinator (pid {server.pid}) is not running")
    else:
        with cluster.client(timeout_s=5) as client:
            health = client.health()
        if health != "SERVING":
            problems.append(f"I6: health is {health}")
        now = cluster.usage()
        base = cluster.baseline
        if base is not None:
            row.notes.append(f"coordinator: baseline {base}, end {now}")
            if not within(now, base, expect.rss_fraction, expect.fd_slack, expect.rss_slack_kib):
                problems.append(f"I6: coordinator usage {now} not back near baseline {base}")

    # I7: storage.
    if cluster.database_url is None:
        integrity = evidence.integrity_check(cluster.db)
        if integrity != "ok":
            problems.append(f"I7: integrity_check says {integrity[:200]}")
    else:
        problems += [f"I7: {p}" for p in double_leases(cluster.events(LEASE_EVENTS))]
    return problems


def double_leases(events: Iterable[dict[str, Any]]) -> list[str]:
    """Leases handed out twice, or while the task's previous lease was still open.

    A lease ``(task, attempt)`` may be granted once. The next lease of a task may
    be granted only after the previous one ended (a result, a release, or its
    session's end: ``lease.lost`` / ``lease.returned``); a lease still open
    then belongs to a live session, so the task would be leased to two at once.
    ``events`` are the lease events of every coordinator that led, in order
    (their ``mono`` stamps share the machine's clock). A lease whose grant line
    a killed coordinator never wrote is not seen, which only weakens the check.
    """
    events = list(events)
    grants = Counter((e["task_id"], e["attempt"]) for e in events if e["event"] == "lease.granted")
    problems = [f"lease {key} granted {n} times" for key, n in grants.items() if n > 1]
    per_task: defaultdict[str, list[leases.Span]] = defaultdict(list)
    for span in leases.spans(events).values():
        per_task[span.task_id].append(span)
    for task_spans in per_task.values():
        task_spans.sort(key=lambda s: s.attempt)
        for before, after in itertools.pairwise(task_spans):
            if after.granted < before.granted:
                problems.append(
                    f"task {after.task_id}: attempt {after.attempt} granted before "
                    f"attempt {before.attempt}"
                )
            elif before.ended > after.granted:
                still = "never ended" if before.ended == math.inf else "still open"
                problems.append(
                    f"task {after.task_id}: attempt {after.attempt} granted to "
                    f"{after.node_id} while attempt {before.attempt} on {before.node_id} "
                    f"was {still}"
                )
    return problems
