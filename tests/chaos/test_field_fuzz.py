"""B5 and B7 by structure: requests built field by field from the descriptors.

B2 fuzzes bytes; these fuzz values (:mod:`tests.chaos.field_fuzz`): every
unary and streaming RPC of the contract gets mostly-valid requests with edge
values mixed in, and nodes speaking the worker stream for real (registering,
taking leases, heartbeating) report mostly-valid outcomes, heartbeats and
registrations about the leases they hold, with forged ones among them. The
coordinator must answer each with a precise status (never INTERNAL or
UNKNOWN), log no error, stay SERVING, and every task must still end: the ones
the fuzzed nodes held are run by a real node afterwards.

``DTQ_FUZZ_SEED`` picks another seed (the row names the one used).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from dtq_client import TaskSpec
from tests.chaos._b_helpers import (
    BRow,
    Cluster,
    cancel_unfinished,
    finish,
    make_cluster_fixture,  # noqa: F401  (a fixture)
    row_fixture,  # noqa: F401  (a fixture)
    sql,
)
from tests.chaos.conftest import Size
from tests.field_fuzz import MessageGen, ended_badly, fuzz_rpcs
from tests.fuzzed_node import FuzzedNode, run_together
from tests.harness import wait_until
from tests.rpcs import every_rpc

pytestmark = pytest.mark.chaos
MakeCluster = Callable[..., Cluster]
SENDERS = 8
UNFINISHED_AND_NOT_WAITING_LONG = (
    "SELECT 1 FROM tasks WHERE state < 4 AND NOT (state = 1 AND next_attempt_at > ?) LIMIT 1"
)


def seed() -> int:
    return int(os.environ.get("DTQ_FUZZ_SEED", "1"))


def error_lines(log: str) -> list[str]:
    """The coordinator's log lines at error level (or asyncio's complaints, or tracebacks)."""
    return [
        line
        for line in log.splitlines()
        if "[error" in line or "Traceback" in line or "destroyed but it is pending" in line
    ]


@pytest.mark.scenario_id("B5 fields fuzz")
@pytest.mark.timeout(600)
def test_b5_requests_built_field_by_field_to_every_rpc(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    cluster = make_cluster("--log-level", "info")
    examples = size.pick(150, 1500)
    with cluster.client() as client:
        ids = [client.submit("nobody.runs.this", {"i": i}).id for i in range(3)]
    gen = MessageGen(random.Random(seed()), ids)
    # The worker stream is fuzzed below, by nodes that hold real leases.
    rpcs = [r for r in every_rpc() if not r.path.endswith("WorkerService/Connect")]
    with grpc.insecure_channel(cluster.server.address) as channel:
        tally = fuzz_rpcs(channel, gen, rpcs, examples)
    assert tally.problems == [], f"seed {seed()}: {tally.problems[:5]}"
    assert error_lines(cluster.server.log()) == [], error_lines(cluster.server.log())[:10]
    with cluster.client() as client:  # schedules would go on adding tasks to finish
        for schedule in client.list_schedules():
            client.delete_schedule(schedule.name)
    cancel_unfinished(cluster)
    finish(
        row,
        cluster,
        seed=seed(),
        rpcs=len(rpcs),
        examples_per_rpc=examples,
        statuses=dict(tally.statuses),
    )


@pytest.mark.scenario_id("B7 worker stream fuzz")
@pytest.mark.timeout(600)
def test_b7_nodes_sending_fuzzed_updates_about_real_leases(
    make_cluster: MakeCluster, row: BRow, size: Size
) -> None:
    cluster = make_cluster("--log-level", "info")
    rounds = size.pick(10, 60)
    gen = MessageGen(random.Random(seed()), [])
    acknowledged: list[str] = []
    endings: Counter[str] = Counter()
    received: Counter[str] = Counter()
    problems: list[str] = []
    with cluster.client() as client, grpc.insecure_channel(cluster.server.address) as channel:
        for _ in range(rounds):
            specs = [TaskSpec("ok", {}, queue="fz", max_attempts=2) for _ in range(20)]
            acknowledged += [a.task_id for a in client.submit_many(specs, answer="ack")]
            nodes = [FuzzedNode(channel, gen, f"fz{gen.rng.randrange(5)}") for _ in range(3)]
            run_together(nodes, 2.0)
            for node in nodes:
                endings[str(node.ended.name if node.ended else "open")] += 1
                received.update(node.received)
                if ended_badly(node.ended, node.details):
                    problems.append(f"{node.ended}: {node.details}")
    assert problems == [], f"seed {seed()}: {problems[:5]}"
    assert received["assignments"] > 0, "the fuzzed nodes were never given work"
    cluster.node("real", "--queues", "fz")  # runs what the fuzzed nodes left unfinished
    # A fuzzed failure may put its task's next attempt minutes or days away (retry_after,
    # kept to 30 days): those wait; every other task must be run by the real node.
    wait_until(
        lambda: not sql(cluster.db, UNFINISHED_AND_NOT_WAITING_LONG, time.time() + 5),
        60,
        what="every task but those retrying later terminal",
    )
    retrying_later = cancel_unfinished(cluster)
    assert error_lines(cluster.server.log()) == [], error_lines(cluster.server.log())[:10]
    finish(  # every stored task (the acknowledged ones) terminal
        row,
        cluster,
        seed=seed(),
        acknowledged=len(acknowledged),
        retrying_later=retrying_later,
        fuzzed_sessions=sum(endings.values()),
        endings=dict(endings),
        received=dict(received),
    )
