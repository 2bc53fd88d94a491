"""Both event loops a coordinator and a node may run on (``--event-loop``, dtq.loops).

Every other process-level test runs the default (uvloop where installed) and
the in-process coordinators run asyncio's own loop; here each choice is asked
for by name, serves a task end to end and stops cleanly on SIGTERM (signal
handling is where loop implementations differ most).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dtq_client import Client, TaskState
from tests.harness import start_node, start_server

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cluster_serves_and_stops_on_each_loop(tmp_path: Path, loop: str) -> None:
    server = start_server(tmp_path / "data", "--event-loop", loop)
    node = start_node(server.address, tmp_path, f"on-{loop}", "--event-loop", loop, threads=2)
    try:
        with Client(server.address) as client:
            task = client.submit("echo", {"loop": loop})
            done = client.wait(task.id, timeout_s=20)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_value() == {"loop": loop}
        for proc in (node, server):  # nodes first, so they leave instead of dying
            proc.signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        assert f"event_loop={loop}" in server.log()
        assert f"event_loop={loop}" in node.log()
    finally:
        node.stop()
        server.stop()


def test_an_unknown_loop_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="exited 2") as refused:
        start_server(tmp_path / "data", "--event-loop", "trio")
    assert "'trio' is not one of 'auto', 'uvloop', 'asyncio'" in str(refused.value)
    node = start_node("127.0.0.1:1", tmp_path, "bad", "--event-loop", "trio")
    assert node.wait(20) == 2
    assert "'trio' is not one of 'auto', 'uvloop', 'asyncio'" in node.log()
