"""RELIABILITY.md 2.1: crashes and pauses of the coordinator and of worker nodes (F1-F7).

Real ``dtq-server`` and ``dtq-worker`` processes; faults are signals sent by
PID and the coordinator's failpoints. Every scenario ends with the checker
(I1-I7) and records its row for the table ``make chaos`` prints.
"""

from __future__ import annotations

import random
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtq_client import Client, NodeState, RetryPolicy, TaskSpec
from dtq_client.errors import Unavailable
from dtq_server.failpoints import NAMES as FAILPOINTS
from dtq_server.models import TaskState
from tests.chaos import evidence, leases
from tests.chaos.checker import Expect
from tests.chaos.cluster import LEASE_EVENTS, ChaosCluster
from tests.chaos.conftest import Scenario, Scenarios, Size
from tests.chaos.ledger import Entry, LoadClient, Spec
from tests.harness import HEARTBEAT_TIMEOUT_S, RawNode, wait_until

T = HEARTBEAT_TIMEOUT_S
REDELIVERY_LIMIT_S = T + 1.0
RECONNECT_BACKOFF_MAX_S = 5.0
"""dtq_worker's default ``reconnect_backoff_max_s`` (F4 d: new session within it + 1 s)."""

pytestmark = pytest.mark.chaos


def witness(sleep_s: float = 0.0) -> Spec:
    """Spec of witness tasks that sleep ``sleep_s``."""
    payload = {"sleep": sleep_s} if sleep_s else {}
    return lambda _: ("witness", payload)


def submit_all(run: Scenario, prefix: str, total: int, sleep_s: float = 0.0) -> None:
    """Submit ``total`` witness tasks through the ledger and wait for every answer."""
    load = LoadClient(_cluster(run).address, run.ledger, witness(sleep_s), total=total,
                      prefix=prefix, threads=2)  # fmt: skip
    load.start().join(120)


def submit_batch(run: Scenario, prefix: str, sleeps: list[float]) -> list[str]:
    """Submit witness tasks sleeping ``sleeps[i]`` in ONE SubmitTasks call; returns their ids.

    One batch is one dispatch round, which deals tasks to nodes one per node per
    pass: so a test can tell exactly which task goes where.
    """
    specs = [
        TaskSpec("witness", {"sleep": s}, idempotency_key=f"{prefix}-{i}")
        for i, s in enumerate(sleeps)
    ]
    with _cluster(run).client() as client:
        results = client.submit_many(specs)
    for spec, result in zip(specs, results, strict=True):
        run.ledger.record(Entry(str(spec.idempotency_key), result.task.id, True))
    return [r.task.id for r in results]


def _cluster(run: Scenario) -> ChaosCluster:
    assert run.cluster is not None
    return run.cluster


def granted(cluster: ChaosCluster, node_id: str | None = None, attempt: int | None = None):
    """(task_id, attempt) of every lease.granted event, optionally for one node / attempt."""
    return [
        (e["task_id"], e["attempt"])
        for e in cluster.events(frozenset({"lease.granted"}))
        if (node_id is None or e["node_id"] == node_id)
        and (attempt is None or e["attempt"] == attempt)
    ]


def sessions_of(cluster: ChaosCluster, node_id: str) -> list[str]:
    """Session ids ``node_id`` registered, oldest first (from the coordinator's log)."""
    return [
        e["session_id"]
        for e in cluster.events(frozenset({"node.registered"}))
        if e["node_id"] == node_id
    ]


# --- F1 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("F1")
@pytest.mark.timeout(900)
def test_f1_kill_9_coordinator_under_load(scenarios: Scenarios, size: Size) -> None:
    """kill -9 the coordinator at a seeded moment of a submit burst; restart it on its files."""
    seeds = size.pick([11], [11, 22, 33, 44, 55])
    total = size.pick(400, 10_000)
    for seed in seeds:
        run = scenarios.new(f"seed={seed}")
        _f1_one_seed(run, seed, total)


