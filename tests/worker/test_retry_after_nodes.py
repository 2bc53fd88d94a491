"""``RetryAfter`` through a real node and coordinator: the handler's wait replaces the backoff."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dtq_client import Client, NodeState, TaskState
from tests.harness import start_node, start_server, wait_until


@pytest.mark.timeout(60)
def test_the_next_attempt_waits_as_long_as_the_handler_asked(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "waiter", threads=2)
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            # An hour, where the default backoff would retry within about a second.
            parked = client.submit("retry_after", {"after": 3600}, max_attempts=3)
            wait_until(lambda: client.get(parked.id).failures == 1, 20, what="the first failure")
            waiting = client.get(parked.id)
            assert waiting.state is TaskState.QUEUED
            assert waiting.last_error is not None
            assert waiting.last_error.type == "RetryAfter"
            assert waiting.last_error.message == "upstream asked us to wait"
            assert waiting.next_attempt_at is not None
            wait_s = (waiting.next_attempt_at - datetime.now(UTC)).total_seconds()
            assert 3600 - 30 < wait_s <= 3600, wait_s
            assert client.cancel(parked.id).state is TaskState.CANCELLED

            # A short wait: the next attempt runs, and succeeds.
            quick = client.submit("retry_after", {"after": 0.2}, max_attempts=3)
            done = client.wait(quick.id, timeout_s=20)
            assert (done.state, done.attempt, done.result_value()) == (TaskState.SUCCEEDED, 2, 2)

            # On the last attempt the wait is moot: the task fails.
            last = client.submit("retry_after", {"after": 1, "succeed_on": 9}, max_attempts=1)
            failed = client.wait(last.id, timeout_s=20)
            assert failed.state is TaskState.FAILED and failed.next_attempt_at is None
    finally:
        node.stop()
        server.stop()
