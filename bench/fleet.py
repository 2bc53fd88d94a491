"""P5 fleet: what many connected, heartbeating nodes cost the coordinator, and whether a
silent one is still found.

Simulated nodes (``bench.simnode``: the real protocol, heartbeat every second)
run in a few asyncio processes; each "victim" node runs alone in a process of
its own so that SIGSTOP silences exactly that node with its connection still
open, like a frozen host. Steps:

1. Start the coordinator (``--heartbeat-interval 1``) and the nodes; wait until
   all are ACTIVE, then a couple of seconds for the registrations to settle.
2. CPU: the coordinator's utime + stime from /proc over ``window_s`` seconds,
   as % of one core; one value per window (round). Nothing polls the
   coordinator meanwhile.
3. Detection: SIGSTOP the victims a third of a second apart and time, from each
   one's stop, until ``ListNodes(include_gone=True)`` lists it DEAD; the bound is
   the heartbeat timeout + 1 s. The other nodes must all still be ACTIVE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cluster import ROOT, Coordinator, stop_processes, wait_for
from bench.procfs import cpu_seconds, rss_mib
from dtq_client import Client, NodeState

HEARTBEAT_INTERVAL_S = 1.0
PROCESSES = 2
"""Processes the non-victim nodes are spread over."""
SETTLE_S = 2.0
STAGGER_S = 1 / 3


@dataclass(frozen=True)
class FleetPlan:
    """How big the fleet is and how long it is watched."""

    nodes: int
    """All simulated nodes, victims included."""
    victims: int
    window_s: float
    rounds: int
    heartbeat_timeout_s: float


@dataclass
class FleetResult:
    """Every round's numbers of P5."""

    cpu_percent: list[float] = field(default_factory=list)
    """Coordinator CPU per window, % of one core."""
    detection_s: list[float] = field(default_factory=list)
    """Per victim: seconds from its SIGSTOP until the coordinator listed it DEAD."""
    false_deaths: int = 0
    """Nodes that kept heartbeating but were not ACTIVE at the end."""
    rss_mib: float = 0.0


def _simulate(address: str, prefix: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.simnode", "--address", address, "--prefix", prefix,
         "--count", str(count)],
        cwd=ROOT,
    )  # fmt: skip


def _cpu_percent(pid: int, window_s: float) -> float:
    before, started = cpu_seconds(pid), time.perf_counter()
    time.sleep(window_s)  # the measurement interval itself, not a wait for anything
    return (cpu_seconds(pid) - before) / (time.perf_counter() - started) * 100


def _detect(
    client: Client, victims: list[subprocess.Popen[bytes]], timeout_s: float
) -> list[float]:
    """SIGSTOP each victim process in turn; seconds from its stop until its node is DEAD."""
    stopped_at: dict[str, float] = {}
    for i, proc in enumerate(victims):
        if i:
            time.sleep(STAGGER_S)  # spreads the stops over the reaper's tick and the heartbeats
        os.kill(proc.pid, signal.SIGSTOP)
        stopped_at[f"victim{i}-0"] = time.perf_counter()
    dead_after: dict[str, float] = {}

    def all_dead() -> bool:
        now = time.perf_counter()
        for node in client.nodes(include_gone=True):
            if node.node_id in stopped_at and node.state is NodeState.DEAD:
                dead_after.setdefault(node.node_id, now - stopped_at[node.node_id])
        return len(dead_after) == len(stopped_at)

    wait_for(all_dead, timeout_s, "the silenced nodes to be declared dead", interval_s=0.05)
    return [dead_after[node_id] for node_id in sorted(stopped_at)]


def fleet(plan: FleetPlan) -> FleetResult:
    """P5: run the fleet, measure the coordinator's CPU, then silence the victims."""
    result = FleetResult()
    with tempfile.TemporaryDirectory(prefix="dtq-bench-fleet-") as tmp:
        coordinator = Coordinator(
            Path(tmp),
            ["--heartbeat-interval", str(HEARTBEAT_INTERVAL_S),
             "--heartbeat-timeout", str(plan.heartbeat_timeout_s)],
        )  # fmt: skip
        sims: list[subprocess.Popen[bytes]] = []
        victims: list[subprocess.Popen[bytes]] = []
        try:
            address = coordinator.wait_address()
            others = plan.nodes - plan.victims
            per_process = -(-others // PROCESSES)
            sims = [
                _simulate(address, f"sim{p}", min(per_process, others - p * per_process))
                for p in range(PROCESSES)
                if others - p * per_process > 0
            ]
            victims = [_simulate(address, f"victim{i}", 1) for i in range(plan.victims)]
            with Client(address) as client:

                def registered() -> bool:
                    if any(proc.poll() is not None for proc in [*sims, *victims]):
                        raise RuntimeError("a simulated-node process exited")
                    return sum(n.state is NodeState.ACTIVE for n in client.nodes()) == plan.nodes

                wait_for(registered, 120, f"{plan.nodes} active nodes", interval_s=0.2)
                time.sleep(SETTLE_S)  # registrations' commits and the first heartbeats
                for _ in range(plan.rounds):
                    result.cpu_percent.append(_cpu_percent(coordinator.pid, plan.window_s))
                result.rss_mib = rss_mib(coordinator.pid)
                result.detection_s = _detect(client, victims, plan.heartbeat_timeout_s + 30)
                result.false_deaths = others - sum(
                    n.state is NodeState.ACTIVE and not n.node_id.startswith("victim")
                    for n in client.nodes()
                )
        finally:
            for proc in victims:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
            stop_processes([*victims, *sims])
            coordinator.stop()
    return result