def _f1_one_seed(run: Scenario, seed: int, total: int) -> None:
    rng = random.Random(seed)
    kill_after = int(total * rng.uniform(0.2, 0.8))
    run.note(f"seed {seed}: kill -9 after {kill_after} of {total} submits")
    cluster = run.start()
    cluster.add_node("a")
    cluster.add_node("b")
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    load = LoadClient(
        cluster.address, run.ledger, witness(), total=total, prefix=f"f1-{seed}", threads=4
    ).start()
    wait_until(lambda: len(run.ledger) >= kill_after, 120, interval_s=0.005, what="the kill point")
    crash = cluster.kill_coordinator()
    snapshot = cluster.snapshot(crash)
    cluster.restart_coordinator()
    restarted_at = time.monotonic()
    load.join(300)
    run.note(f"in flight at the crash: {crash.in_flight}")

    # (c) Nothing that had SUCCEEDED before the crash runs again after the restart.
    done_before = {
        t.id for t in evidence.read_tasks(snapshot).values() if t.state is TaskState.SUCCEEDED
    }
    checker_expect = Expect(dup_bound=crash.in_flight, finish_within_s=60)
    extra = []
    if evidence.integrity_check(snapshot) != "ok":
        extra.append("I7: the snapshot taken at the crash is not intact")
    run.finish(checker_expect, extra)  # waits for every acknowledged task first (a)
    rerun = [e for e in cluster.executions() if e.task_id in done_before and e.ts > restarted_at]
    assert not rerun, f"(c) tasks done before the crash ran again: {rerun[:3]}"


# --- F2 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("F2")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("failpoint", sorted(FAILPOINTS))
def test_f2_crash_at_commit_point(scenarios: Scenarios, size: Size, failpoint: str) -> None:
    """The coordinator dies exactly at a commit point; it restarts and nothing is lost."""
    run = scenarios.new(failpoint)
    total = 100
    cluster = run.start(env={"DTQ_FAILPOINT": failpoint})
    if failpoint.startswith("submit."):
        # The first submit crashes the coordinator; the client retries with its key.
        load = LoadClient(
            cluster.address, run.ledger, witness(), total=total, prefix="f2", threads=1
        ).start()
        crash = cluster.await_crash()
        cluster.restart_coordinator()
        cluster.add_node("a")
        load.join(120)
        retried = [e for e in run.ledger.entries if e.attempts > 1]
        run.note(f"retried keys: {[(e.key, e.attempts) for e in retried]}")
        assert retried, "the submit that crashed the coordinator was retried"
        calls = {code for _, code in run.ledger.calls}
        assert "UNAVAILABLE" in calls, calls
        stored = evidence.read_tasks(evidence.snapshot_db(cluster.data_dir, run.root / "end"))
        keys = [t.idempotency_key for t in stored.values()]
        assert len(keys) == len(set(keys)) == total, "exactly one task per key"
        in_snapshot = evidence.read_tasks(cluster.snapshot(crash))
        if failpoint == "submit.before_commit":
            assert not in_snapshot, "nothing was committed before the crash"
        else:
            # Committed, then the reply was lost: the retry returned the same task.
            assert in_snapshot, "the crashing submit was committed"
            acked = run.ledger.acknowledged()
            for task in in_snapshot.values():
                assert acked[str(task.idempotency_key)] == task.id
        run.finish(Expect(dup_bound=0))
        return

    # Leases and results: the work is queued first, then a node triggers the failpoint.
    submit_all(run, "f2", total)
    cluster.add_node("a")
    crash = cluster.await_crash()
    snapshot = cluster.snapshot(crash)
    cluster.restart_coordinator()
    restarted_at = time.monotonic()
    cluster.wait_nodes("a")
    in_flight = evidence.in_flight(snapshot)
    run.note(f"in flight at the crash: {len(in_flight)}")
    extra: list[str] = []
    if failpoint == "lease.after_commit_before_send":
        # Leased in the store, never sent: the node resumes its session without them,
        # so the restarted coordinator sends them again, the same leases (attempt 1).
        def ran_after_restart() -> dict[str, float]:
            return {
                e.task_id: e.ts
                for e in cluster.executions()
                if e.task_id in in_flight and e.ts >= restarted_at
            }

        wait_until(
            lambda: ran_after_restart().keys() == set(in_flight),
            T + 10,
            what="the unsent leases to be sent again and run",
        )
        worst = max(ts - restarted_at for ts in ran_after_restart().values())
        run.row.redelivery_s, run.row.redelivery_limit_s = worst, REDELIVERY_LIMIT_S
        not_first = [e for e in cluster.executions() if e.task_id in in_flight and e.attempt != 1]
        registrations = [e for e in cluster.node_events("a") if e["event"] == "node.registered"]
        if not registrations[-1]["resumed"]:
            # a could not resume the session holding the leases: the crash beat the
            # registration answer (a never knew the session), or a's reconnect backoff
            # outlasted the restarted coordinator's grace of T for that session. Either
            # way the leases expired and ran again as attempt 2, which is correct.
            run.note(f"a did not resume its session; {len(not_first)} ran as attempt 2")
        elif not_first:
            extra.append(f"unsent leases ran under a new attempt: {not_first[:3]}")
    done_before = {
        t.id for t in evidence.read_tasks(snapshot).values() if t.state is TaskState.SUCCEEDED
    }
    run.finish(Expect(dup_bound=len(in_flight)), extra)
    rerun = [e for e in cluster.executions() if e.task_id in done_before and e.ts > restarted_at]
    assert not rerun, f"tasks whose result was committed ran again: {rerun[:3]}"
    if failpoint.startswith("result."):
        run.note(
            f"re-executed {run.row.duplicates} of {len(in_flight)} in flight: 0 when the node "
            f"resumed within T of the restart, else its leases expired first"
        )


