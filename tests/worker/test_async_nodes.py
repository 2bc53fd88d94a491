"""``async def`` handlers in a real ``dtq-worker`` process, in both isolations."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq_client import Client, NodeState, TaskState
from tests.harness import start_node, start_server, wait_until


@pytest.mark.timeout(90)
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_async_handlers_run_are_cancelled_and_time_out(tmp_path: Path, isolation: str) -> None:
    server = start_server(tmp_path / "data")
    node = start_node(server.address, tmp_path, "asyncio", "--isolation", isolation, threads=1)
    try:
        with Client(server.address) as client:
            wait_until(lambda: any(n.state is NodeState.ACTIVE for n in client.nodes()), 20)
            first = client.submit("async_sleep", {"sleep": 0.01})
            done = client.wait(first.id, timeout_s=20)
            assert done.state is TaskState.SUCCEEDED
            first_result = done.result_value()
            assert isinstance(first_result, dict) and first_result["attempt"] == 1

            # A cancel interrupts the coroutine, and frees the node's only thread.
            sleeping = client.submit("async_sleep", {"sleep": 60})
            wait_until(lambda: client.get(sleeping.id).state is TaskState.RUNNING, 20)
            client.cancel(sleeping.id)
            assert client.wait(sleeping.id, timeout_s=20).state is TaskState.CANCELLED
            after = client.wait(client.submit("async_sleep", {}).id, timeout_s=20)
            assert after.state is TaskState.SUCCEEDED
            if isolation == "thread":  # the same thread, so the same loop, ran both
                after_result = after.result_value()
                assert isinstance(after_result, dict)
                assert after_result["loop"] == first_result["loop"]

            # So does its execution timeout.
            slow = client.submit(
                "async_sleep", {"sleep": 60}, execution_timeout_s=1, max_attempts=1
            )
            timed_out = client.wait(slow.id, timeout_s=30)
            assert timed_out.state is TaskState.FAILED
            assert timed_out.last_error is not None
            assert timed_out.last_error.type == "TIMED_OUT"
            last = client.wait(client.submit("async_sleep", {}).id, timeout_s=20)
            assert last.state is TaskState.SUCCEEDED
    finally:
        node.stop()
        server.stop()
