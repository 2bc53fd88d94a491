"""RELIABILITY.md 2.8, L2: a seeded chaos soak.

Continuous submits while, every 20-40 s (4-7 s at small size), one fault
strikes: kill -9 a node (its service manager restarts it), SIGSTOP a node for
T + 2 s, black-hole a node for T + 3 s, kill -9 the coordinator (restarted on
its address and files), or RST a node's connections. The seed picks the faults,
their targets and their spacing; it is printed, and ``DTQ_CHAOS_SEED`` replays
it. At the end I1-I7 must hold and the duplicates stay within the leases the
faults interrupted (from the coordinator's event log).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest

from tests.chaos.checker import Expect
from tests.chaos.cluster import ChaosCluster, Fault
from tests.chaos.conftest import Scenario, Size
from tests.chaos.ledger import LoadClient
from tests.harness import HEARTBEAT_TIMEOUT_S, wait_until

pytestmark = pytest.mark.chaos

T = HEARTBEAT_TIMEOUT_S
DEFAULT_SEED = 202601
NODES = ("n1", "n2")
KINDS = ("node.kill9", "node.sigstop", "proxy.blackhole", "coordinator.kill9", "proxy.reset")


def _spec(number: int) -> tuple[str, dict[str, float]]:
    """Short witness tasks of 0-200 ms, varied but reproducible."""
    return "witness", {"sleep": (number * 7919 % 5) * 0.05}


def _strike(cluster: ChaosCluster, kind: str, node: str) -> Fault:
    """Inject one fault and undo it; returns the fault as recorded."""
    if kind == "node.kill9":
        fault = cluster.kill_node(node)
        time.sleep(1.0)  # the service manager's restart delay
        cluster.restart_node(node)
    elif kind == "node.sigstop":
        fault = cluster.pause_node(node)
        time.sleep(T + 2)  # the pause is the fault
        cluster.resume_node(node)
    elif kind == "proxy.blackhole":
        fault = cluster.blackhole(node)
        time.sleep(T + 3)  # the partition is the fault
        cluster.heal(node)
    elif kind == "coordinator.kill9":
        fault = cluster.kill_coordinator()
        cluster.restart_coordinator()
    else:
        fault = cluster.reset(node)
    return fault


@pytest.mark.scenario_id("L2")
@pytest.mark.timeout(1500)
def test_l2_seeded_chaos_soak(scenario: Scenario, size: Size) -> None:
    """Faults at seeded moments under continuous load; every invariant holds at the end."""
    seed = int(os.environ.get("DTQ_CHAOS_SEED", DEFAULT_SEED))
    rng = random.Random(seed)
    duration_s = size.pick(25.0, 600.0)
    spacing = size.pick((4.0, 7.0), (20.0, 40.0))
    rate = 25.0
    scenario.note(f"seed {seed} (replay: DTQ_CHAOS_SEED={seed}), {duration_s:.0f} s")

    cluster = scenario.start()
    for node in NODES:
        cluster.add_node(node, via_proxy=True)
    cluster.wait_nodes(*NODES)
    load = LoadClient(
        cluster.address, scenario.ledger, _spec, total=int(rate * (duration_s + 60)),
        prefix=f"l2-{seed}", threads=4, rate=rate, give_up_s=120,
    ).start()  # fmt: skip
    wait_until(lambda: len(scenario.ledger) >= 3 * rate, 30, what="the load warming up")
    cluster.mark_baseline()
    started = time.monotonic()
    struck: list[Fault] = []
    next_at = started + rng.uniform(*spacing)
    while next_at < started + duration_s:
        time.sleep(max(0.0, next_at - time.monotonic()))  # the spacing is the scenario
        kind, node = rng.choice(KINDS), rng.choice(NODES)
        fault = _strike(cluster, kind, node)
        struck.append(fault)
        print(
            f"[L2] {fault.at - started:6.1f} s  {kind} {'' if kind.startswith('coord') else node}"
        )
        next_at = max(time.monotonic(), next_at) + rng.uniform(*spacing)
    time.sleep(max(0.0, started + duration_s - time.monotonic()))
    load.stop()
    load.join(180)
    cluster.wait_nodes(*NODES)

    for fault in struck:
        if fault.kind in ("node.kill9", "node.sigstop", "proxy.blackhole"):
            scenario.redelivery(fault, T + 1)
    bound = scenario.interrupted_bound(struck)
    kinds = Counter(f.kind for f in struck)
    scenario.note(f"faults: {dict(kinds)}; leases they interrupted: {bound}")
    scenario.finish(Expect(dup_bound=bound, finish_within_s=120))
