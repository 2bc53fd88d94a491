"""Every RPC fed requests built field by field (tests/field_fuzz.py), the worker stream by
nodes holding real leases (tests/fuzzed_node.py).

The small, in-process version of chaos B5: it runs in the default suite and in
the PostgreSQL pass, where values SQLite takes and PostgreSQL does not (a NUL
in any text field) used to end as UNAVAILABLE or INTERNAL.
"""

from __future__ import annotations

import random

import grpc

from dtq_client import Client, TaskSpec
from tests.field_fuzz import MessageGen, ended_badly, fuzz_rpcs
from tests.fuzzed_node import FuzzedNode, run_together
from tests.harness import InProcessCoordinator, wait_until
from tests.rpcs import every_rpc

EXAMPLES = 150


def test_requests_built_field_by_field_end_with_a_precise_status(
    coordinator: InProcessCoordinator,
) -> None:
    with Client(coordinator.address) as client:
        ids = [client.submit("nobody.runs.this", {"i": i}).id for i in range(3)]
    gen = MessageGen(random.Random(5), ids)
    rpcs = [r for r in every_rpc() if not r.path.endswith("WorkerService/Connect")]
    with grpc.insecure_channel(coordinator.address) as channel:
        problems = fuzz_rpcs(channel, gen, rpcs, EXAMPLES).problems
    assert problems == [], problems[:5]
    with Client(coordinator.address) as client:
        assert client.health() == "SERVING"


def test_nodes_sending_fuzzed_updates_leave_no_lease_behind(
    coordinator: InProcessCoordinator,
) -> None:
    """Chaos B7 in small: fuzzed nodes holding real leases, on both stores."""
    gen = MessageGen(random.Random(7), [])
    given = 0
    with Client(coordinator.address) as client, grpc.insecure_channel(coordinator.address) as ch:
        for _ in range(3):
            client.submit_many([TaskSpec("ok", {}, queue="fz") for _ in range(20)], answer="ack")
            nodes = [FuzzedNode(ch, gen, f"fz{i}") for i in range(3)]
            run_together(nodes, 1.0)
            for node in nodes:
                assert not ended_badly(node.ended, node.details), (node.ended, node.details)
                given += node.received["assignments"]
        assert given > 0, "no node was given work"
        # Every session is over: each lease is released, expired or finished (none kept
        # in memory for a session that is gone), and every task reads back.
        wait_until(
            lambda: (
                not client.list_tasks(queue="fz", state="leased", limit=1)
                and not client.list_tasks(queue="fz", state="running", limit=1)
            ),
            10,
            what="no task leased or running",
        )
        assert len(client.list_tasks(queue="fz", limit=1000)) == 60
        assert client.health() == "SERVING"