# --- F3 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("F3")
@pytest.mark.timeout(120)
def test_f3_kill_9_node_with_tasks_in_flight(scenario: Scenario, size: Size) -> None:
    """A node dies holding 10 leases: they go to the other node within T + 1 s."""
    cluster = scenario.start()
    cluster.add_node("a", threads=10)
    cluster.add_node("b", threads=50)  # room for a's 10 on top of its own 40
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    submit_batch(scenario, "f3", [scenario.size.pick(3.0, 5.0)] * 50)
    wait_until(lambda: len(granted(cluster)) == 50, 20, what="every task leased")
    assert len(granted(cluster, "a")) == 10
    on_a = {t for t, _ in granted(cluster, "a")}
    old_session = sessions_of(cluster, "a")[-1]
    kill = cluster.kill_node("a")
    wait_until(
        lambda: on_a <= {t for t, _ in granted(cluster, "b", attempt=2)},
        T + 10,
        what="a's tasks re-leased to b",
    )
    scenario.redelivery(kill, REDELIVERY_LIMIT_S)

    # The dead session is gone for good: resuming it yields a new session and every
    # lease listed back as stale (the node must drop those tasks).
    ghost = RawNode(
        cluster.address, node_id="a", resume_session_id=old_session,
        leases=tuple((t, 1) for t in on_a), task_types=("witness",),
    )  # fmt: skip
    try:
        assert not ghost.registered.resumed
        assert ghost.session_id != old_session
        assert {lease.task_id for lease in ghost.registered.stale_leases} == on_a
    finally:
        ghost.close()
    cluster.restart_node("a")
    cluster.wait_nodes("a")
    assert sessions_of(cluster, "a")[-1] not in (old_session, ghost.session_id)
    scenario.finish(Expect(dup_bound=len(on_a)))


# --- F4 / F5 ----------------------------------------------------------------------------


def _pause_scenario(scenario: Scenario, pause_s: float) -> tuple[ChaosCluster, float, set[str]]:
    """Node a runs 10 three-second tasks and b has room for them; SIGSTOP a for ``pause_s``."""
    cluster = scenario.start()
    cluster.add_node("a", threads=10)
    cluster.add_node("b", threads=20)
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    submit_batch(scenario, "pause", [3.0] * 20)  # 10 each
    wait_until(lambda: len(cluster.executions()) == 20, 10, what="all 20 running")
    on_a = {t for t, _ in granted(cluster, "a")}
    assert len(on_a) == 10
    pause = cluster.pause_node("a")
    time.sleep(pause_s)  # the pause is the scenario
    cont = cluster.resume_node("a")
    return cluster, cont - pause.at, on_a


