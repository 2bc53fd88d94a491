"""A node resumes its session after a coordinator restart, however long the outage lasted.

The restarted coordinator keeps a session that held leases for one heartbeat
timeout (T); the node must be back within it, or every task it held runs again.
Its pauses between reconnect attempts grow while the coordinator is down, so
they are capped at T / 4 while it has a session to resume, and gRPC's own pause
between connection attempts is kept at a second at most.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dtq_client import Client, NodeState, TaskState
from dtq_worker.connection import RESUME_ATTEMPTS
from tests.harness import Proc, ServerProcess, start_node, start_server, wait_until

T = 4.0
"""The coordinator's heartbeat timeout here: the grace a restarted coordinator gives."""
FAILED_ATTEMPTS = 6
"""Reconnect attempts that fail before the coordinator comes back: by then the pauses
between attempts would have grown past what T allows, without the cap."""


def events(node: Proc, name: str) -> list[dict[str, Any]]:
    """The node's JSON log events called ``name``, oldest first."""
    found = []
    for line in node.log().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line, still being written
        if event.get("event") == name:
            found.append(event)
    return found


@pytest.mark.timeout(120)
def test_a_node_resumes_its_session_after_a_long_coordinator_outage(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", heartbeat_timeout_s=T)
    node = start_node(
        server.address, tmp_path, "steady", "--log-format", "json",
        module="dtq_worker.demo:registry", threads=1,
    )  # fmt: skip
    restarted: ServerProcess | None = None
    try:
        with Client(server.address) as client:
            wait_until(
                lambda: [n.state for n in client.nodes()] == [NodeState.ACTIVE],
                20,
                what="the node to register",
            )
            task = client.submit("sleep", {"seconds": 8})
            wait_until(
                lambda: client.get(task.id).state is TaskState.RUNNING, 20, what="the task to run"
            )
        server.kill9()
        wait_until(
            lambda: len(events(node, "coordinator.unreachable")) >= FAILED_ATTEMPTS,
            30,
            what=f"{FAILED_ATTEMPTS} failed reconnect attempts",
        )
        pauses = [e["retry_in_s"] for e in events(node, "coordinator.unreachable")]
        assert max(pauses) <= T / RESUME_ATTEMPTS + 0.01, pauses
        restarted = start_server(
            tmp_path / "data", name="restarted", listen=server.address, heartbeat_timeout_s=T
        )
        wait_until(
            lambda: len(events(node, "node.registered")) >= 2, T, what="the node to come back"
        )
        assert events(node, "node.registered")[-1]["resumed"], node.log()[-2000:]
        with Client(restarted.address) as client:
            done = client.wait(task.id, timeout_s=30)
        # The task the node held ran once, to the end, under its first lease.
        assert (done.state, done.attempt, done.lease_expiries) == (TaskState.SUCCEEDED, 1, 0)
    finally:
        node.signal(15)
        node.wait(20)
        if restarted is not None:
            restarted.stop()
        server.stop()
