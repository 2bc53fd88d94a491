"""RELIABILITY.md 2.3: network faults through the fault proxy (N1-N5, N8).

A node reaches the coordinator through its own :class:`~tests.chaos.proxy.FaultProxy`
(``add_node(..., via_proxy=True)``); N4 puts one between a client and the
coordinator instead. Log timestamps (ISO, UTC) are compared with the wall-clock
time the harness recorded for each fault.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from tests.chaos import evidence
from tests.chaos.checker import Expect
from tests.chaos.cluster import ChaosCluster, Fault
from tests.chaos.conftest import Scenario, Scenarios, Size
from tests.chaos.ledger import LoadClient
from tests.chaos.proxy import Direction, FaultProxy
from tests.chaos.resources import tcp_peers
from tests.chaos.test_process_faults import (
    REDELIVERY_LIMIT_S,
    T,
    granted,
    sessions_of,
    submit_batch,
    witness,
)
from tests.chaos.test_steady_load import dispatch_times, percentile, redelivered, spread
from tests.harness import ROOT, python_env, wait_until

pytestmark = pytest.mark.chaos

SERVER_KEEPALIVE_S = 30.0 + 10.0
"""The coordinator's keepalive_time + keepalive_timeout (dtq_server.app.server_options)."""


def wall(event: dict[str, Any]) -> float:
    """The epoch time of a structlog JSON event (``timestamp`` is ISO 8601, UTC)."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def first_after(events: list[dict[str, Any]], kind: str, after: float, **match: Any):
    """The first event ``kind`` (matching ``match``) logged after epoch time ``after``."""
    for event in events:
        matches = all(event.get(k) == v for k, v in match.items())
        if event.get("event") == kind and wall(event) >= after and matches:
            return event
    return None


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _wall_of(mono: float) -> float:
    return time.time() - (time.monotonic() - mono)


def stream_dead_after(cluster: ChaosCluster, node_id: str, fault: Fault) -> float | None:
    """Seconds from ``fault`` until ``node_id`` declared its stream dead (None: it did not)."""
    event = first_after(cluster.node_events(node_id), "stream.broken", fault.wall)
    return None if event is None else wall(event) - fault.wall


def _node_behind_proxy_with_work(scenario: Scenario) -> tuple[ChaosCluster, set[str]]:
    """Node a (through its proxy) and node b each run 10 four-second tasks; b has room for 10."""
    cluster = scenario.start()
    cluster.add_node("a", threads=10, via_proxy=True)
    cluster.add_node("b", threads=20)
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    submit_batch(scenario, "net", [4.0] * 20)
    wait_until(lambda: len(cluster.executions()) == 20, 10, what="all 20 running")
    on_a = {t for t, _ in granted(cluster, "a")}
    assert len(on_a) == 10
    return cluster, on_a


# --- N1 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("N1")
@pytest.mark.timeout(180)
def test_n1_blackhole_between_node_and_coordinator(scenario: Scenario, size: Size) -> None:
    """Both ways silent for T + 5 s (full size: past the coordinator's keepalive)."""
    cluster, on_a = _node_behind_proxy_with_work(scenario)
    assert cluster.baseline is not None
    hole = cluster.blackhole("a")
    wait_until(
        lambda: on_a <= {t for t, _ in granted(cluster, "b", attempt=2)},
        T + 10,
        what="a's tasks re-leased to b",
    )
    scenario.redelivery(hole, REDELIVERY_LIMIT_S)
    hold_s = T + 5
    if size.full:
        # Keep the hole open until the coordinator's own keepalive must have closed
        # the dead connection: its fds come back to the baseline with no help.
        hold_s = SERVER_KEEPALIVE_S + 3
        proxy, pid = cluster.proxies["a"], cluster.server.pid
        dead = proxy.upstream_ports() & tcp_peers(pid)
        assert dead, "the coordinator holds the black-holed connection"
        wait_until(
            lambda: not dead & tcp_peers(pid),
            SERVER_KEEPALIVE_S + 2,
            interval_s=0.5,
            what="the coordinator closing the black-holed connection",
        )
        closed_s = time.monotonic() - hole.at
        scenario.note(
            f"coordinator closed the dead connection {closed_s:.1f} s into the hole "
            f"(keepalive time + timeout = {SERVER_KEEPALIVE_S:.0f} s)"
        )
    time.sleep(max(0.0, hole.at + hold_s - time.monotonic()))  # the partition is the scenario
    healed = cluster.heal("a")
    detect_s = stream_dead_after(cluster, "a", hole)
    old = sessions_of(cluster, "a")[0]

    def new_session() -> bool:
        return any(s != old for s in sessions_of(cluster, "a"))

    wait_until(new_session, 15, what="a registers a new session")
    back = first_after(cluster.events(), "node.registered", hole.wall, node_id="a")
    assert back is not None
    scenario.note(
        f"hole {healed - hole.at:.1f} s; a saw no heartbeat ack after {_s(detect_s)} s; "
        f"new session {wall(back) - _wall_of(healed):.2f} s after the heal"
    )
    extra = []
    if detect_s is None or detect_s > T + 0.5:
        extra.append(f"a noticed the dead stream after {detect_s} s (T = {T} s)")
    accepted_from_a = [
        e for e in cluster.events(frozenset({"lease.ended"}))
        if e["node_id"] == "a" and e["task_id"] in on_a
    ]  # fmt: skip
    if accepted_from_a:
        extra.append(f"a stale result was applied: {accepted_from_a[:2]}")
    scenario.finish(Expect(dup_bound=len(on_a)), extra)


# --- N2 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("N2")
@pytest.mark.timeout(180)
def test_n2_one_way_blackhole_coordinator_to_node(scenario: Scenario, size: Size) -> None:
    """Heartbeats reach the coordinator but nothing comes back for T + 5 s."""
    cluster, on_a = _node_behind_proxy_with_work(scenario)
    hole = cluster.blackhole("a", Direction.DOWN)
    time.sleep(T + 5)  # the partition is the scenario
    cluster.heal("a")
    wait_until(lambda: len(sessions_of(cluster, "a")) >= 2, 15, what="a reconnects")
    detect_s = stream_dead_after(cluster, "a", hole)
    lost = [
        e for e in cluster.events(frozenset({"lease.lost"})) if e["task_id"] in on_a
    ]  # fmt: skip
    path = (
        "a's session expired; its leases were re-leased to b"
        if lost
        else "a's session survived; its leases stayed valid"
    )
    scenario.note(f"path: {path}; a saw no heartbeat ack after {_s(detect_s)} s")
    if lost:
        # No bound is set for N2, and T + 1 s cannot hold: heartbeats kept the session
        # alive until the node gave up on acks (<= T), and its resume attempt, which
        # reached the coordinator, counts as a sign of life for one more T.
        scenario.redelivery(hole, 2 * T + 1)
    extra = []
    if detect_s is None or detect_s > T + 0.5:
        extra.append(f"a noticed the missing acks after {detect_s} s (T = {T} s)")
    scenario.finish(Expect(dup_bound=len(on_a)), extra)


# --- N3 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("N3")
@pytest.mark.timeout(120)
def test_n3_reset_mid_stream_quick_reconnect(scenario: Scenario, size: Size) -> None:
    """RST once: a resumes its session within 1 s, so nothing is redelivered or run twice."""
    cluster, on_a = _node_behind_proxy_with_work(scenario)
    reset = cluster.reset("a")
    wait_until(lambda: len(sessions_of(cluster, "a")) >= 2, 5, what="a reconnects")
    again = first_after(cluster.events(), "node.registered", reset.wall, node_id="a")
    assert again is not None
    reconnect_s = wall(again) - reset.wall
    scenario.note(f"a resumed={again['resumed']} {reconnect_s:.3f} s after the reset")
    extra = []
    if not again["resumed"] or reconnect_s > 1.0:
        extra.append(f"a reconnected after {reconnect_s:.2f} s, resumed={again['resumed']}")
    scenario.finish(Expect(dup_bound=0), extra)
    assert not granted(cluster, attempt=2), "no task was leased twice"
    rows = evidence.read_tasks(cluster.db)
    assert {(rows[t].attempt, rows[t].result_json()["node_id"]) for t in on_a} == {(1, "a")}


# --- N4 ---------------------------------------------------------------------------------


@pytest.mark.scenario_id("N4")
@pytest.mark.timeout(180)
def test_n4_client_partition_during_submit(scenario: Scenario, size: Size) -> None:
    """A burst of submits with a 1 s deadline through a black hole; retried by key until healed."""
    deadline_s = 1.0
    total = 500
    cluster = scenario.start()
    cluster.add_node("a")
    cluster.wait_nodes("a")
    cluster.mark_baseline()
    with FaultProxy(cluster.address) as proxy:
        load = LoadClient(
            proxy.address, scenario.ledger, witness(), total=total, prefix="n4", threads=4,
            rate=size.pick(100.0, 50.0), call_timeout_s=deadline_s, give_up_s=120,
        ).start()  # fmt: skip
        wait_until(lambda: len(scenario.ledger) >= total // 4, 60, what="a quarter submitted")
        proxy.blackhole()
        time.sleep(size.pick(3.0, 6.0))  # the partition is the scenario
        proxy.pass_through()
        load.join(150)
    durations = [d for d, _ in scenario.ledger.calls]
    codes = {code for _, code in scenario.ledger.calls}
    retried = sum(1 for e in scenario.ledger.entries if e.attempts > 1)
    scenario.note(
        f"{len(durations)} calls, {retried} keys retried, codes {sorted(codes)}, "
        f"longest call {max(durations):.2f} s (deadline {deadline_s} s)"
    )
    extra = []
    if not codes <= {"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"}:
        extra.append(f"unexpected status codes {codes}")
    if max(durations) > deadline_s + 0.5:
        extra.append(f"a call took {max(durations):.2f} s, past its {deadline_s} s deadline")
    if not all(e.ok for e in scenario.ledger.entries):
        extra.append("some keys never got an OK")
    scenario.finish(Expect(dup_bound=0), extra)


# --- N8 ---------------------------------------------------------------------------------


def _server_flags() -> str:
    return subprocess.run(
        [sys.executable, "-m", "dtq_server", "--help"],
        capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=60, check=True,
    ).stdout  # fmt: skip


@pytest.mark.scenario_id("N8")
@pytest.mark.timeout(180)
def test_n8_max_connection_age_rotation(scenario: Scenario, size: Size) -> None:
    """The coordinator rotates connections (GOAWAY); the node keeps its session and leases."""
    if "--max-connection-age" not in _server_flags():
        scenario.skip(
            "N8 needs a coordinator flag for grpc.max_connection_age_ms "
            "(--max-connection-age / --max-connection-age-grace); dtq-server has none yet"
        )
    # Full size is RELIABILITY.md's 10 s age, 5 s grace over 60 s; CI rotates faster.
    age_s, grace_s = size.pick((5.0, 2.0), (10.0, 5.0))
    run_s = size.pick(12.0, 60.0)
    cluster = scenario.start(
        "--max-connection-age", str(age_s), "--max-connection-age-grace", str(grace_s)
    )
    cluster.add_node("a", threads=4)
    cluster.wait_nodes("a")
    cluster.mark_baseline()
    started = time.monotonic()
    load = LoadClient(
        cluster.address, scenario.ledger, witness(0.5), total=int(run_s * 8), prefix="n8",
        threads=2, rate=8.0,
    ).start()  # fmt: skip
    load.join(run_s + 60)
    streams = [
        e for e in cluster.events(frozenset({"node.registered"})) if e["node_id"] == "a"
    ]  # fmt: skip
    resumed = [e for e in streams if e["resumed"]]
    scenario.note(
        f"{time.monotonic() - started:.0f} s run: a opened {len(streams)} streams, "
        f"{len(resumed)} resumed its session"
    )
    extra = []
    if len({e["session_id"] for e in streams}) != 1:
        extra.append("a lost its session to a connection rotation")
    if not resumed:
        extra.append("no rotation happened (GOAWAY never seen)")
    if granted(cluster, attempt=2):
        extra.append("a task was redelivered")
    scenario.finish(Expect(dup_bound=0), extra)


# --- N5 ---------------------------------------------------------------------------------

N5_LATENCY_MS = 200.0
N5_BANDWIDTH_KBPS = 256.0
N5_PROCESSING_S = 0.05
N5_PADS_KIB = {"light": 8, "saturated": 32}
"""Padding in each payload, so the paced links carry real bytes: about a third of
256 kB/s, and (saturated) more than the links carry, so assignments queue.

A saturated link queues the heartbeat acks behind the assignments (one FIFO per
connection, as TCP would), for longer than T. Nodes used to count only acks as
signs of life: they declared such streams dead, resumed, got the backlog again,
and some tasks crossed the link forever or were dead-lettered after five lost
leases. Any message now counts (``dtq_worker.heartbeat``), and an assignment
that still cannot get through is resent a bounded number of times
(``dtq_server.sessions.RESENDS_PER_LEASE``).

The auto prefetch then grew on such a link: the acks it sizes from waited behind
the tasks it had asked for. It reached 339 tasks per node (43 s of link) within
10 s, and gRPC's keepalive ping, whose ack waited behind them, broke a stream in
one CI run of four. It now counts round trips beyond the link's own as its
queue (``dtq_worker.prefetch.QUEUEING_BUDGET_S``): 45-57 at most."""
N5_MAX_PREFETCH = 128
"""Most tasks a node may ask to buffer on the saturated links (see above)."""


def stream_breaks(cluster: ChaosCluster, node_id: str) -> list[dict[str, Any]]:
    """The ``stream.broken`` events of ``node_id`` (it saw no heartbeat ack within T)."""
    return [e for e in cluster.node_events(node_id) if e.get("event") == "stream.broken"]


def most_prefetched(cluster: ChaosCluster, node_id: str) -> int:
    """The largest prefetch ``node_id``'s ``--prefetch auto`` asked for."""
    events = cluster.node_events(node_id)
    return max((e["prefetch"] for e in events if e.get("event") == "node.prefetch"), default=0)


@pytest.mark.scenario_id("N5")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("load_kind", sorted(N5_PADS_KIB))
def test_n5_latency_and_bandwidth(scenarios: Scenarios, size: Size, load_kind: str) -> None:
    """Both nodes' links at 200 ms each way and 256 kB/s under steady load: no redelivery."""
    scenario = scenarios.new(load_kind)
    round_trip_s = 2 * N5_LATENCY_MS / 1000
    assert round_trip_s + N5_PROCESSING_S < T, "N5 holds only while RTT + processing < T"
    # The same rate at either size. Saturated, the offered load is above what the
    # links carry, so the backlog grows for as long as it lasts: 10 s at both sizes.
    duration_s = size.pick(10.0, 60.0) if load_kind == "light" else 10.0
    total = round(17 * duration_s)
    cluster = scenario.start()
    for node in ("a", "b"):
        cluster.add_node(node, threads=4, via_proxy=True)
    cluster.wait_nodes("a", "b")
    cluster.mark_baseline()
    for proxy in cluster.proxies.values():
        proxy.latency(N5_LATENCY_MS)
        proxy.bandwidth(N5_BANDWIDTH_KBPS)
    slowed = time.monotonic()
    payload = {"sleep": N5_PROCESSING_S, "pad": "x" * N5_PADS_KIB[load_kind] * 1024}
    load = LoadClient(
        cluster.address, scenario.ledger, lambda _: ("witness", payload), total=total,
        prefix="n5", threads=2, rate=total / duration_s,
    ).start()  # fmt: skip
    load.join(duration_s + 60)  # paced over the scenario's duration
    wait_until(
        lambda: len(cluster.executions()) >= total, 60, interval_s=0.1, what="every task run"
    )
    held_s = time.monotonic() - slowed
    for node in cluster.proxies:
        cluster.heal(node)

    task_ids = set(scenario.ledger.acknowledged().values())
    dispatch = dispatch_times(cluster, task_ids)
    down_kbps = {
        n: p.forwarded[Direction.DOWN] / held_s / 1000 for n, p in cluster.proxies.items()
    }  # fmt: skip
    scenario.note(
        f"{total} tasks in {held_s:.1f} s behind {N5_LATENCY_MS:.0f} ms + "
        f"{N5_BANDWIDTH_KBPS:.0f} kB/s; coordinator -> node "
        + ", ".join(f"{n} {kbps:.0f} kB/s" for n, kbps in sorted(down_kbps.items()))
    )
    scenario.note(
        f"dispatch (submit commit -> start) p50/p99/max {spread(dispatch.total_s)} ms; "
        f"commit -> lease {spread(dispatch.queued_s)} ms, lease -> start "
        f"{spread(dispatch.delivered_s)} ms"
    )
    again = redelivered(cluster)
    ended = cluster.events(frozenset({"lease.lost", "lease.returned"}))
    breaks = {n: len(stream_breaks(cluster, n)) for n in ("a", "b")}
    prefetch = {n: most_prefetched(cluster, n) for n in ("a", "b")}
    scenario.note(
        f"redeliveries {len(again)}, leases lost or returned {len(ended)}, "
        f"streams declared dead {breaks}, sessions a {len(sessions_of(cluster, 'a'))} "
        f"b {len(sessions_of(cluster, 'b'))}, largest auto prefetch {prefetch}"
    )
    extra = []
    if percentile(dispatch.delivered_s, 0.5) < N5_LATENCY_MS / 1000:
        extra.append("the proxies' latency did not apply (lease -> start below it)")
    if again or ended:
        extra.append(f"spurious redeliveries {again[:3]}, lost/returned leases {ended[:3]}")
    if any(breaks.values()):
        extra.append(f"a node declared a live stream dead (RTT + processing < T): {breaks}")
    if max(prefetch.values()) > N5_MAX_PREFETCH:
        extra.append(f"the auto prefetch grew on its own queue: {prefetch}")
    scenario.finish(Expect(dup_bound=0), extra)
