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
from collections import Counter

import pytest

from tests.chaos.checker import Expect
from tests.chaos.conftest import Scenario, Size
from tests.chaos.ledger import LoadClient
from tests.chaos.strikes import KINDS, strike_for
from tests.harness import HEARTBEAT_TIMEOUT_S, wait_until

pytestmark = pytest.mark.chaos

T = HEARTBEAT_TIMEOUT_S
DEFAULT_SEED = 202601
NODES = ("n1", "n2")


def _spec(number: int) -> tuple[str, dict[str, float]]:
    """Short witness tasks of 0-200 ms, varied but reproducible."""
    return "witness", {"sleep": (number * 7919 % 5) * 0.05}


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
    struck = strike_for(cluster, rng, KINDS, NODES, spacing, duration_s, "L2")
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
