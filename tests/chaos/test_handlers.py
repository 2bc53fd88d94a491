"""H1-H7: handler and supervisor faults (RELIABILITY.md 2.2), on real coordinator and
node processes.

Handlers live in ``tests.chaos._b_handlers``. ``thread`` isolation runs them on the
node's worker threads; ``process`` isolation (``--isolation process``) in one child
process per worker thread, which is what contains segfaults and hard hangs.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest

from dtq_client import Client, TaskState
from tests.chaos._b_helpers import (
    NO_RETRY,
    BRow,
    Cluster,
    T,
    finish,
    health,
    make_cluster_fixture,  # noqa: F401  (a fixture)
    pid_exists,
    row_fixture,  # noqa: F401  (a fixture)
    terminal,
    wait_nodes,
)
from tests.chaos.conftest import Size
from tests.harness import wait_until

pytestmark = pytest.mark.chaos
MakeCluster = Callable[..., Cluster]
ISOLATIONS = ("thread", "process")
TIMEOUT_S = 1.0
"""The task timeout of the H3 scenarios (``execution_timeout = 1 s``)."""


def session_of(client: Client, node_id: str) -> str:
    (node,) = [n for n in client.nodes() if n.node_id == node_id]
    return node.session_id


def restarts_of(client: Client, node_id: str) -> int:
    (node,) = [n for n in client.nodes() if n.node_id == node_id]
    return node.supervisor_restarts


def restarts_reach(client: Client, node_id: str, count: int) -> bool:
    return restarts_of(client, node_id) >= count


# --- H1 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H1")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_h1_handler_raises_is_retried_then_dead_lettered(
    make_cluster: MakeCluster, row: BRow, isolation: str
) -> None:
    cluster = make_cluster()
    cluster.node("a", "--isolation", isolation, threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        backoff_s = 0.1
        raising = client.submit("raise_deep", {}, max_attempts=3, retry_backoff_s=backoff_s)
        hopeless = client.submit("nonretryable", {}, max_attempts=3, retry_backoff_s=backoff_s)
        done = terminal(client, raising.id)
        assert done.state is TaskState.FAILED
        assert (done.attempt, done.failures, done.lease_expiries) == (3, 3, 0)
        assert done.last_error is not None
        assert done.last_error.type == "ValueError"
        assert done.last_error.message.startswith("deep failure")
        assert "Traceback" in done.last_error.traceback or "truncated" in done.last_error.traceback
        assert len(done.last_error.traceback.encode()) <= 8192
        assert len(done.last_error.message.encode()) <= 4096
        once = terminal(client, hopeless.id)
        assert once.state is TaskState.FAILED
        assert (once.attempt, once.failures) == (1, 1)
        assert once.last_error is not None and once.last_error.type == "NonRetryableError"
        assert restarts_of(client, "a") == 0, "a handler failure is not a crash"
    times = [line["ts"] for line in cluster.lines() if line["task_id"] == raising.id]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Retry delays double from the base (jitter only adds).
    assert gaps[0] >= backoff_s and gaps[1] >= 2 * backoff_s, gaps
    finish(row, cluster, attempts=3, gaps_s=[round(g, 3) for g in gaps], restarts=0)


# --- H2 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H2 thread")
@pytest.mark.timeout(150)
def test_h2_segfault_in_thread_mode_crashes_node_until_lease_cap(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """The node dies with the handler; the test restarts it like a service manager would.

    The poison task is dead-lettered after exactly 3 lost leases and crashes nothing after.
    """
    cluster = make_cluster("--max-lease-expiries", "3")
    node = cluster.node("a")
    crashes: list[int | None] = []
    with cluster.client() as client:
        wait_nodes(client, "a")
        poison = client.submit("segfault", {"delay": 1.0}, max_attempts=5)
        ordinary = [client.submit("ok", {"sleep": 0.3, "i": i}).id for i in range(20)]
        deadline = time.monotonic() + 100
        while not client.get(poison.id).is_terminal:
            assert time.monotonic() < deadline, "the poison task never reached a terminal state"
            if not node.alive():
                crashes.append(node.popen.returncode)
                assert len(crashes) <= 3, "the node kept crashing past the lease-expiry cap"
                node = cluster.node("a")  # the service manager's restart
            time.sleep(0.05)
        done = client.get(poison.id)
        assert done.state is TaskState.FAILED
        assert done.last_error is not None and done.last_error.type == "LEASE_EXPIRED"
        assert done.lease_expiries == 3
        wait_until(lambda: all(client.get(i).is_terminal for i in ordinary), 60, what="ordinary")
        assert {client.get(i).state for i in ordinary} == {TaskState.SUCCEEDED}
        # No further crash once the poison task is dead: the node stays up and works.
        probe = client.submit("ok", {})
        assert terminal(client, probe.id, 20).state is TaskState.SUCCEEDED
        assert node.alive()
    assert len(crashes) == 3
    assert all(code == -signal.SIGSEGV for code in crashes), crashes
    finish(row, cluster, node_crashes=len(crashes), lease_expiries=3, ordinary_ok=20)


@pytest.mark.scenario_id("H2 process")
@pytest.mark.timeout(120)
def test_h2_segfault_in_process_mode_costs_one_child_per_attempt(
    make_cluster: MakeCluster, row: BRow
) -> None:
    cluster = make_cluster("--max-lease-expiries", "3")
    node = cluster.node("a", "--isolation", "process", threads=4)
    with cluster.client() as client:
        wait_nodes(client, "a")
        session = session_of(client, "a")
        poison = client.submit("segfault", {"delay": 0.5}, max_attempts=3, retry_backoff_s=0.1)
        ordinary = [client.submit("ok", {"sleep": 0.3, "i": i}).id for i in range(20)]
        done = terminal(client, poison.id)
        assert done.state is TaskState.FAILED
        assert done.last_error is not None
        assert done.last_error.type == "WORKER_PROCESS_DIED"
        assert "SIGSEGV" in done.last_error.message
        assert (done.failures, done.lease_expiries) == (3, 0)
        wait_until(lambda: all(client.get(i).is_terminal for i in ordinary), 60, what="ordinary")
        assert {client.get(i).state for i in ordinary} == {TaskState.SUCCEEDED}
        assert {client.get(i).attempt for i in ordinary} == {1}, "no ordinary task was lost"
        assert node.alive() and session_of(client, "a") == session
        assert restarts_of(client, "a") == 0
    pids = [line["pid"] for line in cluster.lines() if line["task_id"] == poison.id]
    assert len(pids) == 3 and len(set(pids)) == 3 and node.pid not in pids
    assert not any(pid_exists(pid) for pid in pids)
    finish(row, cluster, attempts=3, node_crashes=0, children_lost=3, ordinary_ok=20)


# --- H3 ---------------------------------------------------------------------------------


def timeout_latencies(
    client: Client, cluster: Cluster, task_ids: list[str], attempts: int
) -> dict[str, float]:
    """Per task, the worst over its attempts of the seconds from the handler's start (its
    witness line) until the coordinator had recorded that attempt's failure (polled)."""
    seen: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(task_ids) * attempts:
        assert time.monotonic() < deadline, f"failures seen so far: {sorted(seen)}"
        for task_id in task_ids:
            now = time.monotonic()
            for k in range(1, client.get(task_id).failures + 1):
                seen.setdefault((task_id, k), now)
        time.sleep(0.02)
    started = {(x["task_id"], x["attempt"]): float(x["ts"]) for x in cluster.lines()}
    worst: dict[str, float] = {}
    for (task_id, attempt), at in seen.items():
        worst[task_id] = max(worst.get(task_id, 0.0), at - started[(task_id, attempt)])
    return worst


