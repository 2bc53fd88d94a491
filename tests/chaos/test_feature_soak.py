"""L3: every scheduling feature under faults (tests/chaos/feature_checks.py has the promises).

A seeded mix of delayed tasks, dependency chains, failing dependencies,
cancels, a concurrency-limited queue, a rate-limited key, a queue paused
and resumed, retries (backoff, RetryAfter), execution timeouts and
schedule-to-start timeouts, submitted while, every 3-6 s (15-30 s at full
size), one fault strikes: kill -9 the coordinator (restarted on its address
and files), kill -9 a node (restarted a second later), or RST a node's
connections. These faults
leave no node running a lease the coordinator gave to another, so the limits
are checked exactly. At the end I1-I7 hold (tasks may fail or be cancelled
here on purpose) and so does every feature's promise. The same runs over
PostgreSQL, whose store recovers the settings, dependencies and leases on each
restart. ``DTQ_CHAOS_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from tests.chaos import feature_checks, feature_load
from tests.chaos.checker import Expect, wait_terminal
from tests.chaos.cluster import LEASE_EVENTS, ChaosCluster
from tests.chaos.conftest import Scenario, Size
from tests.chaos.feature_load import FeatureLoad
from tests.chaos.strikes import strike_for
from tests.harness import wait_until

pytestmark = pytest.mark.chaos

DEFAULT_SEED = 303
NODES = ("n1", "n2")
KINDS = ("coordinator.kill9", "node.kill9", "proxy.reset")


@pytest.mark.scenario_id("L3")
@pytest.mark.timeout(1200)
def test_l3_features_under_faults(scenario: Scenario, size: Size) -> None:
    """Faults at seeded moments under a mix of features; every feature keeps its promise."""
    _soak(scenario, size, scenario.start())


@pytest.mark.postgres
@pytest.mark.scenario_id("L3 postgres")
@pytest.mark.timeout(1200)
def test_l3_features_under_faults_on_postgres(
    postgres_url: str, scenario: Scenario, size: Size
) -> None:
    """The same over PostgreSQL: settings, dependencies and leases recovered from there."""
    scenario.cluster = ChaosCluster(scenario.root, database_url=postgres_url)
    scenario.cluster.start_server()
    _soak(scenario, size, scenario.cluster)


def _soak(scenario: Scenario, size: Size, cluster: ChaosCluster) -> None:
    seed = int(os.environ.get("DTQ_CHAOS_SEED", DEFAULT_SEED))
    rng = random.Random(seed)
    duration_s = size.pick(25.0, 300.0)
    spacing = size.pick((3.0, 6.0), (15.0, 30.0))
    scenario.note(f"seed {seed} (replay: DTQ_CHAOS_SEED={seed}), {duration_s:.0f} s")

    for node in NODES:
        cluster.add_node(node, "--queues", f"default,{feature_load.LIMITED},{feature_load.GATED}",
                         via_proxy=True)  # fmt: skip
    cluster.wait_nodes(*NODES)
    with cluster.client(timeout_s=10) as client:
        feature_load.configure(client)
    load = FeatureLoad(cluster.address, scenario.ledger, seed, rate=8.0).start()
    wait_until(lambda: load.units >= 16, 30, what="the load warming up")
    cluster.mark_baseline()
    struck = strike_for(cluster, rng, KINDS, NODES, spacing, duration_s, "L3")
    plan = load.stop(180)
    cluster.wait_nodes(*NODES)

    wait_terminal(cluster, scenario.ledger, 120)
    problems = feature_checks.check(plan, cluster, cluster.events(LEASE_EVENTS))
    scenario.note(
        f"units {load.units}: {len(plan.succeed)} to succeed, {len(plan.chains)} chains, "
        f"{len(plan.doomed)} doomed, {len(plan.cancelled)} cancelled, {len(plan.pauses)} pauses; "
        f"faults {dict(Counter(f.kind for f in struck))}"
    )
    bound = scenario.interrupted_bound(struck) + plan.retries
    scenario.finish(Expect(dup_bound=bound, all_succeed=False, finish_within_s=120), problems)