@pytest.mark.scenario_id("F4")
@pytest.mark.timeout(120)
def test_f4_sigstop_node_longer_than_t(scenario: Scenario, size: Size) -> None:
    """A zombie wakes up after its leases moved on: everything it says about them is refused."""
    cluster, paused_s, on_a = _pause_scenario(scenario, T + 3)
    woke = time.monotonic()
    (pause,) = [f for f in cluster.faults if f.kind == "node.sigstop"]
    scenario.redelivery(pause, REDELIVERY_LIMIT_S)
    old_session = sessions_of(cluster, "a")[0]

    # (d) a registers a new session within backoff_max + 1 s and gets new work.
    def new_session() -> bool:
        with cluster.client() as client:
            return any(
                n.node_id == "a" and n.state is NodeState.ACTIVE and n.session_id != old_session
                for n in client.nodes()
            )

    wait_until(new_session, RECONNECT_BACKOFF_MAX_S + 1, interval_s=0.05, what="a's new session")
    scenario.note(f"a paused {paused_s:.2f} s; new session {time.monotonic() - woke:.2f} s later")
    submit_all(scenario, "fresh", 20, sleep_s=0.3)
    wait_until(
        lambda: any(e.node_id == "a" and e.task_id not in on_a for e in cluster.executions()),
        15,
        what="new work on a",
    )
    # (b) Everything a said about its old leases was refused, and counted.
    refused = [
        e for e in cluster.events(frozenset({"node.resume_refused", "report.rejected"}))
        if e.get("node_id") == "a"
    ]  # fmt: skip
    expired = [e for e in cluster.node_events("a") if e.get("event") == "session.expired"]
    stale = sum(int(e.get("stale_leases", 1)) for e in refused)
    scenario.note(
        f"a's stale reports refused: {stale} (resume_refused/report.rejected), "
        f"stream ended FAILED_PRECONDITION: {len(expired)}"
    )
    assert stale + len(expired) >= 1, "the zombie's stale session was refused"
    accepted_from_a = [
        e for e in cluster.events(frozenset({"lease.ended"}))
        if e["node_id"] == "a" and e["task_id"] in on_a
    ]  # fmt: skip
    assert not accepted_from_a, f"a stale result was applied: {accepted_from_a[:2]}"
    scenario.finish(Expect(dup_bound=len(on_a)))
    # (c) Every stored result is the winning attempt's, from b.
    rows = evidence.read_tasks(cluster.db)
    assert {rows[t].result_json()["node_id"] for t in on_a} == {"b"}


@pytest.mark.scenario_id("F5")
@pytest.mark.timeout(120)
def test_f5_sigstop_node_shorter_than_t(scenario: Scenario, size: Size) -> None:
    """A pause of T/2 is not death: no redelivery, no duplicate, every result on attempt 1."""
    cluster, paused_s, on_a = _pause_scenario(scenario, 0.5 * T)
    scenario.note(f"a paused {paused_s:.2f} s (T = {T} s)")
    scenario.finish(Expect(dup_bound=0))
    assert not granted(cluster, attempt=2), "no task was leased twice"
    rows = evidence.read_tasks(cluster.db)
    assert {(rows[t].attempt, rows[t].result_json()["node_id"]) for t in on_a} == {(1, "a")}


