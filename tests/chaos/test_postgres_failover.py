"""RELIABILITY.md D5 in DTQ's active-standby form: two coordinators over one PostgreSQL database.

Coordinator A leads (it holds the advisory lock); B stands by without
listening. Four nodes and the load client name both in one gRPC target, so
they reach whichever leads. Mid-run A is killed -9 and B takes over; later,
under B, PostgreSQL itself restarts (``pg_ctl restart -m immediate``). The
checker then holds the run to I1-I7, read from the database and from both
coordinators' lease events. Where D5 says more than DTQ does:

- "never leased to two live sessions" is checked from the lease events, not a
  lease history table (DTQ keeps none): I7 over PostgreSQL,
  :func:`tests.chaos.checker.double_leases`;
- leases are timed by the leader's monotonic clock, not the database's
  ``now()``: a takeover gives every open lease a fresh grace, as a restart does;
- I7's ``integrity_check`` is SQLite's; PostgreSQL runs its own crash recovery.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from datetime import datetime
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.chaos import evidence
from tests.chaos.checker import Expect, double_leases
from tests.chaos.cluster import ChaosCluster, Fault
from tests.chaos.conftest import Scenario, Size
from tests.chaos.ledger import LoadClient, Spec
from tests.chaos.resources import usage
from tests.harness import (
    HEARTBEAT_TIMEOUT_S,
    ServerProcess,
    free_loopback_port,
    wait_serving,
    wait_until,
)
from tests.postgres import PostgresServer

NODES = ("n1", "n2", "n3", "n4")
SEED = 5
T = HEARTBEAT_TIMEOUT_S
TAKEOVER_LIMIT_S = 5.0
"""kill -9 of the leader to the standby serving. README: a fraction of a second (the
standby tries for the lock four times a second); the rest is slack for a busy CI box."""
RECOVERY_LIMIT_S = 15.0
"""PostgreSQL accepting connections again to the leader SERVING again. README: the
leader's liveness write finds the broken connection within 1 s; its probe reconnects."""


def witness(sleep_s: float) -> Spec:
    """Witness tasks that run ``sleep_s``: long enough that every fault finds leases open."""
    return lambda _: ("witness", {"sleep": sleep_s} if sleep_s else {})


@pytest.mark.chaos
@pytest.mark.postgres
@pytest.mark.scenario_id("D5")
@pytest.mark.timeout(600)
def test_d5_leader_killed_then_postgres_restarted(
    postgres_server: PostgresServer, postgres_url: str, scenario: Scenario, size: Size
) -> None:
    """kill -9 the leading coordinator under load, then restart PostgreSQL under the new one."""
    rng = random.Random(SEED)
    total = size.pick(1_000, 10_000)
    # Submits paced a little faster than 16 slots run them: the queue backs up, each
    # fault finds every slot busy, and the run lasts past both faults.
    sleep_s, rate = size.pick((0.1, 170.0), (0.05, 400.0))
    kill_after = int(total * rng.uniform(0.2, 0.4))
    restart_after = int(total * rng.uniform(0.6, 0.8))
    scenario.note(
        f"seed {SEED}: kill -9 the leader after {kill_after}, restart PostgreSQL after "
        f"{restart_after} of {total} submits ({sleep_s} s tasks, {rate:.0f}/s)"
    )
    port_a, port_b = free_loopback_port(), free_loopback_port()
    cluster = ChaosCluster(
        scenario.root,
        database_url=postgres_url,
        target=f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}",
    )
    scenario.cluster = cluster
    leader = cluster.start_server(listen=f"127.0.0.1:{port_a}")
    standby = cluster.start_server(listen=f"127.0.0.1:{port_b}", wait=False)
    wait_until(lambda: "store.standby" in standby.log(), 20, what="B standing by")
    assert standby.alive(), standby.log()
    assert not standby.port_file.exists(), "a standby does not serve"
    assert not listening(port_b), "a standby does not listen"

    for node_id in NODES:
        cluster.add_node(node_id)
    cluster.wait_nodes(*NODES)
    # I6's baseline is the leader's, as F1 takes the first incarnation's: B stands
    # by until A dies, then serves A's queue to the end.
    cluster.baseline = usage(leader.pid)
    load = LoadClient(
        cluster.address, scenario.ledger, witness(sleep_s), total=total, prefix="d5", rate=rate
    ).start()

    # A dies; B takes the lock and listens; the nodes find it through the target.
    wait_until(lambda: len(scenario.ledger) >= kill_after, 120, interval_s=0.005, what="kill")
    kill = cluster.kill_coordinator(leader)
    wait_serving(standby, 30)
    takeover_s = time.monotonic() - kill.at
    cluster.wait_nodes(*NODES, timeout_s=30)
    nodes_back_s = time.monotonic() - kill.at
    scenario.note(
        f"kill -9 A: {kill.in_flight} tasks in flight in the database; B serving "
        f"{takeover_s:.2f} s later, all {len(NODES)} nodes active on B {nodes_back_s:.2f} s later"
    )

    # PostgreSQL crashes and recovers under B, which must take the lead again by itself.
    wait_until(lambda: len(scenario.ledger) >= restart_after, 120, interval_s=0.005, what="restart")
    restart_at, restart_wall = time.monotonic(), time.time()
    postgres_server.restart_immediate()
    accepting_s = time.monotonic() - restart_at
    cluster.faults.append(Fault("postgres.restart", restart_at, restart_wall, None))
    # Its store turns unwritable (health NOT_SERVING), then writable again (SERVING).
    wait_until(
        lambda: store_recovered(standby, restart_wall) and serving(standby.address),
        30,
        interval_s=0.05,
        what="B NOT_SERVING, then SERVING again, after the PostgreSQL restart",
    )
    recovered_s = time.monotonic() - restart_at - accepting_s
    breaks = sum(store_breaks(cluster, node_id) for node_id in NODES)
    scenario.note(
        f"PostgreSQL restart: accepting again after {accepting_s:.2f} s, B SERVING "
        f"{recovered_s:.2f} s after that; node streams ended by STORE_UNAVAILABLE: {breaks}"
    )

    load.join(300)
    # A last batch after both faults, through the same target: all acknowledged.
    LoadClient(
        cluster.address, scenario.ledger, witness(0.0), total=size.pick(50, 200), prefix="d5-end"
    ).start().join(120)
    refused = sum(code == "UNAVAILABLE" for _, code in scenario.ledger.calls)
    scenario.note(f"submit calls answered UNAVAILABLE (retried under their key): {refused}")

    extra = []
    unanswered = [e for e in scenario.ledger.entries if not e.ok]
    if unanswered:
        extra.append(f"submits never acknowledged: {len(unanswered)}, e.g. {unanswered[:3]}")
    if takeover_s > TAKEOVER_LIMIT_S:
        extra.append(f"takeover took {takeover_s:.2f} s > {TAKEOVER_LIMIT_S} s")
    if recovered_s > RECOVERY_LIMIT_S:
        extra.append(f"B SERVING {recovered_s:.2f} s after PostgreSQL was back")
    b_log = standby.log()
    # A COMMIT the restart left unanswered that PostgreSQL had stored makes B lead again
    # from a fresh start (memory could not know of it): one more epoch, and said so.
    reloaded = "store.unanswered_commit_stored" in b_log
    scenario.note(
        "B: a commit the restart left unanswered was stored, so B led again from the database"
        if reloaded
        else "B led on after the restart (no stored commit unanswered)"
    )
    epoch = leader_epoch(postgres_url)
    if epoch != (3 if reloaded else 2):
        extra.append(f"leader_epoch is {epoch}, not {3 if reloaded else 2}")
    if "store.leading_again" not in b_log or ("store.leadership_lost" in b_log) != reloaded:
        extra.append("B did not take the lock again by itself after the restart")
    # Leases B could not hand back to a resuming node expire T after it serves.
    scenario.redelivery(kill, takeover_s + T + 1.0)
    bound = scenario.interrupted_bound()
    scenario.note("duplicate bound: leases open at the kill (or in flight then) + at the restart")
    scenario.finish(Expect(dup_bound=bound, finish_within_s=size.pick(60, 120)), extra)


