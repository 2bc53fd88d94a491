"""In process isolation a cancel is enforced: a handler that ignores it loses its process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dtq_client import Client, NodeState, TaskState
from tests.harness import start_node, start_server, wait_until


@pytest.mark.timeout(60)
def test_cancel_kills_a_handler_that_ignores_it(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "isolated", "--isolation", "process", threads=1)
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            task = client.submit("stubborn", {"sleep": 60})
            wait_until(lambda: client.get(task.id).state is TaskState.RUNNING, 20)
            cancelled_at = time.monotonic()
            client.cancel(task.id)
            done = client.wait(task.id, timeout_s=15)
            took = time.monotonic() - cancelled_at
            assert done.state is TaskState.CANCELLED
            assert took < 6, f"enforced within the grace period, took {took:.1f} s"
            # The node goes on with a fresh process.
            after = client.submit("echo", {"still": "here"})
            assert client.wait(after.id, timeout_s=20).result_value() == {"still": "here"}
    finally:
        node.stop()
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_the_handler_sees_its_execution_deadline(tmp_path: Path, isolation: str) -> None:
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "timed", "--isolation", isolation, threads=1)
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            timed = client.submit("deadline", {}, execution_timeout_s=30)
            untimed = client.submit("deadline", {})
            left = client.wait(timed.id, timeout_s=20).result_value()
            assert isinstance(left, dict) and 25 < left["left"] <= 30
            assert client.wait(untimed.id, timeout_s=20).result_value() == {"left": None}
    finally:
        node.stop()
        server.stop()