# --- F6 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("F6")
@pytest.mark.timeout(180)
def test_f6_coordinator_graceful_shutdown(scenario: Scenario, size: Size) -> None:
    """SIGTERM under load: NOT_SERVING and UNAVAILABLE at once, results accepted in the grace."""
    grace_s = 3.0
    total = 1000
    cluster = scenario.start("--shutdown-grace", str(grace_s))
    cluster.add_node("a")
    cluster.add_node("b")
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    load = LoadClient(
        cluster.address, scenario.ledger, witness(0.02), total=total, prefix="f6", threads=4
    ).start()
    wait_until(lambda: len(scenario.ledger) >= total // 2, 60, interval_s=0.01, what="half")
    server = cluster.server
    with grpc.insecure_channel(cluster.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        term_at = time.monotonic()
        server.signal(signal.SIGTERM)
        status = health_pb2.HealthCheckResponse.SERVING
        while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < term_at + 5:
            status = health.Check(check, timeout=5).status
        not_serving_s = time.monotonic() - term_at
    no_retry = RetryPolicy(attempts=1)
    with Client(cluster.address, timeout_s=5, retry=no_retry) as client, pytest.raises(Unavailable):
        client.submit("witness", {}, idempotency_key="f6-refused")
    scenario.ledger.record(Entry("f6-refused", None, False, "UNAVAILABLE"))
    code = server.wait(grace_s + 10)
    exited_s = time.monotonic() - term_at
    scenario.note(
        f"NOT_SERVING {not_serving_s * 1000:.0f} ms after SIGTERM; exit {code} "
        f"after {exited_s:.2f} s (grace {grace_s} s)"
    )
    history = leases.spans(cluster.events(LEASE_EVENTS))
    open_at_term = [s for s in history.values() if s.granted <= term_at < s.ended]
    in_grace = [s for s in open_at_term if s.ended < term_at + exited_s]
    scenario.note(
        f"leases open at SIGTERM: {len(open_at_term)}, results accepted in grace: {len(in_grace)}"
    )
    cluster.restart_coordinator()
    load.join(120)
    extra = []
    if not_serving_s > 0.1:
        extra.append(f"NOT_SERVING after {not_serving_s:.3f} s > 0.1 s")
    if code != 0 or exited_s > grace_s + 2:
        extra.append(f"exit {code} after {exited_s:.2f} s (limit {grace_s + 2} s)")
    if len(in_grace) != len(open_at_term):
        extra.append("leases open at SIGTERM did not all end with an accepted result in grace")
    scenario.finish(Expect(dup_bound=0), extra)


# --- F7 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("F7")
@pytest.mark.timeout(120)
def test_f7_node_graceful_shutdown(scenario: Scenario, size: Size) -> None:
    """SIGTERM a busy node: quick tasks report, the rest are handed back and re-leased at once."""
    grace_s = 2.0
    long_s = scenario.size.pick(4.0, 10.0)  # either way well past the grace
    cluster = scenario.start()
    cluster.add_node("a", "--shutdown-grace", str(grace_s), threads=24)
    cluster.add_node("b", threads=44)  # room for a's 20 on top of its own 24
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    # Dealt one per node per pass: a and b each get 20 long and 4 short tasks.
    submit_batch(scenario, "f7", [long_s] * 40 + [1.5] * 8)
    wait_until(lambda: len(cluster.executions()) == 48, 15, what="all 48 running")
    assert len(granted(cluster, "a")) == 24
    term = cluster.record_fault("node.sigterm", time.monotonic(), "a")
    cluster.nodes["a"].signal(signal.SIGTERM)
    code = cluster.nodes["a"].wait(grace_s + 15)
    exited_s = time.monotonic() - term.at
    wait_until(lambda: len(granted(cluster, attempt=2)) >= 20, 10, what="20 re-leased")
    history = leases.spans(cluster.events(LEASE_EVENTS))
    released = [s for s in history.values() if s.attempt == 1 and s.state == "QUEUED"]
    gaps = [history[(s.task_id, 2)].granted - s.ended for s in released]
    scenario.row.redelivery_s, scenario.row.redelivery_limit_s = max(gaps), 1.0
    reported = [s for s in history.values() if s.node_id == "a" and s.state == "SUCCEEDED"]
    scenario.note(
        f"a exited {code} after {exited_s:.2f} s; reported {len(reported)}, "
        f"released {len(released)}, re-leased within {max(gaps):.3f} s of the release"
    )
    extra = []
    if code != 0:
        extra.append(f"a exited {code}")
    if len(reported) != 4 or len(released) != 20:
        extra.append(f"expected 4 reported and 20 released, got {len(reported)}/{len(released)}")
    scenario.finish(Expect(dup_bound=len(released)), extra)