def listening(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def serving(address: str) -> bool:
    """True if the coordinator at ``address`` answers health SERVING."""
    try:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service="")
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def store_recovered(server: ServerProcess, since_wall: float) -> bool:
    """True if ``server`` logged its store unwritable since ``since_wall``, then writable
    (or then led again from a fresh start, after a stored commit went unanswered)."""
    changes = [
        event["event"] == "store.leading" or bool(event["writable"])
        for event in evidence.read_events(
            server.log_path, kinds=frozenset({"store.health", "store.leading"})
        )
        if datetime.fromisoformat(event["timestamp"]).timestamp() >= since_wall
    ]
    return False in changes and changes[-1]


def store_breaks(cluster: ChaosCluster, node_id: str) -> int:
    """How often the coordinator ended ``node_id``'s stream because its store could not commit."""
    return sum(
        e.get("event") == "stream.broken" and "STORE_UNAVAILABLE" in e.get("error", "")
        for e in cluster.node_events(node_id)
    )


def leader_epoch(url: str) -> int:
    """How many times a coordinator took the lead of the database at ``url``."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        row: Any = conn.execute("SELECT leader_epoch FROM dtq_coordinator").fetchone()
    return int(row[0])


def test_double_leases_sees_a_lease_granted_twice_or_while_the_last_one_is_open() -> None:
    """I7 over PostgreSQL can fail: overlapping and repeated grants are reported."""

    def event(kind: str, task: str, attempt: int, mono: float) -> dict[str, Any]:
        return {"event": kind, "task_id": task, "attempt": attempt, "node_id": "n", "mono": mono}

    clean = [
        event("lease.granted", "t1", 1, 1.0),
        event("lease.lost", "t1", 1, 3.0),  # A died; B expired the lease...
        event("lease.granted", "t1", 2, 3.5),  # ... then leased the task again
        event("lease.ended", "t1", 2, 4.0),
    ]
    assert double_leases(clean) == []
    overlapping = [
        event("lease.granted", "t2", 1, 1.0),
        event("lease.granted", "t2", 2, 2.0),  # attempt 1 still open
        event("lease.ended", "t2", 1, 3.0),
        event("lease.granted", "t3", 1, 1.0),
        event("lease.granted", "t3", 1, 2.0),  # the same lease twice
        event("lease.granted", "t4", 1, 1.0),
        event("lease.granted", "t4", 2, 2.0),  # attempt 1 never ended
    ]
    problems = double_leases(overlapping)
    assert len(problems) == 3, problems
    assert any("t2" in p and "still open" in p for p in problems)
    assert any("('t3', 1) granted 2 times" in p for p in problems)
    assert any("t4" in p and "never ended" in p for p in problems)