@pytest.mark.scenario_id("H3ab process")
@pytest.mark.timeout(120)
def test_h3_hung_handlers_are_killed_at_the_timeout_in_process_mode(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """(a) sleep, (b) busy loop, (c) GIL-holding regex: each child is killed at 1 s."""
    cluster = make_cluster()
    node = cluster.node("a", "--isolation", "process", "--task-timeout", str(TIMEOUT_S), threads=4)
    with cluster.client() as client:
        wait_nodes(client, "a")
        session = session_of(client, "a")
        hung = {
            kind: client.submit(kind, payload, max_attempts=2, retry_backoff_s=0.1).id
            for kind, payload in (
                ("hang_sleep", {}),
                ("hang_busy", {}),
                ("hang_regex", {"n": 60}),  # would take longer than the universe's age
            )
        }
        latency = timeout_latencies(client, cluster, list(hung.values()), 2)
        worst = {kind: latency[task_id] for kind, task_id in hung.items()}
        beside = client.submit("ok", {})
        assert terminal(client, beside.id).state is TaskState.SUCCEEDED
        for task_id in hung.values():
            done = terminal(client, task_id)
            assert done.state is TaskState.FAILED
            assert done.last_error is not None and done.last_error.type == "TIMED_OUT"
            assert (done.failures, done.lease_expiries) == (2, 0), "no redelivery by T"
        assert node.alive() and session_of(client, "a") == session, "heartbeats kept flowing"
    assert all(s <= TIMEOUT_S + 1.0 for s in worst.values()), worst
    pids = [line["pid"] for line in cluster.lines() if line["task_id"] in hung.values()]
    assert node.pid not in pids and not any(pid_exists(pid) for pid in pids), "children killed"
    finish(
        row,
        cluster,
        timed_out_after_s={k: round(v, 2) for k, v in worst.items()},
        bound_s=TIMEOUT_S + 1.0,
    )


@pytest.mark.scenario_id("H3ab thread")
@pytest.mark.timeout(120)
def test_h3_hung_handlers_time_out_in_thread_mode_and_slots_are_replaced(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """(a) sleep and (b) busy loop: TIMED_OUT at 1 s; the stuck thread is abandoned."""
    cluster = make_cluster()
    node = cluster.node("a", "--task-timeout", str(TIMEOUT_S), threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        session = session_of(client, "a")
        hung = {
            kind: client.submit(kind, {}, max_attempts=2, retry_backoff_s=0.1).id
            for kind in ("hang_sleep", "hang_busy")
        }
        latency = timeout_latencies(client, cluster, list(hung.values()), 2)
        worst = {kind: latency[task_id] for kind, task_id in hung.items()}
        for task_id in hung.values():
            done = terminal(client, task_id)
            assert done.state is TaskState.FAILED
            assert done.last_error is not None and done.last_error.type == "TIMED_OUT"
            assert (done.failures, done.lease_expiries) == (2, 0), "no redelivery by T"
        # Four threads are stuck, yet both slots still run work: they were replaced.
        after = [client.submit("ok", {"i": i}).id for i in range(4)]
        assert all(terminal(client, i).state is TaskState.SUCCEEDED for i in after)
        assert node.alive() and session_of(client, "a") == session, "heartbeats kept flowing"
        assert restarts_of(client, "a") == 0, "a timeout is not a crash"
    assert all(s <= TIMEOUT_S + 1.0 for s in worst.values()), worst
    assert node.log().count("task.timed_out") == 4
    finish(
        row,
        cluster,
        timed_out_after_s={k: round(v, 2) for k, v in worst.items()},
        bound_s=TIMEOUT_S + 1.0,
        abandoned_threads=4,
    )


@pytest.mark.scenario_id("H3 task execution_timeout")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_h3_the_tasks_own_execution_timeout_applies(
    make_cluster: MakeCluster, row: BRow, isolation: str
) -> None:
    """No node-wide ``--task-timeout``: the task's ``execution_timeout`` alone stops it."""
    cluster = make_cluster()
    cluster.node("a", "--isolation", isolation, threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        hung = client.submit("hang_sleep", {}, max_attempts=1, execution_timeout_s=TIMEOUT_S)
        latency = timeout_latencies(client, cluster, [hung.id], 1)[hung.id]
        done = terminal(client, hung.id)
        assert done.state is TaskState.FAILED
        assert done.last_error is not None and done.last_error.type == "TIMED_OUT"
    assert latency <= TIMEOUT_S + 1.0
    finish(row, cluster, timed_out_after_s=round(latency, 2), bound_s=TIMEOUT_S + 1.0)


def regex_length_for(seconds: float) -> int:
    """The ``n`` for which ``re.match(r"(a+)+$", "a" * n + "b")`` takes about ``seconds``."""
    n = 16
    while True:
        started = time.perf_counter()
        re.match(r"(a+)+$", "a" * n + "b")
        took = time.perf_counter() - started
        if took >= 0.2:
            return n + max(0, round(math.log2(seconds / took)))  # each extra "a" doubles it
        n += 1


@pytest.mark.scenario_id("H3c thread")
@pytest.mark.timeout(150)
def test_h3_gil_holding_handler_in_thread_mode_is_survived(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    """(c) One ``re`` call holds the GIL, so the whole node stalls, heartbeats included.

    Acceptable path: the coordinator declares the node dead after T and takes the
    lease back (here: dead-lettered at the first expiry, so no other node stalls);
    when the GIL comes back the node's stale reports are rejected and it registers
    a new session. The test records which path happened; it must not hang.
    """
    hold_s = size.pick(5.0, 10.0)
    n = regex_length_for(hold_s)
    cluster = make_cluster("--max-lease-expiries", "1")
    node = cluster.node("a", "--task-timeout", str(TIMEOUT_S), threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        first_session = session_of(client, "a")
        task = client.submit("hang_regex", {"n": n}, max_attempts=1)
        done = terminal(client, task.id, timeout_s=hold_s * 4 + 30)
        if done.state is TaskState.SUCCEEDED:
            # The calibration fell short: the GIL came back before T, nothing expired,
            # and the result was accepted. Only acceptable if the stall really was short.
            result = done.result_value()
            assert isinstance(result, dict)
            held = result["held_s"]
            assert held < T, f"held the GIL {held} s yet the node kept its lease"
            path = "SUCCEEDED (short stall)"
        else:
            assert done.state is TaskState.FAILED and done.last_error is not None
            path = done.last_error.type
            # Either the node went silent long enough to lose the lease, or its watchdog
            # reported TIMED_OUT first when the GIL came back; both end the task.
            assert path in ("LEASE_EXPIRED", "TIMED_OUT"), path
        wait_nodes(client, "a", timeout_s=30)
        probe = client.submit("ok", {})
        assert terminal(client, probe.id, 30).state is TaskState.SUCCEEDED
        new_session = session_of(client, "a") != first_session
        assert node.alive()
    log = cluster.server.log()
    rejected = log.count("report.rejected") + log.count("node.resume_refused")
    if path == "LEASE_EXPIRED":
        assert "node.dead" in log and new_session, "the stalled node lost its session"
    finish(
        row,
        cluster,
        regex_n=n,
        path=path,
        node_declared_dead="node.dead" in log,
        new_session=new_session,
        stale_reports_rejected=rejected,
    )


# --- H4 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H4")
@pytest.mark.timeout(90)
def test_h4_worker_thread_crash_restarts_only_that_thread(
    make_cluster: MakeCluster, row: BRow
) -> None:
    cluster = make_cluster()
    node = cluster.node("a", threads=4)
    with cluster.client() as client:
        wait_nodes(client, "a")
        siblings = [client.submit("ok", {"sleep": 2.0, "i": i}).id for i in range(3)]
        wait_until(lambda: all(client.get(i).state is TaskState.RUNNING for i in siblings), 15)
        crash = client.submit("kill_thread", {"until_attempt": 1})
        done = terminal(client, crash.id)
        assert done.state is TaskState.SUCCEEDED
        assert (done.attempt, done.lease_expiries) == (2, 1), "released, re-leased, completed"
        for task_id in siblings:
            sibling = terminal(client, task_id)
            assert sibling.state is TaskState.SUCCEEDED
            assert sibling.attempt == 1, "siblings keep their attempt"
        wait_until(lambda: restarts_of(client, "a") == 1, 10, what="one restart reported")
        (info,) = client.nodes()
        assert info.slots == 4 and node.alive()
    log = node.log()
    assert log.count("worker.restarted") == 1
    assert "worker thread crash on purpose" in log, "the restart is logged with the exception"
    finish(row, cluster, restarts=1, sibling_attempts=[1, 1, 1], crashed_task_attempts=2)


# --- H5 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H5 burst")
@pytest.mark.timeout(120)
def test_h5_restart_intensity_exceeded_exits_non_zero(make_cluster: MakeCluster, row: BRow) -> None:
    """4 crashes within 2 s with max_restarts=3 per 5 s: the 4th escalates, exit 70."""
    cluster = make_cluster("--max-lease-expiries", "1")
    a = cluster.node(
        "a", "--queues", "default,crash", "--max-restarts", "3", "--restart-period", "5",
        threads=6,
    )  # fmt: skip
    with cluster.client() as client:
        wait_nodes(client, "a")
        payload = {"sleep": 6.0, "first_only": True}
        held = [client.submit("ok", {**payload, "i": i}).id for i in range(2)]
        wait_until(lambda: all(client.get(i).state is TaskState.RUNNING for i in held), 15)
        cluster.node("b", "--queues", "default", threads=2)
        wait_nodes(client, "b")
        for _ in range(4):
            client.submit("kill_thread", {"delay": 0.2}, queue="crash")
        assert a.wait(30) == 70
        exited_at = time.monotonic()

        def moved() -> bool:
            return all(
                (t := client.get(i)).node_id == "b" and t.attempt >= 2
                and t.state in (TaskState.LEASED, TaskState.RUNNING, TaskState.SUCCEEDED)
                for i in held
            )  # fmt: skip

        wait_until(moved, T + 5, interval_s=0.02, what="held tasks re-leased to b")
        redelivery_s = time.monotonic() - exited_at
    log = a.log()
    assert "restart intensity exceeded" in log
    assert log.count("worker.restarted") == 3
    assert redelivery_s <= T + 1.0
    finish(row, cluster, redelivery_s=redelivery_s, limit_s=T + 1.0, exit_code=70, restarts=3)


@pytest.mark.scenario_id("H5 spaced")
@pytest.mark.timeout(120)
def test_h5_crashes_spaced_out_never_escalate(make_cluster: MakeCluster, row: BRow) -> None:
    """4 crashes 2 s apart (8 s): the 5 s window never holds more than 3."""
    cluster = make_cluster("--max-lease-expiries", "1")
    a = cluster.node("a", "--max-restarts", "3", "--restart-period", "5", threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        crash_times: list[float] = []
        for k in range(1, 5):
            if crash_times:
                time.sleep(max(0.0, crash_times[-1] + 2.0 - time.monotonic()))
            client.submit("kill_thread", {})
            wait_until(partial(restarts_reach, client, "a", k), 10, what=f"crash {k}")
            crash_times.append(time.monotonic())
        assert a.alive()
        probe = client.submit("ok", {})
        assert terminal(client, probe.id).state is TaskState.SUCCEEDED
    assert "restart intensity exceeded" not in a.log()
    gaps = [round(b - x, 2) for x, b in itertools.pairwise(crash_times)]
    assert all(g >= 2.0 for g in gaps), gaps
    finish(row, cluster, restarts=4, gaps_s=gaps, escalated=False)


# --- H6 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H6")
@pytest.mark.timeout(90)
def test_h6_heartbeat_loop_death_ends_the_node_and_its_leases(
    make_cluster: MakeCluster, row: BRow
) -> None:
    """The heartbeat loop dies (one_for_all): the node must not keep its leases silently.

    This node exits non-zero (the alternative allowed is a new session); its leases
    are then requeued by the coordinator within T + 1 s and finish on node b.
    """
    cluster = make_cluster()
    # Only a serves the queue "heart": the task that breaks a heartbeat loop must reach a.
    a = cluster.node("a", "--queues", "default,heart", threads=3)
    with cluster.client() as client:
        wait_nodes(client, "a")
        payload = {"sleep": 8.0, "first_only": True}
        held = [client.submit("ok", {**payload, "i": i}).id for i in range(2)]
        wait_until(lambda: all(client.get(i).state is TaskState.RUNNING for i in held), 15)
        cluster.node("b", threads=2)
        wait_nodes(client, "b")
        broken_at = time.monotonic()
        client.submit("break_heart", {}, queue="heart")
        code = a.wait(20)
        exited_s = time.monotonic() - broken_at
        exited_at = time.monotonic()
        wait_until(
            lambda: all(client.get(i).node_id == "b" and client.get(i).attempt == 2 for i in held),
            T + 5,
            interval_s=0.02,
            what="held tasks re-leased to b",
        )
        redelivery_s = time.monotonic() - exited_at
        for task_id in held:
            done = terminal(client, task_id)
            assert done.state is TaskState.SUCCEEDED and done.attempt == 2
    assert code != 0
    assert "heartbeat loop killed on purpose" in a.log()
    backoff_max_s = 5.0
    assert exited_s <= backoff_max_s + 1.0
    assert redelivery_s <= T + 1.0
    finish(
        row,
        cluster,
        path="node exited",
        exit_code=code,
        exited_after_s=round(exited_s, 2),
        redelivery_s=redelivery_s,
        limit_s=T + 1.0,
    )


# --- H7 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("H7")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_h7_oversized_or_unencodable_result_fails_without_retry(
    make_cluster: MakeCluster, row: BRow, isolation: str
) -> None:
    cluster = make_cluster()
    cluster.node("a", "--isolation", isolation, threads=2)
    with cluster.client() as client:
        wait_nodes(client, "a")
        big = client.submit("big_result", {"bytes": 10 * 1024 * 1024}, max_attempts=3)
        odd = client.submit("unencodable", {}, max_attempts=3)
        for task_id, error_type in ((big.id, "RESULT_TOO_LARGE"), (odd.id, "RESULT_ENCODE_ERROR")):
            done = terminal(client, task_id)
            assert done.state is TaskState.FAILED
            assert done.last_error is not None and done.last_error.type == error_type
            assert done.attempt == 1, "non-retryable"
        with cluster.client(retry=NO_RETRY) as strict:
            assert strict.submit("ok", {}).id
    assert cluster.server.alive() and health(cluster.server.address) == "SERVING"
    runs = Counter(line["type"] for line in cluster.lines())
    assert (runs["big_result"], runs["unencodable"]) == (1, 1), "no retry"
    finish(row, cluster, too_large="RESULT_TOO_LARGE", unencodable="RESULT_ENCODE_ERROR")
